"""The harness against a real Envoy, with the same filter and the same requests.

The probe filter (harness/test-filters/probe) logs what the host answers it — header maps
and properties in each phase, body chunks, callout answers, local replies. Each request goes
through Envoy 1.40 first; what the client, the upstream and Envoy's log saw becomes a
`portcullis run` suite's expectations (status, headers, body, the upstream's request, every
probe log line in order, metric values), and the harness must meet them. Differences the
harness accepts are in ACCEPTED below, each with its reason, and in docs/harness.md
("Accepted differences").
"""
import http.server
import json
import re
import socket
import subprocess
import tempfile
import threading
import unittest
from pathlib import Path

from . import envoyproc

ROOT = envoyproc.ROOT
PROBE = ROOT / "target" / "wasm32-wasip1" / "release" / "portcullis_test_probe.wasm"

# Probe lines whose values depend on the machine, not on the host: compared by prefix only.
ACCEPTED = {
    # The client's ephemeral port and Envoy's listener port.
    "property source.address": "the client's address is the test's socket, not the suite's",
}

ENVOY_CONFIG = """
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probe
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: probe
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "probe config"
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
  - name: slow
    type: STATIC
    load_assignment:
      cluster_name: slow
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {slow}}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
"""

# (name, method, path, headers, body): the requests both sides get.
REQUESTS = [
    ("plain GET", "GET", "/hello?x=1", {"x-probe": "props"}, None),
    ("phase rules", "POST", "/p?q=1", {"x-probe": "phase"}, "hello"),
    ("chunked body", "POST", "/upload", {"x-probe": "body"}, "hello"),
    ("buffered body", "POST", "/upload", {"x-probe": "buffer,body"}, "hello"),
    ("local reply", "GET", "/", {"x-probe": "local"}, None),
    ("two local replies", "GET", "/", {"x-probe": "local-twice"}, None),
    ("callout timeout", "GET", "/", {"x-probe": "callout-timeout=slow"}, None),
    ("unknown callout cluster", "GET", "/", {"x-probe": "callout=nowhere"}, None),
    ("gRPC to an unknown cluster", "GET", "/", {"x-probe": "grpc=nowhere"}, None),
    ("metrics and log level", "GET", "/", {"x-probe": "metrics,level"}, None),
    ("shared data and CAS", "GET", "/", {"x-probe": "shared"}, None),
    ("gRPC local reply", "POST", "/probe.Probe/Echo", {"x-probe": "local", "content-type": "application/grpc"}, "x"),
    ("large body", "POST", "/upload", {"x-probe": "buffer"}, "a" * 40000),
]

UPSTREAM_BODY = b"from upstream"


class EchoUpstream(http.server.BaseHTTPRequestHandler):
    """Answers every request with x-upstream: demo and a fixed body; remembers what it got."""
    seen = []
    protocol_version = "HTTP/1.1"

    def handle_one(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        EchoUpstream.seen.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                  "body": body.decode("latin-1")})
        self.send_response(200)
        self.send_header("x-upstream", "demo")
        self.send_header("content-length", str(len(UPSTREAM_BODY)))
        self.end_headers()
        self.wfile.write(UPSTREAM_BODY)

    do_GET = do_POST = handle_one

    def log_message(self, *args):
        pass


def raw_request(port, method, path, headers, body):
    """One HTTP/1.1 request with exactly these headers; returns (status, headers, body)."""
    data = body.encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "host: localhost"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        lines.append(f"content-length: {len(data)}")
    lines.append("connection: close")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    got = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        got[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), got, rest


class HostDifferentialTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "-p", "portcullis-test-probe"],
                       cwd=ROOT, check=True)
        cls.cli = ROOT / "target" / "debug" / "portcullis"
        if not cls.cli.is_file():
            subprocess.run(["cargo", "build", "-p", "portcullis-harness"], cwd=ROOT, check=True)
        cls.upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoUpstream)
        threading.Thread(target=cls.upstream.serve_forever, daemon=True).start()
        # A cluster that accepts connections and never answers: callouts to it time out.
        cls.slow = socket.socket()
        cls.slow.bind(("127.0.0.1", 0))
        cls.slow.listen(16)
        cls.port, cls.admin = envoyproc.free_port(), envoyproc.free_port()
        cls.dir = Path(tempfile.mkdtemp(prefix="portcullis-hostdiff-"))
        config = cls.dir / "envoy.yaml"
        config.write_text(ENVOY_CONFIG.format(port=cls.port, admin=cls.admin, wasm=PROBE,
                                              upstream=cls.upstream.server_address[1],
                                              slow=cls.slow.getsockname()[1]))
        cls.log_path = cls.dir / "envoy.log"
        cls.log = open(cls.log_path, "w")
        cls.envoy = envoyproc.launch_envoy(config, cls.log, 1, extra=("--file-flush-interval-msec", "100"))
        envoyproc.wait_ready(cls.envoy, cls.admin, 30, lambda: cls.log_path.read_text(errors="replace"))

    @classmethod
    def tearDownClass(cls):
        envoyproc.stop_process(cls.envoy, cls.log)
        cls.upstream.shutdown()
        cls.slow.close()

    def probe_lines(self, since):
        """Probe lines Envoy logged after byte offset `since` of its log."""
        text = self.log_path.read_text(errors="replace")[since:]
        return [m.group(1) for m in re.finditer(r"wasm log[^\n]*?: probe: ([^\n]*)", text)]

    def envoy_observe(self, method, path, headers, body):
        since = len(self.log_path.read_text(errors="replace"))
        before = len(EchoUpstream.seen)
        status, got, resp_body = raw_request(self.port, method, path, headers, body)
        seen = EchoUpstream.seen[before:]
        # on_log runs after the response is sent: wait for its lines.
        envoyproc.eventually(lambda: any(l.startswith("log, add request header")
                                         for l in self.probe_lines(since)), timeout=5, every=0.1)
        return status, got, resp_body, seen, self.probe_lines(since)

    def test_the_harness_meets_what_envoy_did(self):
        cases = []
        for name, method, path, headers, body in REQUESTS:
            status, got, resp_body, seen, lines = self.envoy_observe(method, path, headers, body)
            expected_lines = [l for l in lines if not any(a in l for a in ACCEPTED)]
            expect = {
                "status": status,
                "body": resp_body.decode("latin-1"),
                "headers": {k: got.get(k) for k in ("content-type", "content-length", "x-probe", "x-upstream",
                                                    "grpc-status", "grpc-message")},
                "logs": expected_lines,
                "upstream": {"reached": bool(seen)},
            }
            if seen:
                expect["upstream"]["headers"] = {k: seen[0]["headers"].get(k)
                                                 for k in ("x-probe", "x-forwarded-proto", "x-late")}
                if body is not None:
                    expect["upstream"]["body"] = seen[0]["body"]
            # Pairs, in the order the client sends them.
            pairs = [[k, v] for k, v in headers.items()]
            request = {"method": method, "path": path, "headers": pairs, "source": "127.0.0.1:50000"}
            if body is not None:
                request["body"] = body
                pairs.append(["content-length", str(len(body))])
            cases.append({"name": name, "request": request, "expect": expect})
        stats = json.loads(envoyproc.urllib.request.urlopen(
            f"http://127.0.0.1:{self.admin}/stats?format=json&filter=probe", timeout=5).read())
        values = {s["name"]: s.get("value") for s in stats.get("stats", []) if "name" in s}
        # Envoy names a plugin's metrics wasmcustom.<name>; the harness by the plugin's name.
        self.assertEqual(values.get("wasmcustom.probe.requests"), 1, values)
        suite = {
            "wasm": str(PROBE),
            "configuration": "probe config",
            "plugin_name": "probe",
            "clusters": {"slow": {"http": {"timeout": True}}, "upstream": {}},
            "upstream": {"status": 200, "body": UPSTREAM_BODY.decode(),
                         "headers": {"x-upstream": "demo", "server": "BaseHTTP", "date": "now"}},
            "cases": cases,
        }
        path = self.dir / "differential.suite.json"
        path.write_text(json.dumps(suite, indent=1))
        out = subprocess.run([str(self.cli), "run", str(path)], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, f"the harness differs from Envoy (suite: {path}):\n{out.stdout}{out.stderr}")


if __name__ == "__main__":
    unittest.main()
