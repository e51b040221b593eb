#!/usr/bin/env python3
"""The sample requests: printed as curl lines by scripts/up.sh, checked by `up.sh --check`
and by the end-to-end tests. Each case: (description, method, path, headers, token, status)."""
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mint

KEYS = Path(__file__).resolve().parent.parent / "policies" / "keys" / "private.jwks.json"


def cases(keys):
    alice = mint.mint(keys, mint.SAMPLES["alice (admin, tenant acme)"])
    bob = mint.mint(keys, mint.SAMPLES["bob (reader, tenant globex)"], kid="demo-ec-1")
    expired = mint.mint(keys, {"sub": "carol"}, lifetime=-3600)
    return [
        ("public page, no token", "GET", "/public/hello", {}, None, 200),
        ("health check", "GET", "/healthz", {}, None, 200),
        ("API without a token", "GET", "/api/orders", {}, None, 401),
        ("API with alice's token (RS256)", "GET", "/api/orders", {}, alice, 200),
        ("API with bob's token (ES256)", "GET", "/api/orders", {}, bob, 200),
        ("expired token", "GET", "/api/orders", {}, expired, 401),
        ("garbage token", "GET", "/api/orders", {}, "not.a.jwt", 401),
        ("admin page as alice (admin)", "GET", "/admin/users", {}, alice, 200),
        ("admin page as bob (not admin)", "GET", "/admin/users", {}, bob, 403),
        ("POST as bob (no rule allows writes)", "POST", "/api/orders", {}, bob, 403),
        ("reports: a global limit, counted by the rate-limit service", "GET", "/api/reports", {}, alice, 200),
    ]


def send(base, method, path, headers, token, timeout=5):
    headers = dict(headers)
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def curl_line(base, method, path, headers, token):
    parts = ["curl -i"]
    if method != "GET":
        parts.append(f"-X {method}")
    for k, v in headers.items():
        parts.append(f"-H '{k}: {v}'")
    if token:
        parts.append(f"-H 'Authorization: Bearer {token}'")
    parts.append(f"{base}{path}")
    return " ".join(parts)


def main():
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="http://127.0.0.1:10000")
    p.add_argument("--check", action="store_true", help="send the requests; exit 1 on any unexpected status")
    a = p.parse_args()
    keys = mint.private_keys(KEYS)
    failures = 0
    for desc, method, path, headers, token, status in cases(keys):
        if a.check:
            got, _, body = send(a.base, method, path, headers, token)
            ok = got == status
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {got} (expected {status})  {desc}: {method} {path}")
            if not ok:
                print(f"     body: {body[:300]!r}")
        else:
            print(f"# {desc} -> expect {status}")
            print(curl_line(a.base, method, path, headers, token))
            print()
    if a.check:
        print(f"tour: {failures} unexpected answer(s)" if failures else "tour: every answer as expected")
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
