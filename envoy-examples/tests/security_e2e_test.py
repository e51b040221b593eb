"""Bypass classes in a real Envoy (docs/security.md): paths that mean one thing to the policy
and another to the upstream, a client-chosen X-Forwarded-For, repeated headers, and a flood
of rate-limit keys. The upstream (upstream.py) resolves paths like an application server and
says when it served an admin page."""
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from . import envoyproc
from .envoyproc import EXAMPLES, ROOT
import mint
from .e2e_test import KEYS, EnvoyTestCase, raw_request

BYPASS_PATHS = [
    "/public/../admin/users",
    "/public/%2e%2e/admin/users",
    "/public/..%2fadmin/users",
    "/public/%2e%2e%2fadmin/users",
    "/public/./../admin/users",
    "/public/..;/admin/users",
    "/public/%2E%2E/admin/users",
    "/public/..%5cadmin/users",
    "/public//../admin/users",
]
# With a reader's token these dodge the `retired-api-versions` deny rule unless normalised.
RETIRED_API_PATHS = ["/api/%76%31/x", "/api//v1/x", "/api/v2/../v1/x", "/api/v1;x/x"]

# The HCM settings docs/security.md requires; removed to show what the filter does alone.
NORMALISING = ("normalize_path:", "merge_slashes:", "path_with_escaped_slashes_action:",
               "use_remote_address:", "xff_num_trusted_hops:")


def raw(base, path, headers=()):
    """`path` byte for byte, no redirects followed; `headers` as pairs, repeats included."""
    return raw_request(int(base.rsplit(":", 1)[1]), path, list(headers))


def unnormalised_template():
    """local.envoy.yaml without the path and client-address settings."""
    text = (EXAMPLES / "local.envoy.yaml").read_text()
    kept = [line for line in text.splitlines() if not line.strip().startswith(NORMALISING)]
    path = Path(tempfile.mkdtemp(prefix="portcullis-sec-")) / "unnormalised.envoy.yaml"
    path.write_text("\n".join(kept) + "\n")
    return path


def security_config(path_normalization="reject"):
    config = copy.deepcopy(envoyproc.bundled_config())
    config.setdefault("request", {})["path_normalization"] = path_normalization
    # An allow rule for 10.0.0.0/8 only (no loopback): a forged X-Forwarded-For must not pass it.
    config["policy"]["rules"].insert(0, {
        "name": "ten-net", "when": 'request.url_path.startsWith("/ten/")',
        "allow": 'cidr("10.0.0.0/8").containsIP(ip(source.address))',
    })
    return config


class Running(EnvoyTestCase):
    path_normalization = "reject"

    @classmethod
    def setUpClass(cls):
        cls.plugin_config = security_config(cls.path_normalization)
        super().setUpClass()

    def get(self, path, token=None, headers=()):
        headers = list(headers)
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        return raw(self.envoy.base, path, headers)

    def assert_no_admin_page(self, path, token=None):
        status, hdrs, body = self.get(path, token)
        if status == 200:
            served = json.loads(body)
            self.assertFalse(served["admin_page"], f"{path} reached {served['resolved_path']} upstream")
        return status, hdrs, body


class ShippedConfigTest(Running):
    """envoy-examples/local.envoy.yaml as shipped: Envoy normalises, the filter checks too."""

    def test_no_path_reaches_an_admin_page_without_a_token(self):
        for path in BYPASS_PATHS:
            with self.subTest(path):
                status, _, body = self.assert_no_admin_page(path)
                # Envoy resolved it to /admin/users (no token: 401), redirected the unescaped
                # form (307), resolved it to a public page (`/public//../` is `/public/`: 200,
                # no admin page), or the filter refused what Envoy left alone (`;`: 400).
                self.assertIn(status, (200, 301, 302, 307, 308, 400, 401), body[:200])

    def test_retired_api_versions_stay_denied_however_spelled(self):
        bob = mint.mint(KEYS, mint.SAMPLES["bob (reader, tenant globex)"])
        self.assertEqual(self.get("/api/v1/x", bob)[0], 403)
        self.assertEqual(self.get("/api/v2/x", bob)[0], 200)
        for path in RETIRED_API_PATHS:
            with self.subTest(path):
                status, _, body = self.get(path, bob)
                self.assertIn(status, (301, 302, 307, 308, 400, 403), body[:200])

    def test_x_forwarded_for_does_not_decide_source_address(self):
        alice = mint.mint(KEYS, mint.SAMPLES["alice (admin, tenant acme)"])
        # The peer is 127.0.0.1: the 10/8 rule must not be satisfied by a header.
        status, _, _ = self.get("/ten/x", alice, [("x-forwarded-for", "10.0.0.1")])
        self.assertEqual(status, 403)
        # And a forged public address must not lock a loopback (internal) client out.
        status, _, _ = self.get("/internal/metrics", alice, [("x-forwarded-for", "8.8.8.8")])
        self.assertEqual(status, 200)

    def test_a_repeated_key_header_is_refused_not_a_fresh_bucket(self):
        key = [("x-client-id", "c9-repeat")]
        statuses = [self.get("/public/x", None, key)[0] for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 429])
        status, _, body = self.get("/public/x", None, key * 2)
        self.assertEqual(status, 400, body)
        doc = json.loads(body)
        self.assertEqual(doc["error"], "invalid_request")
        self.assertIn("x-client-id", doc["reason"])
        status, _, _ = self.get("/public/x", None, [("x-client-id", "c9-repeat"), ("x-client-id", "other")])
        self.assertEqual(status, 400)


