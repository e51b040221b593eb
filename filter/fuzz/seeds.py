#!/usr/bin/env python3
"""Regenerates the fuzzers' seed corpora (filter/fuzz/corpus/<target>/) from the repository:
the demo keys and tokens signed with them, the example configurations bundled as the filter
loads them, and the CEL of policies/. Run with the project's venv (PyJWT, cryptography, PyYAML):

    .venv/bin/python filter/fuzz/seeds.py

The output is deterministic apart from the ECDSA/probabilistic signatures, so it is committed
and only regenerated when the policies or keys change.
"""
import base64
import hashlib
import json
import random
import shutil
import struct
from pathlib import Path

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
OUT = Path(__file__).resolve().parent / "corpus"
NOW = 1_800_000_000  # the targets' clock
HMAC_KEY = b"portcullis-fuzz-hmac-secret-32bytes!"
# RFC 8037 A.1: the Ed25519 key the jwt_token target trusts.
ED25519 = {"kty": "OKP", "crv": "Ed25519", "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
           "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write(target: str, name: str, data) -> None:
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def tokens() -> None:
    private = json.loads((POLICIES / "keys/private.jwks.json").read_text())
    by_kid = {k["kid"]: k for k in private["keys"]}
    rsa = RSAAlgorithm.from_jwk(json.dumps(by_kid["demo-rsa-1"]))
    ec256 = ECAlgorithm.from_jwk(json.dumps(by_kid["demo-ec-1"]))
    ed = OKPAlgorithm.from_jwk(json.dumps(ED25519))
    local = {"iss": "https://issuer.portcullis.local", "aud": "portcullis-demo", "sub": "alice",
             "groups": ["admin"], "tenant": "acme", "scope": "read write",
             "iat": NOW - 60, "nbf": NOW - 60, "exp": 4_000_000_000}
    fuzz = {"iss": "https://issuer", "sub": "user:bob", "a.b": {"c": "x"}, "groups": ["dev", "ops"],
            "iat": NOW - 60, "exp": NOW + 3600}
    seeds = {
        "rs256": jwt.encode(local, rsa, "RS256", headers={"kid": "demo-rsa-1"}),
        "es256": jwt.encode(local, ec256, "ES256", headers={"kid": "demo-ec-1"}),
        "eddsa": jwt.encode(fuzz, ed, "EdDSA", headers={"kid": "ed"}),
        "hs256": jwt.encode(fuzz, HMAC_KEY, "HS256", headers={"kid": "hs"}),
        "expired": jwt.encode({**local, "exp": NOW - 3600}, rsa, "RS256", headers={"kid": "demo-rsa-1"}),
        "wrong-audience": jwt.encode({**local, "aud": ["x", "y"]}, ec256, "ES256", headers={"kid": "demo-ec-1"}),
        "bad-subject": jwt.encode({**fuzz, "sub": "root"}, ed, "EdDSA"),
        "alg-none": b64url(b'{"alg":"none"}') + "." + b64url(json.dumps(local).encode()) + ".",
        "crit": jwt.encode(fuzz, ed, "EdDSA", headers={"crit": ["exp"], "kid": "ed"}),
    }
    rs = seeds["rs256"].split(".")
    seeds["bad-signature"] = f"{rs[0]}.{rs[1]}.{rs[2][:-4]}AAAA"
    seeds["json-serialization"] = json.dumps({"protected": rs[0], "payload": rs[1], "signature": rs[2]})
    for name, token in seeds.items():
        write("jwt_token", name, token)
    assert base64.urlsafe_b64decode("cG9ydGN1bGxpcy1mdXp6LWhtYWMtc2VjcmV0LTMyYnl0ZXMh") == HMAC_KEY


def jwks() -> None:
    public = (POLICIES / "keys/jwks.json").read_text()
    write("jwks", "demo", public)
    keys = json.loads(public)["keys"]
    write("jwks", "single-jwk", json.dumps(keys[1]))
    p384 = ec.derive_private_key(7, ec.SECP384R1()).public_key().public_numbers()
    write("jwks", "okp-oct-p384", json.dumps({"keys": [
        {k: v for k, v in ED25519.items() if k != "d"} | {"kid": "ed"},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "alg": "ES384",
         "x": b64url(p384.x.to_bytes(48, "big")), "y": b64url(p384.y.to_bytes(48, "big"))},
        {"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64url(HMAC_KEY)},
    ]}))
    write("jwks", "skipped", json.dumps({"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB"},
                                                  {"kty": "foo"}, keys[0] | {"alg": "PS256"}]}))
    write("jwks", "private", (POLICIES / "keys/private.jwks.json").read_text())
    write("jwks", "empty", '{"keys": []}')


