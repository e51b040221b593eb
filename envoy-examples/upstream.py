#!/usr/bin/env python3
"""The demo upstream and JWKS server (loopback only).

GET /.well-known/jwks.json  -> the JWKS (policies/keys/jwks.json, or --jwks FILE)
GET /.well-known/openid-configuration -> an OIDC discovery document pointing at that JWKS
POST /__jwks_mode?mode=M    -> fault injection for tests: ok | 500 | garbage | hang | rotate:FILE
anything else               -> 200, JSON echo of method, path and headers
"""
import argparse
import json
import posixpath
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

STATE = {"mode": "ok", "jwks": b"", "fetches": 0}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK
    # held every keep-alive response ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if url.path == "/__jwks_mode":
            mode = parse_qs(url.query).get("mode", ["ok"])[0]
            with LOCK:
                if mode.startswith("rotate:"):
                    with open(mode.split(":", 1)[1], "rb") as f:
                        STATE["jwks"] = f.read()
                    mode = "ok"
                STATE["mode"] = mode
            return self._send(200, b'{"ok":true}')
        return self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/__jwks_fetches":
            return self._send(200, json.dumps({"fetches": STATE["fetches"]}).encode())
        if url.path == "/.well-known/openid-configuration":
            issuer = "https://issuer.portcullis.local"
            doc = {"issuer": issuer, "jwks_uri": f"{issuer}/.well-known/jwks.json"}
            return self._send(200, json.dumps(doc).encode())
        if url.path == "/.well-known/jwks.json":
            with LOCK:
                STATE["fetches"] += 1
                mode, jwks = STATE["mode"], STATE["jwks"]
            if mode == "500":
                return self._send(500, b"upstream exploded")
            if mode == "garbage":
                return self._send(200, b"{not json")
            if mode == "hang":
                time.sleep(30)
                return
            return self._send(200, jwks)
        # Like many application servers, this one resolves the path before routing: decodes
        # %-escapes, drops `;` parameters, treats `\\` as `/`, merges slashes and removes
        # dot-segments. The security tests check that no request reaches an admin page this way.
        resolved = re.sub(r";[^/]*", "", unquote(url.path).replace("\\", "/"))
        resolved = posixpath.normpath("/" + resolved.lstrip("/"))
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "resolved_path": resolved,
            "admin_page": resolved == "/admin" or resolved.startswith("/admin/"),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        return self._send(200, body)

    do_PUT = do_POST
    do_DELETE = do_GET


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--jwks", required=True)
    a = p.parse_args()
    with open(a.jwks, "rb") as f:
        STATE["jwks"] = f.read()
    ThreadingHTTPServer.request_queue_size = 1024  # the default backlog of 5 refused bursts
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