class FilterAloneTest(Running):
    """An Envoy that does not normalise: the filter refuses every non-normal path itself."""

    template = unnormalised_template()

    def test_the_filter_refuses_non_normal_paths(self):
        for path in BYPASS_PATHS + RETIRED_API_PATHS:
            with self.subTest(path):
                status, hdrs, body = self.assert_no_admin_page(path)
                self.assertEqual(status, 400, body[:200])
                self.assertEqual(json.loads(body)["error"], "invalid_request")
                self.assertEqual(hdrs.get("content-type"), "application/json")
        rejected = "wasmcustom.portcullis_requests_rejected_total.reason."
        self.assertTrue(envoyproc.eventually(
            lambda: sum(v or 0 for v in self.envoy.stats(rejected).values()) >= len(BYPASS_PATHS), timeout=5))

    def test_normal_paths_still_pass(self):
        status, _, body = self.get("/public/index.html")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["resolved_path"], "/public/index.html")


class NeitherTest(Running):
    """The control: with Envoy's settings and the filter's check both off, the bypass is real
    (so the tests above can fail)."""

    template = unnormalised_template()
    path_normalization = "off"

    def test_the_bypass_exists_without_either_guard(self):
        status, _, body = self.get("/public/../admin/users")
        self.assertEqual(status, 200)
        self.assertTrue(json.loads(body)["admin_page"])
        status, _, _ = self.get("/ten/x", mint.mint(KEYS, mint.SAMPLES["alice (admin, tenant acme)"]),
                                [("x-forwarded-for", "10.0.0.1")])
        self.assertEqual(status, 200, "without use_remote_address, XFF decides source.address")


def envoy_rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


WRK_SCRIPT = """
-- Every key is used once: the run's name, wrk's thread number and a counter.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
local prefix = "k"
local n = 0
function init(args)
  prefix = args[1] .. "-" .. thread_id
end
function request()
  n = n + 1
  return wrk.format("GET", "/public/flood", {["x-client-id"] = prefix .. "-" .. n})
end
"""


class KeyFloodTest(unittest.TestCase):
    """100 000 distinct x-client-id values against the example's `per-client-public` limit
    (2 per minute: every flooded bucket stays active for 30 s), then 20 fresh clients."""

    def setUp(self):
        # The flood is about the filter's table: Envoy answers it itself (direct_response), so
        # neither the demo upstream nor the machine's two cores limit the key rate.
        template = envoyproc.direct_response_template('{ path: "/public/flood" }')
        self.upstream = envoyproc.Upstream()
        self.envoy = envoyproc.Envoy(envoyproc.bundled_config(), self.upstream.port, concurrency=2,
                                     template=template)

    def tearDown(self):
        self.envoy.stop()
        self.upstream.stop()

    def test_fresh_clients_pass_after_a_flood_of_keys(self):
        wrk = shutil.which("wrk")
        self.assertIsNotNone(wrk, "wrk is required (scripts/setup.sh installs it)")
        script = Path(tempfile.mkdtemp(prefix="portcullis-flood-")) / "flood.lua"
        script.write_text(WRK_SCRIPT)
        for i in range(3):  # warm-up: every VM has created its buckets
            raw(self.envoy.base, "/public/flood", [("x-client-id", f"warm-{i}")])
        rss_before = envoy_rss_kb(self.envoy.proc.pid)
        total, run = 0, 0
        while total < 100_000 and run < 20:
            out = subprocess.run([wrk, "-t2", "-c32", "-d6s", "-s", str(script), self.envoy.base + "/public/flood",
                                  "--", f"run{run}"], capture_output=True, text=True, timeout=60).stdout
            found = re.search(r"(\d+) requests in", out)
            self.assertIsNotNone(found, out)
            total += int(found.group(1))
            run += 1
        self.assertGreaterEqual(total, 100_000, f"only {total} requests in {run} wrk runs")
        rss_after = envoy_rss_kb(self.envoy.proc.pid)
        fresh = [raw(self.envoy.base, "/public/x", [("x-client-id", f"fresh-client-{i}")])[0] for i in range(20)]
        self.assertEqual(fresh, [200] * 20)
        events = "wasmcustom.portcullis_ratelimit_bucket_events_total.limit.per-client-public.event."
        stats = self.envoy.stats(events)
        evicted = stats.get(events + "evicted") or 0
        self.assertGreater(evicted, 0, f"the table filled up and gave slots up: {stats}")
        growth_mb = (rss_after - rss_before) / 1024
        print(f"\nflood: {total} keys in {run} wrk runs; RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MB; "
              f"evicted {evicted}; stats {stats}", file=sys.stderr)
        # 4096 slots × ~100 bytes: the table is bounded; the rest is allocator noise.
        self.assertLess(growth_mb, 48, f"RSS grew {growth_mb:.1f} MB")


if __name__ == "__main__":
    unittest.main()
