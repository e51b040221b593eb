#!/usr/bin/env python3
"""The Envoy load comparison: Portcullis against Envoy's native filters, side by side in one run.

    PYTHONPATH=envoy-examples .venv/bin/python benches/envoy/envoy_load.py            # a-f, 5 interleaved rounds, writes benches/RESULTS.md
    PYTHONPATH=envoy-examples .venv/bin/python benches/envoy/envoy_load.py --extras   # + the single-feature Portcullis variants
    PYTHONPATH=envoy-examples .venv/bin/python benches/envoy/envoy_load.py --only a b --rounds 1 --no-results

Every variant is the same topology (main listener -> a direct_response listener in the same Envoy,
like benches/envoy/native-chain.envoy.yaml), Envoy `--concurrency 1` pinned to the last CPU,
`wrk -t1` pinned to the first, loopback only, bounded runs. Variants run interleaved
(a b c d e f a b c ...) so slow drifts of the machine hit all of them alike.

  a  no-filter          no HTTP filter but the router
  b  empty-wasm         an empty proxy-wasm filter (benches/empty-filter): the floor of any Wasm filter
  c  native-cached      Envoy's jwt_authn (jwt_cache_config) + rbac + local_ratelimit (the shared reference chain)
  d  portcullis-cached  Portcullis: cached RS256 token, a 3-rule CEL policy equal to c's RBAC, one rate limit
  e  native-new         c without jwt_cache_config: the signature is verified on every request
  f  portcullis-new     d with the token cache off: every request verifies RS256 (host verify_signature)
With --extras: portcullis-idle (our filter with nothing to do), policy-10 (10 rules, no JWT),
ratelimit-only (one limit keyed by a header; its default batch takes 64 tokens per shared
round trip), ratelimit-exact (the same with `batch: 1`: a shared compare-and-swap per request).

"New token on every request" is made by switching the verified-token caches off (both sides), not by
minting a token per request: the work per request is the same and the load generator stays cheap.

Per variant it prints requests/s, p50/p99 latency (wrk --latency) and Envoy CPU µs per request
(utime+stime from /proc/PID/stat over the run / completed requests), the medians over the rounds
(and each variant's least CPU of the rounds: this VM's noise only ever adds);
then the throughput ratios d/c, f/e, d/b; the .wasm size; Envoy's RSS after 200 requests at
--concurrency 1, 2, 4 and 8 for a, b, c and d, with the time from start to /ready and Portcullis'
linear memory per VM (`--rss-only` measures just that and replaces only its block of the file).
It writes benches/RESULTS.md (text below the ANALYSIS marker is kept)."""
import argparse
import copy
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
import mint  # envoy-examples/ on PYTHONPATH, see the usage above
import render
from tests import envoyproc

TICKS = os.sysconf("SC_CLK_TCK")
PIN = True
RESULTS = ROOT / "benches" / "RESULTS.md"
RSS_BEGIN = "<!-- RSS: written by envoy_load.py -->"
RSS_END = "<!-- /RSS -->"
ANALYSIS_MARKER = "<!-- ANALYSIS: everything below this line is kept when envoy_load.py rewrites the file -->"
EMPTY_WASM = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "wasm32-wasip1" / "release" / "portcullis_empty_filter.wasm"

# The ten rules the criterion benches use too (benches/src/lib.rs): with and without JWT.
_RULES = json.loads((ROOT / "benches" / "fixtures" / "ten-rules.json").read_text())
TEN_RULES_NO_JWT = _RULES["without_jwt"]

# The native chain's RBAC, in CEL: GET only, and the token's `groups` claim holds a non-empty string.
THREE_RULES = [
    {"name": "get-only", "deny": "request.method != 'GET'"},
    {"name": "needs-groups", "deny": "!has(jwt.claims.groups)"},
    {"name": "grouped", "allow": "jwt.claims.groups.exists(g, g.matches('.+'))"},
]

LETTERS = {"a": "no-filter", "b": "empty-wasm", "c": "native-cached", "d": "portcullis-cached",
           "e": "native-new", "f": "portcullis-new"}
