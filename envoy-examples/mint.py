#!/usr/bin/env python3
"""Mints demo tokens with PyJWT (an implementation independent of the filter's)."""
import json
import time

import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.portcullis.local"
AUDIENCE = "portcullis-demo"


def private_keys(path):
    with open(path) as f:
        keys = json.load(f)["keys"]
    out = {}
    for k in keys:
        loader = RSAAlgorithm if k["kty"] == "RSA" else ECAlgorithm
        out[k["kid"]] = (loader.from_jwk(json.dumps(k)), k["alg"])
    return out


def mint(keys, claims, kid="demo-rsa-1", lifetime=86400, headers=None, now=None):
    key, alg = keys[kid]
    now = int(now if now is not None else time.time())
    # `scope: read` lets the example policy's `api-reads` rule allow GETs under /api/.
    body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + lifetime, "scope": "read"}
    body.update(claims)
    h = {"kid": kid}
    h.update(headers or {})
    return jwt.encode(body, key, algorithm=alg, headers=h)


SAMPLES = {
    "alice (admin, tenant acme)": {"sub": "alice", "groups": ["admin", "dev"], "tenant": "acme", "scope": "read write"},
    "bob (reader, tenant globex)": {"sub": "bob", "groups": ["dev"], "tenant": "globex", "scope": "read"},
}
