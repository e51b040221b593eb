#!/usr/bin/env python3
"""The Envoy load script: Envoy CPU per request for each filter chain, measured with wrk
over loopback against Envoy --concurrency 1 (bounded runs).

    .venv/bin/python benches/envoy/envoy_load.py [--seconds 5] [--only NAME ...]

Variants (same topology: main listener -> direct_response listener in the same Envoy):
  baseline          no filter
  native-chain      ../shared/reference/envoy-native-chain.yaml (jwt_authn + rbac + local_ratelimit),
                    re-keyed to the demo issuer so the same token works
  portcullis-cached the filter: JWT (RS256, cached token), a 10-rule policy, one rate limit keyed by a claim
  portcullis-new    the same, token cache disabled: every request verifies RS256 (host verify_signature)
  empty-config      the filter with nothing to do (default allow): its floor
  policy-only       the filter with the 10-rule policy, no JWT, no rate limit
  ratelimit-only    the filter with one rate limit keyed by a header, nothing else
CPU is Envoy's utime+stime from /proc over the run, divided by completed requests."""
import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "envoy-examples"))
import envoyproc  # noqa: E402
import mint  # noqa: E402
import render  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PIN = True

# The ten rules the criterion benches use too (benches/src/lib.rs): with and without JWT.
_RULES = json.loads((ROOT / "benches" / "fixtures" / "ten-rules.json").read_text())
TEN_RULES, TEN_RULES_NO_JWT = _RULES["with_jwt"], _RULES["without_jwt"]


def plugin_configs():
    jwks = json.loads((ROOT / "policies" / "keys" / "jwks.json").read_text())
    provider = {"name": "local", "issuer": mint.ISSUER, "audiences": [mint.AUDIENCE], "jwks": {"inline": jwks}}
    full = {
        "jwt": {"providers": [provider], "default_requirement": {"provider": "local"}},
        "policy": {"default_action": "deny", "rules": TEN_RULES},
        "rate_limits": {"limits": [{"name": "per-user", "key": "jwt.claims.sub", "requests": 1000000, "period_s": 1}]},
    }
    new = copy.deepcopy(full)
    new["jwt"]["cache"] = {"max_entries": 0}
    policy_only = {"policy": {"default_action": "deny", "rules": TEN_RULES_NO_JWT}}
    ratelimit_only = {"rate_limits": {"limits": [
        {"name": "per-client", "key": "request.headers['x-client-id']", "requests": 1000000, "period_s": 1}]},
        "policy": {"default_action": "allow"}}
    empty = {"policy": {"default_action": "allow"}}
    return {"empty-config": empty, "portcullis-cached": full, "portcullis-new": new, "policy-only": policy_only, "ratelimit-only": ratelimit_only}


def bench_yaml(plugin, port, admin_port, upstream_port, with_filter=True):
    text = render.render((HERE / "bench.envoy.yaml").read_text(), envoyproc.wasm_path(), plugin or {},
                         port, upstream_port, admin_port)
    if with_filter:
        return text
    doc = yaml.safe_load(text)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
    return yaml.safe_dump(doc)