def inline_files(value, base: Path, key=None):
    """What `portcullis bundle` does (harness/src/bundle.rs): `.cel` and JWKS files inlined."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("file"), str):
            text = (base / value["file"]).read_text()
            if key == "jwks":
                return {"inline": json.loads(text)}
            return {"file": value["file"], "source": text}
        return {k: inline_files(v, base, k) for k, v in value.items()}
    if isinstance(value, list):
        return [inline_files(v, base, key) for v in value]
    return value


def expressions(value, key=None):
    """Every CEL text in a bundled configuration."""
    if isinstance(value, dict):
        if "source" in value and "file" in value:
            yield value["source"]
            return
        for k, v in value.items():
            yield from expressions(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from expressions(v, key)
    elif isinstance(value, str) and key in ("when", "allow", "deny", "key"):
        yield value


def configs_and_cel() -> None:
    rng = random.Random(13)
    cels = []
    for path in sorted(p for p in POLICIES.glob("*.yaml") if not p.name.endswith(".test.yaml")):
        bundled = inline_files(yaml.safe_load(path.read_text()), POLICIES)
        write("config", path.stem, json.dumps(bundled))
        cels.extend(expressions(bundled))
    write("config", "remote-oidc", json.dumps({
        "jwt": {"providers": [
            {"name": "remote", "issuer": "https://a.example", "jwks": {"remote": {"cluster": "jwks", "path": "/keys"}},
             "from_headers": [{"name": "x-token", "value_prefix": "Token "}], "forward": True},
            {"name": "oidc", "issuer": "https://b.example/realm", "jwks": {"oidc": {"cluster": "idp", "timeout_ms": 500}},
             "algorithms": ["RS256", "ES256"], "max_lifetime_s": 3600, "required_claims": ["sub"],
             "subjects": {"exact": ["a"], "prefix": "svc:"}, "claim_to_headers": [{"claim": "realm.roles", "header": "x-roles"}]}],
            "requirements": [{"name": "either", "when": "request.url_path.startsWith(\"/x\")",
                              "require": {"all_of": [{"any_of": [{"provider": "remote"}, {"provider": "oidc"}]}, {"allow_missing_or_failed": {}}]}}],
            "default_requirement": {"none": {}}, "cache": {}},
        "policy": {"default_action": "allow", "rules": [{"name": "r", "mode": "shadow", "deny": "size(request.headers) > 50"}]},
        "rate_limits": {"max_buckets": 8, "limits": [{"name": "ip", "key": "source.address", "requests": 1, "period_s": 60, "on_key_error": "unknown_bucket"}]},
        "responses": {"hide_rule_name": True, "decision_header": "x-decision", "deny_header": ["x-denied", "1"], "filter_state": True},
    }))
    write("config", "empty", "{}")
    cels += [
        'request.headers["x-tenant"] == jwt.claims.tenant',
        'jwt.claims.groups.exists(g, g.startsWith("adm")) && request.time > timestamp("2020-01-01T00:00:00Z")',
        'cidr("2001:db8::/32").containsIP(ip(destination.address)) || destination.port == 443',
        'connection.uri_san_peer_certificate.endsWith("/ns/prod") && connection.tls_version == "TLSv1.3"',
        'request.query["a"].size() > 1 ? jwt.header.alg : string(request.size)',
        '[1, 2, 3].map(x, x * 2).filter(y, y > 2).all(z, z % 2 == 0)',
        '{"a": jwt.claims.sub}.a + "-" + request.host',
    ]
    for i, text in enumerate(dict.fromkeys(cels)):
        write("cel", f"expr-{i:02}", text.encode() + b"\0" + rng.randbytes(96))


def header_map(pairs) -> bytes:
    out = struct.pack("<I", len(pairs))
    for k, v in pairs:
        out += struct.pack("<II", len(k), len(v))
    for k, v in pairs:
        out += k + b"\0" + v + b"\0"
    return out


def wire() -> None:
    write("wire", "request-headers", header_map([
        (b":method", b"GET"), (b":path", b"/api/orders?a=1"), (b":authority", b"localhost"),
        (b"Authorization", b"Bearer a.b.c"), (b"x-tenant", b"acme"), (b"X-Tenant", b"globex")]))
    write("wire", "obs-text", header_map([(b"x-bin", b"\xff\xfe ok"), (b"", b"")]))
    write("wire", "truncated", header_map([(b"a", b"bcd")])[:-3])
    write("wire", "int", struct.pack("<q", 443))
    write("wire", "timestamp", struct.pack("<q", NOW * 10**9))
    write("wire", "bool", b"\x01")
    write("wire", "address", b"10.1.2.3:5000")
    write("wire", "verify-ok", b"\x08\x01")
    write("wire", "verify-error", b"\x12\x05error")


def shared_data() -> None:
    public = (POLICIES / "keys/jwks.json").read_text()
    tag = hashlib.sha256(b"jwks\0keys.example\0jwks\0/jwks.json").digest()[:8].hex()
    bucket = struct.pack("<QQQ", 0x0123456789ABCDEF, 3_000_000, (NOW - 1) * 10**9)
    parts = [bucket, b"vm-2 1800000001000 0", f"{NOW - 10} {tag}\n".encode() + public.encode(),
             b'{"issuer": "https://keys.example", "jwks_uri": "https://keys.example/jwks.json"}',
             public.encode()]
    write("shared_data", "fresh", b"#=#".join(parts))
    write("shared_data", "free-lease-empty-bucket", b"#=#".join(
        [struct.pack("<QQQ", 0, 0, 2**64 - 1), b"- 0 3", b"", b'{"jwks_uri": "http://k?x"}', b'{"keys": []}']))
    write("shared_data", "nothing-shared", b"#=##=##=#" + b"#=#".join(parts[3:]))



def rls_reply() -> None:
    # RateLimitResponse: OVER_LIMIT with one status (limit 10/min "tenant", 0 remaining, reset in
    # 1 s) and a response header to add; and a plain OK.
    write("rls_reply", "over_limit", b"\x08\x02\x12\x16\x08\x02\x12\x0c\x08\x0a\x10\x01\x1a\x06tenant"
          b"\x18\x00\x22\x02\x08\x01\x1a\x08\x0a\x01x\x12\x03yes")
    write("rls_reply", "ok", b"\x08\x01\x12\x02\x08\x01")

if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    tokens()
    jwks()
    configs_and_cel()
    wire()
    shared_data()
    rls_reply()
    for d in sorted(OUT.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds, {sum(f.stat().st_size for f in d.iterdir())} bytes")