EXTRAS = ["portcullis-idle", "policy-10", "ratelimit-only", "ratelimit-exact", "rules-10", "rules-1000"]
DESCRIPTIONS = {
    "no-filter": "no filter",
    "empty-wasm": "empty proxy-wasm filter (floor of any Wasm filter)",
    "native-cached": "native jwt_authn (cache) + rbac + local_ratelimit",
    "portcullis-cached": "Portcullis: cached RS256 token + 3 CEL rules + 1 rate limit",
    "native-new": "native chain, signature verified every request",
    "portcullis-new": "Portcullis, signature verified every request (host verify_signature)",
    "portcullis-idle": "Portcullis with nothing to do (default allow)",
    "policy-10": "Portcullis: 10 CEL rules, no JWT",
    "ratelimit-only": "Portcullis: one rate limit keyed by a header (default batch: 64)",
    "ratelimit-exact": "Portcullis: the same limit with batch 1 (a shared CAS per request)",
    "rules-10": "Portcullis: 10 path-scoped rules (guard index), none applies",
    "rules-1000": "Portcullis: 1000 path-scoped rules (guard index), none applies",
}


def path_scoped_rules(n):
    """benches/src/lib.rs's `path_scoped_rules`: `when` on a path prefix, as the guard index sees it."""
    return [{"name": f"svc-{i}", "when": f'request.url_path.startsWith("/svc-{i}/")',
             "allow": f'request.method == "GET" && "team-{i % 10}" in jwt.claims.groups'} for i in range(n)]


def plugin_configs():
    jwks = json.loads((ROOT / "policies" / "keys" / "jwks.json").read_text())
    provider = {"name": "local", "issuer": mint.ISSUER, "audiences": [mint.AUDIENCE], "jwks": {"inline": jwks}}
    cached = {
        "jwt": {"providers": [provider], "default_requirement": {"provider": "local"}},
        "policy": {"default_action": "deny", "rules": THREE_RULES},
        "rate_limits": {"limits": [{"name": "per-user", "key": "jwt.claims.sub", "requests": 1000000000, "period_s": 1}]},
    }
    new = copy.deepcopy(cached)
    new["jwt"]["cache"] = {"max_entries": 0}
    return {
        "portcullis-cached": cached,
        "portcullis-new": new,
        "portcullis-idle": {"policy": {"default_action": "allow"}},
        "policy-10": {"policy": {"default_action": "deny", "rules": TEN_RULES_NO_JWT}},
        "rules-10": {"policy": {"default_action": "allow", "rules": path_scoped_rules(10)}},
        "rules-1000": {"policy": {"default_action": "allow", "rules": path_scoped_rules(1000)}},
        "ratelimit-only": {"policy": {"default_action": "allow"}, "rate_limits": {"limits": [
            {"name": "per-client", "key": "request.headers['x-client-id']", "requests": 1000000000, "period_s": 1}]}},
        "ratelimit-exact": {"policy": {"default_action": "allow"}, "rate_limits": {"limits": [
            {"name": "per-client", "key": "request.headers['x-client-id']", "requests": 1000000000, "period_s": 1,
             "batch": 1}]}},
    }


def bench_yaml(plugin, port, admin_port, upstream_port, wasm=None, with_filter=True):
    text = render.render((HERE / "bench.envoy.yaml").read_text(), wasm or envoyproc.wasm_path(), plugin or {},
                         port, upstream_port, admin_port)
    if with_filter:
        return text
    doc = yaml.safe_load(text)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
    return yaml.safe_dump(doc)