def native_yaml(port, admin_port, upstream_port):
    doc = yaml.safe_load((Path("/work/shared/reference/envoy-native-chain.yaml")
                          if not (ROOT.parent / "shared").exists()
                          else ROOT.parent / "shared" / "reference" / "envoy-native-chain.yaml").read_text())
    jwks = (ROOT / "policies" / "keys" / "jwks.json").read_text()
    for listener in doc["static_resources"]["listeners"]:
        sock = listener["address"]["socket_address"]
        sock["port_value"] = port if listener["name"] == "main" else upstream_port
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        for f in hcm.get("http_filters", []):
            if f["name"] == "envoy.filters.http.jwt_authn":
                for p in f["typed_config"]["providers"].values():
                    p["issuer"] = mint.ISSUER
                    p["audiences"] = [mint.AUDIENCE]
                    p["local_jwks"] = {"inline_string": jwks}
    doc["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for c in doc["static_resources"]["clusters"]:
        for e in c["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            e["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    return yaml.safe_dump(doc)


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_variant(name, text, token, seconds, connections):
    tmp = Path(tempfile.mkdtemp(prefix=f"portcullis-load-{name}-"))
    cfg = tmp / "envoy.yaml"
    cfg.write_text(text)
    port = yaml.safe_load(text)["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    admin = yaml.safe_load(text)["admin"]["address"]["socket_address"]["port_value"]
    log = open(tmp / "envoy.log", "w")
    # Envoy on the last CPU, wrk on the first: less interference between load and measurement.
    pin_envoy, pin_wrk = ([], [])
    if PIN and (os.cpu_count() or 1) >= 2:
        last = str((os.cpu_count() or 2) - 1)
        pin_envoy, pin_wrk = (["taskset", "-c", last], ["taskset", "-c", "0"])
    proc = subprocess.Popen(pin_envoy + [envoyproc.envoy_binary(), "-c", str(cfg), "--concurrency", "1",
                                         "--use-dynamic-base-id", "-l", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name}: Envoy did not start: {(tmp / 'envoy.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=0.5)
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/api/orders"
        wrk = pin_wrk + ["wrk", "-t1", f"-c{connections}", "-H", f"Authorization: Bearer {token}", "-H", "x-client-id: load",
               "-H", "x-tenant: acme"]
        # Warm up (VM JIT, token cache), then measure.
        subprocess.run(wrk + ["-d1s", url], capture_output=True, check=True, timeout=30)
        before = cpu_seconds(proc.pid)
        out = subprocess.run(wrk + [f"-d{seconds}s", url], capture_output=True, text=True, check=True,
                             timeout=seconds + 30).stdout
        used = cpu_seconds(proc.pid) - before
        total = int(re.search(r"(\d+) requests in", out).group(1))
        non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        return {"variant": name, "requests": total, "non_2xx": non2xx, "rps": rps,
                "cpu_us_per_request": used / max(total, 1) * 1e6}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--only", nargs="*")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every variant this many times, interleaved; report each variant's least CPU/request "
                        "(the run least disturbed by the rest of the machine)")
    p.add_argument("--json", help="write results here")
    p.add_argument("--no-pin", action="store_true", help="don't pin Envoy and wrk to separate CPUs")
    a = p.parse_args()
    global PIN
    PIN = not a.no_pin
    keys = mint.private_keys(ROOT / "policies" / "keys" / "private.jwks.json")
    token = mint.mint(keys, {"sub": "alice", "groups": ["admin", "dev"], "tenant": "acme", "scope": "read write"})
    ports = (envoyproc.free_port(), envoyproc.free_port(), envoyproc.free_port())
    configs = plugin_configs()
    variants = [("baseline", lambda: bench_yaml(None, *ports, with_filter=False)),
                ("native-chain", lambda: native_yaml(*ports))]
    variants += [(n, (lambda c: lambda: bench_yaml(c, *ports))(c)) for n, c in configs.items()]
    runs = {}
    for round_ in range(a.rounds):
        for name, make in variants:
            if a.only and name not in a.only:
                continue
            r = run_variant(name, make(), token, a.seconds, a.connections)
            runs.setdefault(name, []).append(r)
            print(f"{name:18} {r['rps']:9.0f} req/s  {r['cpu_us_per_request']:7.1f} µs Envoy CPU/request"
                  f"  ({r['requests']} requests, {r['non_2xx']} non-2xx)", flush=True)
    results = [min(rs, key=lambda r: r["cpu_us_per_request"]) for rs in runs.values()]
    if a.rounds > 1:
        print(f"\nleast CPU/request of {a.rounds} rounds:")
        for r in results:
            print(f"  {r['variant']:18} {r['cpu_us_per_request']:7.1f} µs")
    base = next((r for r in results if r["variant"] == "baseline"), None)
    if base:
        print("\nabove baseline:")
        for r in results:
            if r is not base:
                print(f"  {r['variant']:18} +{r['cpu_us_per_request'] - base['cpu_us_per_request']:6.1f} µs")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    bad = [r for rs in runs.values() for r in rs if r["non_2xx"]]
    if bad:
        print("non-2xx answers in: " + ", ".join(r["variant"] for r in bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
