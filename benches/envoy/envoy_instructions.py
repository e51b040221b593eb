#!/usr/bin/env python3
"""Envoy instructions per request, counted by callgrind — repeatable where CPU time is not
(this VM's CPU-time figures vary by ±15–30 µs between runs; instruction counts by < 0.5 %).

    PYTHONPATH=envoy-examples .venv/bin/python benches/envoy/envoy_instructions.py [--only a b portcullis-idle ...]

Each variant of envoy_load.py (letters a-f or names, extras included) runs in Envoy (--concurrency 1) under
`valgrind --tool=callgrind --smc-check=all` (V8's JIT code included). After a warm-up, the
counters are zeroed, N requests are sent over one keep-alive connection, and the counters are
dumped; the same with 2N. Instructions per request = (I(2N) - I(N)) / N, which cancels the
fixed costs of a measurement. Starting Envoy with the .wasm under valgrind takes ~3 minutes."""
import argparse
import glob
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import envoy_load  # this script's directory is on the path, envoy-examples/ on PYTHONPATH
import mint
from tests import envoyproc


def send(port, n, token):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"x-client-id": "load", "x-tenant": "acme", "authorization": f"Bearer {token}"}
    bad = 0
    for _ in range(n):
        conn.request("GET", "/api/orders", headers=headers)
        resp = conn.getresponse()
        resp.read()
        bad += resp.status != 200
    conn.close()
    return bad


def counted(pid, out_prefix, port, n, token):
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    bad = send(port, n, token)
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    time.sleep(1)
    dumps = sorted(glob.glob(f"{out_prefix}.*"), key=os.path.getmtime)
    total = None
    with open(dumps[-1]) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
                break
    for d in dumps:
        os.remove(d)
    if bad:
        raise RuntimeError(f"{bad} non-200 answers")
    return total


def measure(name, yaml_text, port, token, n, start_timeout=900):
    tmp = Path(tempfile.mkdtemp(prefix=f"portcullis-cg-{name}-"))
    (tmp / "envoy.yaml").write_text(yaml_text)
    out = tmp / "cg.out"
    valgrind = ["valgrind", "--tool=callgrind", "--smc-check=all", f"--callgrind-out-file={out}"]
    proc = envoyproc.launch_envoy(tmp / "envoy.yaml", open(tmp / "envoy.log", "w"), 1, level="warning",
                                  prefix=valgrind)

    def answers():
        if proc.poll() is not None:
            raise RuntimeError(f"{name}: Envoy exited under valgrind")
        try:
            send(port, 1, token)
            return True
        except OSError:
            return False
    try:
        if envoyproc.eventually(answers, timeout=start_timeout, every=2) is not True:
            raise RuntimeError(f"{name}: Envoy did not start under valgrind")
        send(port, 30, token)  # warm-up: JIT tiers, token cache
        one = [counted(proc.pid, out, port, n, token) for _ in range(2)]
        two = [counted(proc.pid, out, port, 2 * n, token) for _ in range(2)]
        return (min(two) - min(one)) / n
    finally:
        proc.kill()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--only", nargs="*")
    p.add_argument("--start-timeout", type=int, default=900,
                   help="seconds to wait for Envoy to start under valgrind (a loaded machine needs more)")
    a = p.parse_args()
    keys = mint.private_keys(envoy_load.ROOT / "policies" / "keys" / "private.jwks.json")
    token = mint.mint(keys, {"sub": "alice", "groups": ["admin", "dev"], "tenant": "acme", "scope": "read write"})
    order = list(envoy_load.LETTERS.values()) + envoy_load.EXTRAS
    if a.only:
        wanted = {envoy_load.LETTERS.get(x, x) for x in a.only}
        order = [n for n in order if n in wanted]
    if "empty-wasm" in order:
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "-p", "portcullis-empty-filter"],
                       cwd=envoy_load.ROOT, check=True)
    results = {}
    for name in order:
        ports = (envoyproc.free_port(), envoyproc.free_port(), envoyproc.free_port())
        results[name] = measure(name, envoy_load.variant_yaml(name, ports), ports[0], token, a.requests,
                                a.start_timeout)
        base = results.get("no-filter")
        extra = f"  (+{results[name] - base:,.0f} over no filter)" if base and name != "no-filter" else ""
        print(f"{name:18} {results[name]:>10,.0f} instructions/request{extra}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