def native_yaml(port, admin_port, upstream_port, cache=True):
    doc = yaml.safe_load((ROOT / "benches" / "envoy" / "native-chain.envoy.yaml").read_text())
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
                    if not cache:
                        p.pop("jwt_cache_config", None)
    doc["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for c in doc["static_resources"]["clusters"]:
        for e in c["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            e["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    return yaml.safe_dump(doc)


def variant_yaml(name, ports):
    if name == "no-filter":
        return bench_yaml(None, *ports, with_filter=False)
    if name == "empty-wasm":
        return bench_yaml({}, *ports, wasm=str(EMPTY_WASM))
    if name == "native-cached":
        return native_yaml(*ports)
    if name == "native-new":
        return native_yaml(*ports, cache=False)
    return bench_yaml(plugin_configs()[name], *ports)


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid):
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


class Envoy:
    """One Envoy for one variant, a child of this process."""

    def __init__(self, name, text, concurrency=1, pin=None, extra=()):
        self.tmp = Path(tempfile.mkdtemp(prefix=f"portcullis-load-{name}-"))
        cfg = self.tmp / "envoy.yaml"
        cfg.write_text(text)
        doc = yaml.safe_load(text)
        self.port = doc["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        self.admin = doc["admin"]["address"]["socket_address"]["port_value"]
        self.log = open(self.tmp / "envoy.log", "w")
        self.proc = envoyproc.launch_envoy(cfg, self.log, concurrency, level="warning", extra=extra,
                                           prefix=pin or ())
        started = time.monotonic()
        try:
            envoyproc.wait_ready(self.proc, self.admin, 60, lambda: (self.tmp / "envoy.log").read_text())
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{name}: {e}") from None
        self.ready_s = time.monotonic() - started

    def stop(self):
        envoyproc.stop_process(self.proc, self.log)


def pins():
    if PIN and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str((os.cpu_count() or 2) - 1)], ["taskset", "-c", "0"]
    return [], []


def duration_us(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def run_variant(name, text, token, seconds, connections):
    pin_envoy, pin_wrk = pins()
    envoy = Envoy(name, text, pin=pin_envoy)
    try:
        url = f"http://127.0.0.1:{envoy.port}/api/orders"
        wrk = pin_wrk + ["wrk", "-t1", f"-c{connections}", "--latency", "-H", f"Authorization: Bearer {token}",
                         "-H", "x-client-id: load", "-H", "x-tenant: acme"]
        # Warm up (V8 tiers up, caches fill), then measure.
        subprocess.run(wrk + ["-d1s", url], capture_output=True, check=True, timeout=30)
        before = cpu_seconds(envoy.proc.pid)
        out = subprocess.run(wrk + [f"-d{seconds}s", url], capture_output=True, text=True, check=True,
                             timeout=seconds + 30).stdout
        used = cpu_seconds(envoy.proc.pid) - before
        total = int(re.search(r"(\d+) requests in", out).group(1))
        non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        return {"variant": name, "requests": total, "non_2xx": non2xx,
                "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                "p50_us": duration_us(re.search(r"\s50%\s+(\S+)", out).group(1)),
                "p99_us": duration_us(re.search(r"\s99%\s+(\S+)", out).group(1)),
                "cpu_us": used / max(total, 1) * 1e6}
    finally:
        envoy.stop()


RSS_VARIANTS = ["no-filter", "empty-wasm", "native-cached", "portcullis-cached"]
RSS_CONCURRENCY = [1, 2, 4, 8]
LINEAR_MEMORY = re.compile(r"configuration loaded \((\d+) KiB of linear memory\)")


def with_memory_release(text):
    """The variant with Envoy's allocator handing freed pages back to the OS (docs/operations.md#memory)."""
    doc = yaml.safe_load(text)
    doc["memory_allocator_manager"] = {"bytes_to_release": 1073741824, "memory_release_interval": "1s"}
    return yaml.safe_dump(doc)


def measure_rss(token, ports, variants=RSS_VARIANTS, concurrencies=RSS_CONCURRENCY, release=False):
    """Envoy's RSS after 200 requests, for each variant and --concurrency (with N workers Envoy runs
    N + 2 VMs of a Wasm filter: two on the main thread, one per worker), the time from starting Envoy
    to /ready, and for Portcullis each VM's linear memory once configured (its info log)."""
    out = {}
    for name in variants:
        for concurrency in concurrencies:
            text = variant_yaml(name, ports)
            envoy = Envoy(f"rss-{name}-{concurrency}", with_memory_release(text) if release else text,
                          concurrency=concurrency,
                          extra=["--component-log-level", "wasm:info"])
            try:
                headers = {"Authorization": f"Bearer {token}", "x-client-id": "load", "x-tenant": "acme"}
                for _ in range(200):
                    req = urllib.request.Request(f"http://127.0.0.1:{envoy.port}/api/orders", headers=headers)
                    urllib.request.urlopen(req, timeout=5).read()
                time.sleep(2.5 if release else 0.5)
                log = (envoy.tmp / "envoy.log").read_text(errors="replace")
                out.setdefault(name, {})[concurrency] = {
                    "rss_kib": rss_kib(envoy.proc.pid), "ready_s": envoy.ready_s,
                    "vm_kib": sorted({int(k) for k in LINEAR_MEMORY.findall(log)})}
            finally:
                envoy.stop()
            r = out[name][concurrency]
            print(f"  RSS {name:18} --concurrency {concurrency}: {r['rss_kib'] / 1024:6.1f} MB, ready in "
                  f"{r['ready_s']:.2f} s" + (f", VM linear memory {r['vm_kib']} KiB" if r["vm_kib"] else ""),
                  flush=True)
    return out


def rss_lines(rss):
    """The Markdown RSS table (between RSS_BEGIN and RSS_END in RESULTS.md)."""
    concs = sorted({c for per in rss.values() for c in per})
    lines = [RSS_BEGIN, "", "## Memory: Envoy RSS after 200 requests, by `--concurrency`", "",
             "| variant | " + " | ".join(f"{c}" for c in concs) + " | growth 1 → 8 | above no filter at 2 |"
             " start → /ready at 2 |",
             "|---|" + "---|" * len(concs) + "---|---|---|"]
    base = rss.get("no-filter", {})
    for name, per in rss.items():
        cells = [f"{per[c]['rss_kib'] / 1024:.1f} MB" if c in per else "—" for c in concs]
        growth = f"{(per[8]['rss_kib'] - per[1]['rss_kib']) / 1024:+.1f} MB" if 1 in per and 8 in per else "—"
        above = f"{(per[2]['rss_kib'] - base[2]['rss_kib']) / 1024:+.1f} MB" \
            if 2 in per and 2 in base and name != "no-filter" else "—"
        ready = f"{per[2]['ready_s']:.2f} s" if 2 in per else "—"
        lines.append(f"| {DESCRIPTIONS[name]} | " + " | ".join(cells) + f" | {growth} | {above} | {ready} |")
    vm = sorted({k for per in rss.get("portcullis-cached", {}).values() for k in per["vm_kib"]})
    if vm:
        lines += ["", f"Portcullis' linear memory per VM once configured (static data + stack + heap high-water"
                      f" mark, from its info log): {', '.join(f'{k} KiB' for k in vm)}."]
    lines += ["", RSS_END]
    return lines


def write_rss(path, rss):
    """Replaces the RSS block of the results file (or adds it before the analysis)."""
    text = path.read_text() if path.exists() else ANALYSIS_MARKER + "\n"
    block = "\n".join(rss_lines(rss))
    if RSS_BEGIN in text and RSS_END in text:
        head, rest = text.split(RSS_BEGIN, 1)
        text = head + block + rest.split(RSS_END, 1)[1]
    else:
        head, rest = text.split(ANALYSIS_MARKER, 1)
        text = head + block + "\n\n" + ANALYSIS_MARKER + rest
    path.write_text(text)


def machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    envoy = subprocess.run([envoyproc.envoy_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    envoy = re.search(r"version: \S*?/(\d+\.\d+\.\d+)/", envoy) or re.search(r"version: (\S+)", envoy)
    return {"cpus": os.cpu_count(), "model": model, "kernel": platform.release(),
            "envoy": envoy.group(1) if envoy else "unknown"}


def ratio(results, a, b):
    if a in results and b in results:
        return results[a]["rps"] / results[b]["rps"]
    return None


def write_results(path, results, order, ratios, sizes, rss, info, argv, rounds, seconds, connections):
    keep = ""
    if path.exists() and ANALYSIS_MARKER in path.read_text():
        keep = path.read_text().split(ANALYSIS_MARKER, 1)[1]
    letter = {v: k for k, v in LETTERS.items()}
    floor = results.get("empty-wasm")
    base = results.get("no-filter")
    lines = [
        "# Envoy load comparison: Portcullis vs Envoy's native filters",
        "",
        f"Measured {datetime.date.today().isoformat()} with `{argv}`",
        f"({rounds} interleaved round(s) of {seconds} s per variant after 1 s of warm-up, `wrk -t1 -c{connections}`;"
        " every figure is the median over the rounds).",
        "",
        f"Machine: {info['cpus']} vCPUs ({info['model']}), Linux {info['kernel']}, Envoy {info['envoy']} (V8),"
        " `--concurrency 1`, Envoy and wrk pinned to different CPUs. **Caveats**: a 2-vCPU VM without"
        " performance counters; wrk shares the machine with Envoy; the same variant moves by ±15–30 µs of"
        " CPU per request between sessions, so differences under ~20 µs are not resolved here. The"
        " repeatable instruction counts (callgrind) are in [docs/benchmarks.md](../docs/benchmarks.md).",
        "",
        "| | variant | requests/s | p50 | p99 | Envoy CPU µs / request | above no filter | above empty Wasm |"
        " least CPU of the rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        r = results[name]
        above = f"+{r['cpu_us'] - base['cpu_us']:.1f}" if base and r is not base else "—"
        above_floor = f"+{r['cpu_us'] - floor['cpu_us']:.1f}" if floor and name not in ("no-filter", "empty-wasm") \
            else "—"
        lines.append(f"| {letter.get(name, '')} | {DESCRIPTIONS[name]} | {r['rps']:.0f} | {r['p50_us']:.0f} µs |"
                     f" {r['p99_us']:.0f} µs | {r['cpu_us']:.1f} | {above} | {above_floor} | {r['cpu_min_us']:.1f} |")
    lines += ["", "## Ratios and targets (issue 7)", "", "| measure | value | target | |", "|---|---|---|---|"]

    def row(label, value, target, ok):
        lines.append(f"| {label} | {value} | {target} | {'met' if ok else '**missed**'} |")

    if ratios.get("d/c") is not None:
        row("throughput d/c (cached: Portcullis / native)", f"{ratios['d/c']:.3f}", "≥ 0.95", ratios["d/c"] >= 0.95)
    if ratios.get("f/e") is not None:
        row("throughput f/e (new token: Portcullis / native)", f"{ratios['f/e']:.3f}", "≥ 0.8", ratios["f/e"] >= 0.8)
    if ratios.get("d/b") is not None:
        lines.append(f"| throughput d/b (cached Portcullis / empty Wasm filter) | {ratios['d/b']:.3f} | — | |")
    if floor and "portcullis-cached" in results:
        extra = results["portcullis-cached"]["cpu_us"] - floor["cpu_us"]
        row("Portcullis cached (d) above the empty Wasm floor (b)", f"{extra:+.1f} µs", "≤ 10 µs", extra <= 10)
    if sizes:
        row("`out/portcullis.wasm` after wasm-opt", f"{sizes['opt'] / 1e6:.2f} MB ({sizes['raw'] / 1e6:.2f} MB before)",
            "≤ 1.5 MB", sizes["opt"] <= 1.5e6)
    if rss and 2 in rss.get("portcullis-cached", {}) and 2 in rss.get("no-filter", {}):
        with_filter, without = rss["portcullis-cached"][2]["rss_kib"] / 1024, rss["no-filter"][2]["rss_kib"] / 1024
        delta = with_filter - without
        row("Envoy RSS with the filter, `--concurrency 2`, above no filter",
            f"{delta:+.1f} MB ({with_filter:.1f} vs {without:.1f} MB)", "≤ 60 MB", delta <= 60)
    if rss:
        lines += [""] + rss_lines(rss)
    lines += ["", ANALYSIS_MARKER]
    path.write_text("\n".join(lines) + (keep if keep else "\n"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", nargs="*", help="variants by letter (a-f) or name")
    p.add_argument("--extras", action="store_true", help="also the single-feature Portcullis variants")
    p.add_argument("--json", help="also write every run here")
    p.add_argument("--results", default=str(RESULTS), help="Markdown results file (default benches/RESULTS.md)")
    p.add_argument("--no-results", action="store_true", help="don't write the Markdown results file")
    p.add_argument("--no-rss", action="store_true", help="skip the RSS measurement")
    p.add_argument("--memory-release", action="store_true",
                   help="RSS with Envoy's memory_allocator_manager releasing freed pages (every variant)")
    p.add_argument("--rss-only", action="store_true",
                   help="only the RSS / ready-time table (no load rounds); replaces that block of the results file")
    p.add_argument("--no-pin", action="store_true", help="don't pin Envoy and wrk to separate CPUs")
    a = p.parse_args()
    global PIN
    PIN = not a.no_pin
    order = list(LETTERS.values()) + (EXTRAS if a.extras else [])
    if a.only:
        wanted = {LETTERS.get(x, x) for x in a.only}
        unknown = wanted - set(order) - set(EXTRAS)
        if unknown:
            p.error(f"unknown variants: {', '.join(sorted(unknown))}")
        order = [n for n in list(LETTERS.values()) + EXTRAS if n in wanted]
    if "empty-wasm" in order or not a.no_rss:
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "-p", "portcullis-empty-filter"],
                       cwd=ROOT, check=True)
    keys = mint.private_keys(ROOT / "policies" / "keys" / "private.jwks.json")
    token = mint.mint(keys, {"sub": "alice", "groups": ["admin", "dev"], "tenant": "acme", "scope": "read write"})
    ports = (envoyproc.free_port(), envoyproc.free_port(), envoyproc.free_port())
    if a.rss_only:
        rss = measure_rss(token, ports, release=a.memory_release)
        if a.json:
            Path(a.json).write_text(json.dumps({"rss": rss}, indent=2))
        if not a.no_results:
            write_rss(Path(a.results), rss)
            print(f"wrote {a.results}")
        return 0
    runs = {}
    for round_ in range(a.rounds):
        for name in order:
            r = run_variant(name, variant_yaml(name, ports), token, a.seconds, a.connections)
            runs.setdefault(name, []).append(r)
            print(f"round {round_ + 1}  {name:18} {r['rps']:8.0f} req/s  p50 {r['p50_us']:6.0f} µs  "
                  f"p99 {r['p99_us']:6.0f} µs  {r['cpu_us']:6.1f} µs CPU/request  ({r['non_2xx']} non-2xx)",
                  flush=True)
    results = {name: {"variant": name, **{k: statistics.median(r[k] for r in rs)
                                          for k in ("rps", "p50_us", "p99_us", "cpu_us")},
                      "cpu_min_us": min(r["cpu_us"] for r in rs)}
               for name, rs in runs.items()}
    print(f"\nmedians over {a.rounds} round(s):")
    base = results.get("no-filter")
    for name in order:
        r = results[name]
        above = f"  (+{r['cpu_us'] - base['cpu_us']:.1f} above no filter)" if base and r is not base else ""
        print(f"  {name:18} {r['rps']:8.0f} req/s  p50 {r['p50_us']:6.0f} µs  p99 {r['p99_us']:6.0f} µs  "
              f"{r['cpu_us']:6.1f} µs CPU/request (least {r['cpu_min_us']:.1f}){above}")
    ratios = {k: ratio(results, LETTERS[k[0]], LETTERS[k[2]]) for k in ("d/c", "f/e", "d/b")}
    for k, v in ratios.items():
        if v is not None:
            print(f"  throughput {k}: {v:.3f}")
    wasm = Path(envoyproc.wasm_path())
    raw = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "wasm32-wasip1" / "release" / \
        "portcullis_filter.wasm"
    sizes = {"opt": wasm.stat().st_size, "raw": raw.stat().st_size if raw.exists() else 0}
    print(f"  .wasm: {sizes['opt']} bytes after wasm-opt ({sizes['raw']} before)")
    rss = None
    if not a.no_rss:
        rss = measure_rss(token, ports, release=a.memory_release)
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "medians": results, "sizes": sizes, "rss_kib": rss},
                                           indent=2))
    if not a.no_results:
        argv = "benches/envoy/envoy_load.py" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:]))
        write_results(Path(a.results), results, order, ratios, sizes, rss, machine(), argv, a.rounds, a.seconds,
                      a.connections)
        print(f"wrote {a.results}")
    bad = sorted({r["variant"] for rs in runs.values() for r in rs if r["non_2xx"]})
    if bad:
        print("non-2xx answers in: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
