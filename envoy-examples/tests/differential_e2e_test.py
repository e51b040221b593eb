"""Differential check: the policy test cases give the same statuses in the harness
(`portcullis test --format json`, the .wasm on wasmtime) as in a real Envoy (V8).

Cases that depend on what loopback can't reproduce (a source address other than 127.0.0.1,
TLS facts, a virtual clock) are compared in the harness only; everything else is sent to
Envoy with a token minted by PyJWT from the same claims."""
import json
import os
import subprocess
import unittest
from pathlib import Path

import yaml

from . import envoyproc
from .envoyproc import EXAMPLES, ROOT
import mint
import tour
from .e2e_test import KEYS, EnvoyTestCase
from .security_e2e_test import unnormalised_template


def portcullis_cli():
    path = ROOT / "target" / "debug" / "portcullis"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: cargo build -p portcullis-harness")
    return str(path)


class HarnessMatchesEnvoyTest(EnvoyTestCase):
    # The harness runs the filter alone: so does this Envoy (no path normalisation in the HCM),
    # so that the non-normal paths of security.test.yaml reach the filter in both.
    template = unnormalised_template()

    def test_same_statuses(self):
        compared = 0
        for test_file in sorted((ROOT / "policies").glob("*.test.yaml")):
            spec = yaml.safe_load(test_file.read_text())
            # This Envoy runs policies/portcullis.yaml; other configs are compared by their own runs.
            if (test_file.parent / spec["config"]).resolve() != (ROOT / "policies" / "portcullis.yaml").resolve():
                continue
            run = subprocess.run([portcullis_cli(), "test", str(test_file), "--format", "json"],
                                 capture_output=True, text=True, env={**os.environ}, timeout=600)
            report = json.loads(run.stdout)
            by_name = {r["case"]: r for r in report["results"]}
            for case in spec["cases"]:
                # Scripted callout answers (`clusters`, e.g. the rate-limit service) exist in the
                # harness only; this Envoy has no such service behind it.
                if spec.get("clusters") or case.get("clusters"):
                    continue
                req, token = case.get("request", {}), case.get("token")
                # Loopback can't fake a source, TLS or the clock; repeated cases depend on bucket
                # state that this long-running Envoy shares across cases.
                if req.get("source") or req.get("tls") or req.get("destination") or case.get("time") \
                        or case.get("repeat"):
                    continue
                verdict = by_name[case["name"]]["verdict"]
                headers = dict(req.get("headers", {}))
                if token and token.get("raw"):
                    jwt_text = token["raw"]
                elif token:
                    jwt_text = mint.mint(KEYS, token.get("claims", {}), kid=token.get("kid", "demo-rsa-1"),
                                         headers=token.get("header"))
                else:
                    jwt_text = None
                status, _, body = tour.send(self.envoy.base, req.get("method", "GET"), req.get("path", "/"),
                                            headers, jwt_text)
                with self.subTest(f"{test_file.name}::{case['name']}"):
                    self.assertEqual(status, verdict["status"],
                                     f"harness said {verdict}, Envoy answered {status} {body[:200]!r}")
                compared += 1
        self.assertGreaterEqual(compared, 10, "too few cases compared to mean anything")
        print(f"\ndifferential: {compared} requests gave the same status in the harness and in Envoy")


if __name__ == "__main__":
    unittest.main()
