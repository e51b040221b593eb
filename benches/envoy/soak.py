#!/usr/bin/env python3
"""Soak: a real Envoy (--concurrency 2) running the example policies under steady load for
minutes — valid cached tokens, rate-limit keys drawn from a large set — sampling Envoy's RSS
over time and checking afterwards that the rate-limit table kept its bound and that no error
counter moved. Not part of scripts/test.sh (it is long); results go to docs/benchmarks.md.

    PYTHONPATH=envoy-examples .venv/bin/python benches/envoy/soak.py --minutes 5 [--keys 1000000] [--markdown]

Needs out/portcullis.wasm and out/plugin.json (scripts/build.sh; portcullis bundle) and wrk.
Exits non-zero when RSS keeps growing after warm-up, a counter that must stay at zero moved,
or the table grew past its bound."""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mint  # envoy-examples/ on PYTHONPATH, see the usage above
import tour
from tests import envoyproc

# Counters that must not move under well-formed traffic. (`key_errors` does move: the example's
# per-user limit has no `sub` to key on for the public requests, and skips them.)
MUST_STAY_ZERO = ("errors", "contention_exhausted", "table_full", "requirement_error",
                  "pending_timeout", "path_rejected", "repeated_header", "multiple_tokens")

WRK_SCRIPT = """
local tokens = {%(tokens)s}
local keys = %(keys)d
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
function request()
  if math.random() < 0.5 then
    local t = tokens[math.random(#tokens)]
    return wrk.format("GET", "/api/orders", {["authorization"] = "Bearer " .. t})
  end
  return wrk.format("GET", "/public/soak", {["x-client-id"] = "soak-" .. math.random(keys)})
end
"""


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--keys", type=int, default=1_000_000, help="distinct x-client-id values")
    p.add_argument("--users", type=int, default=200, help="distinct token subjects (cached tokens)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--every", type=float, default=10, help="RSS sampling period, seconds")
    p.add_argument("--markdown", action="store_true", help="print the result as a docs/benchmarks.md table")
    a = p.parse_args()

    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is required (scripts/setup.sh installs it)")
    keys = mint.private_keys(tour.KEYS)
    lifetime = int(a.minutes * 60) + 3600
    tokens = [mint.mint(keys, {"sub": f"user-{i}", "tenant": "acme", "scope": "read"}, lifetime=lifetime)
              for i in range(a.users)]
    config = envoyproc.bundled_config()
    max_buckets = config.get("rate_limits", {}).get("max_buckets", 4096)
    # The soak is about the filter: the routes it exercises are answered by Envoy itself.
    template = envoyproc.direct_response_template('{ prefix: "/" }')
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-soak-"))
    script = tmp / "soak.lua"
    script.write_text(WRK_SCRIPT % {"tokens": ",".join(json.dumps(t) for t in tokens), "keys": a.keys})

    upstream = envoyproc.Upstream()
    envoy = envoyproc.Envoy(config, upstream.port, concurrency=2, template=template)
    samples = []
    try:
        started = time.time()
        duration = int(a.minutes * 60)
        load = subprocess.Popen([wrk, "-t2", f"-c{a.connections}", f"-d{duration}s", "-s", str(script),
                                 envoy.base + "/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = {}
        reader = threading.Thread(target=lambda: out.setdefault("text", load.stdout.read()))
        reader.start()
        while load.poll() is None:
            samples.append((time.time() - started, rss_mb(envoy.proc.pid)))
            time.sleep(a.every)
        reader.join()
        samples.append((time.time() - started, rss_mb(envoy.proc.pid)))
        stats = envoy.stats("wasmcustom.portcullis_")
        alive = envoy.alive()
    finally:
        envoy.stop()
        upstream.stop()

    wrk_text = out.get("text", "")
    moved = {k: v for k, v in stats.items() if v and k.rsplit(".", 1)[-1] in MUST_STAY_ZERO}
    live = {k: v for k, v in stats.items() if k.endswith(".live_buckets")}
    over_bound = {k: v for k, v in live.items() if v > max_buckets}
    # Flat after warm-up: the last third's peak within 5 % (and 8 MB) of the second third's.
    third = max(1, len(samples) // 3)
    middle = max(r for _, r in samples[third:2 * third] or samples)
    last = max(r for _, r in samples[2 * third:] or samples)
    flat = last <= max(middle * 1.05, middle + 8)

    requests = next((line.split()[0] for line in wrk_text.splitlines() if "requests in" in line), "?")
    if a.markdown:
        print(f"Soak: {a.minutes:g} min, Envoy --concurrency 2, {requests} requests "
              f"({a.users} cached tokens, {a.keys} rate-limit keys), {a.connections} connections.\n")
        print("| t (s) | Envoy RSS (MB) |\n|---:|---:|")
        for t, r in samples:
            print(f"| {t:.0f} | {r:.1f} |")
        print(f"\nadmitted/limited: "
              + ", ".join(f"`{k.removeprefix('wasmcustom.')}` {v}" for k, v in sorted(stats.items())
                          if k.endswith((".admitted", ".limited", ".evicted", ".live_buckets")) or k.endswith("allowed")))
    else:
        print(wrk_text)
        for t, r in samples:
            print(f"t={t:6.0f}s  rss={r:7.1f} MB")
        print("live buckets:", live, "bound:", max_buckets)
    problems = []
    if not alive:
        problems.append("Envoy died")
    if moved:
        problems.append(f"error counters moved: {moved}")
    if over_bound:
        problems.append(f"live buckets over the bound {max_buckets}: {over_bound}")
    if not flat:
        problems.append(f"RSS still growing after warm-up: {middle:.1f} -> {last:.1f} MB")
    for problem in problems:
        print("SOAK FAILED:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
