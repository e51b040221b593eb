"""Personal data in the decision log, against a real Envoy (--concurrency 2, wasm debug logs):
tokens carry a unique marker string in every claim and requests one in every header; the test
reads everything Envoy wrote (its own log, the filter's log lines, the text and JSON access
logs, which print every filter-state value the filter sets) and proves that no marker, and no
token, gets there unless the configuration lists it: the subject only as its HMAC with
`subject: hmac`, in clear only with `subject: clear`, and of the other claims only those in
`decision_log.claims`."""
import copy
import hashlib
import hmac
import json
import time
import unittest
import uuid

from . import envoyproc
from .e2e_test import KEYS
import mint
import tour

HMAC_KEY = "a-test-only-decision-log-key-0123456789"


def markers():
    run = uuid.uuid4().hex[:10]
    names = ["sub", "tenant", "email", "name", "group", "scope", "nested", "jti", "custom",
             "h_useragent", "h_referer", "h_cookie", "h_custom", "h_tenant_mismatch"]
    return {n: f"MRK{run}{n.replace('_', '')}" for n in names}


class DecisionLogPrivacy(unittest.TestCase):
    def run_envoy(self, decision_log):
        """Starts Envoy with the example configuration and `decision_log`, sends the marked
        traffic, stops Envoy; returns (markers, tokens, everything Envoy wrote)."""
        m = markers()
        config = copy.deepcopy(envoyproc.bundled_config())
        config.pop("decision_log", None)
        if decision_log is not None:
            config["decision_log"] = decision_log
        upstream = envoyproc.Upstream()
        envoy = envoyproc.Envoy(config, upstream.port, concurrency=2)
        try:
            claims = {"sub": m["sub"], "tenant": m["tenant"], "email": m["email"], "name": m["name"],
                      "groups": [m["group"], "dev"], "scope": f"read {m['scope']}",
                      "profile": {"nested": m["nested"]}, "jti": m["jti"], "x-custom": m["custom"]}
            token = mint.mint(KEYS, claims)
            expired = mint.mint(KEYS, claims, lifetime=-3600)
            headers = {"user-agent": m["h_useragent"], "referer": m["h_referer"],
                       "cookie": f"session={m['h_cookie']}", "x-custom": m["h_custom"]}
            sent = [
                ("GET", "/api/orders", dict(headers, **{"x-tenant": m["tenant"]}), token, 200),   # allowed
                ("POST", "/api/orders", headers, token, 403),                                      # no rule allows
                ("GET", "/admin/users", headers, token, 403),                                      # admin-pages: not admin
                ("GET", "/api/orders", dict(headers, **{"x-tenant": m["h_tenant_mismatch"]}), token, 403),  # tenant-isolation
                ("GET", "/api/orders", headers, expired, 401),                                     # invalid token
                ("GET", "/public/x", dict(headers, **{"x-client-id": m["h_custom"]}), None, 200),  # anonymous
            ]
            for method, path, h, tok, expect in sent:
                status = tour.send(envoy.base, method, path, h, tok)[0]
                self.assertEqual(status, expect, (method, path))
            # Every request's access-log lines are written (flushed every 200 ms).
            self.assertTrue(envoyproc.eventually(
                lambda: sum(line.startswith('{"') for line in envoy.log_text().splitlines()) >= len(sent), timeout=10))
            time.sleep(0.5)
        finally:
            envoy.stop()
            upstream.stop()
        return m, (token, expired), envoy.log_path.read_text(errors="replace")

    def assert_absent(self, text, markers, tokens, allowed=()):
        leaked = sorted(name for name, marker in markers.items() if marker in text and name not in allowed)
        self.assertEqual(leaked, [], "markers in Envoy's output")
        for token in tokens:
            for part in token.split("."):
                self.assertNotIn(part, text, "a token (or a part of it) in Envoy's output")

    def records(self, text):
        out = []
        for line in text.splitlines():
            if line.startswith('{"') and '"portcullis"' in line:
                value = json.loads(line)["portcullis"]
                if value and value != "-":
                    out.append(json.loads(value))
        return out

    def test_nothing_personal_without_a_decision_log(self):
        m, tokens, text = self.run_envoy(None)
        self.assert_absent(text, m, tokens)
        access = [line for line in text.splitlines() if line.startswith("access: ")]
        self.assertEqual(len(access), 6)
        self.assertTrue(all(line.endswith(" sub=-") for line in access), "the subject is omitted by default")
        self.assertEqual(self.records(text), [], "no record without decision_log")

    def test_subject_pseudonymised_and_only_listed_claims(self):
        m, tokens, text = self.run_envoy({"to": ["filter_state", "log"], "subject": "hmac",
                                          "subject_hmac_key": HMAC_KEY, "claims": ["tenant"]})
        # Only the listed claim appears; the subject only as its HMAC.
        self.assert_absent(text, m, tokens, allowed=("tenant",))
        self.assertIn(m["tenant"], text)
        pseudonym = hmac.new(HMAC_KEY.encode(), m["sub"].encode(), hashlib.sha256).hexdigest()
        self.assertIn(f"sub={pseudonym}", text)
        records = self.records(text)
        self.assertEqual(len(records), 6, records)
        allowed = [r for r in records if r["decision"] == "allow" and r.get("subject")]
        self.assertEqual(allowed[0]["subject"], pseudonym)
        self.assertEqual(allowed[0]["claims"], {"tenant": m["tenant"]})
        invalid = [r for r in records if r.get("authn", {}).get("result") == "invalid"]
        self.assertEqual(invalid[0]["authn"], {"provider": "local", "result": "invalid", "reason": "expired"})
        self.assertNotIn("subject", invalid[0], "an unverified token's claims are never logged")
        # The `log` sink: the same records in the proxy log.
        logged = [line for line in text.splitlines() if "portcullis decision {" in line]
        self.assertEqual(len(logged), 6, logged)

    def test_the_subject_in_clear_only_when_configured(self):
        # The positive control: the test does see a marker when the configuration lets it out.
        m, tokens, text = self.run_envoy({"subject": "clear"})
        self.assert_absent(text, m, tokens, allowed=("sub",))
        self.assertIn(f"sub={m['sub']}", text)


if __name__ == "__main__":
    unittest.main()
