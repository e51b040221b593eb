"""The metrics an operator sees, proven with a real Prometheus: Debian's `prometheus` scrapes a
real Envoy (--concurrency 2) running the example policies with remote JWKS while this test
sends known traffic; then every query of the Grafana dashboard
(envoy-examples/observability/grafana-dashboard.json) is run through Prometheus's HTTP API and
must return the series and values that traffic implies. A panel whose query returns nothing
fails. The alert rules are checked with `promtool check rules` and unit-tested with
`promtool test rules`."""
import copy
import json
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request
from pathlib import Path

from . import envoyproc
from .envoyproc import EXAMPLES, eventually
from .e2e_test import KEYS
import mint
import tour

OBSERVABILITY = EXAMPLES / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"


def tool(name):
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).is_file():
        raise RuntimeError(f"{name} not found: run scripts/setup.sh (Debian package `prometheus`)")
    return path


class Prometheus:
    """A Prometheus on loopback with a temporary configuration and storage, scraping Envoy's
    /stats/prometheus every second and evaluating envoy-examples/observability/alerts.yaml."""

    def __init__(self, envoy_admin_port):
        self.dir = Path(tempfile.mkdtemp(prefix="portcullis-prometheus-"))
        shutil.copy(OBSERVABILITY / "alerts.yaml", self.dir / "alerts.yaml")
        (self.dir / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yaml"],
            "scrape_configs": [{
                "job_name": "envoy", "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{envoy_admin_port}"]}],
            }],
        }))
        self.port = envoyproc.free_port()
        self.log = open(self.dir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        if eventually(self.ready, timeout=30) is not True:
            raise RuntimeError(f"prometheus not ready:\n{(self.dir / 'prometheus.log').read_text()[-3000:]}")

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{(self.dir / 'prometheus.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr):
        """{frozenset(labels.items()): value} of an instant query."""
        return {frozenset(s["metric"].items()): float(s["value"][1]) for s in self.api("query", query=expr)["result"]}

    def stop(self):
        envoyproc.stop_process(self.proc, self.log)


def dashboard_queries():
    """(panel title, expr) of every target of every panel."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def instant(expr, window="1m"):
    """A dashboard expression as an instant query: Grafana's interval variables become `window`."""
    return expr.replace("$__rate_interval", window).replace("$__range", window)


def totals(expr):
    """The same query over the counters themselves (`rate(x[w])` → `x`): the values are then
    the counts since Envoy started, which the test's traffic determines exactly."""
    return re.sub(r"\b(?:rate|increase)\((\w+(?:\{[^}]*\})?)\[[^\]]+\]\)", r"\1", expr)


def labels(**kv):
    return frozenset(kv.items())


# Per dashboard panel: series (by their labels) and the totals one round of the traffic below
# implies. Other series may be present too (e.g. the per-user limit's key errors on public
# pages). The traffic is sent in ROUNDS rounds, scraped in between, so that every series has
# grown between two samples and each rate() is positive.
ROUNDS = 2
EXPECTED = {
    "Decisions by outcome": {labels(decision="allow"): 7, labels(decision="deny"): 2},
    "Rule verdicts by rule and outcome": {
        labels(rule="api-reads", decision="allow"): 5, labels(rule="public", decision="allow"): 4,
        labels(rule="admin-pages", decision="error"): 1, labels(rule="retired-api-versions", decision="deny"): 1,
        labels(rule="legacy-clients", decision="shadow_deny"): 4},
    "Shadow verdicts": {labels(rule="legacy-clients", decision="shadow_deny"): 4},
    "Authentication outcomes": {
        # missing: the two API requests and the four public ones (their requirement allows it).
        labels(provider="local", result="ok"): 7, labels(provider="local", result="missing"): 6,
        labels(provider="local", result="invalid"): 3},
    "Authentication failures by reason": {
        labels(provider="local", reason="expired"): 2, labels(provider="local", reason="malformed"): 1},
    "Token cache": None,  # hits and misses split by VM: checked as a sum below
    "JWKS key age": None,  # a gauge: checked below
    "JWKS fetches by result": None,  # retries after the failure are timed by backoff: checked below
    "Rate limiting by limit and result": {
        labels(limit="per-client-public", result="admitted"): 2, labels(limit="per-client-public", result="limited"): 2,
        labels(limit="per-user", result="admitted"): 5},
    "Rate-limited requests by limit": {labels(limit="per-client-public"): 2},
    "Requests refused before any policy": {labels(reason="repeated_header"): 1},
    "Decision time (p50, p99)": None,  # checked below
    # No rate-limit service listens on the `ratelimit` cluster's port: each call fails at once
    # and the example's local_fallback admits (4 calls in all stay under the breaker's 5).
    "Global rate-limit service by result": {labels(result="error"): 2, labels(result="fallback_admitted"): 2},
}


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = envoyproc.Upstream()
        cls.envoy = cls.prometheus = None
        try:
            # The JWKS endpoint fails first, so a fetch failure is counted, then recovers.
            cls.upstream.set_jwks_mode("500")
            config = copy.deepcopy(envoyproc.bundled_config())
            # Envoy merges histograms for /stats/prometheus on every stats flush (5 s by default).
            template = Path(tempfile.mkdtemp(prefix="portcullis-metrics-")) / "envoy.yaml"
            template.write_text("stats_flush_interval: 1s\n" + (EXAMPLES / "local.envoy.yaml").read_text())
            cls.envoy = envoyproc.Envoy(config, cls.upstream.port, concurrency=2, jwks="remote", template=template,
                                        ratelimit_port=envoyproc.free_port())
            cls.prometheus = Prometheus(cls.envoy.admin_port)
            failed = "wasmcustom.portcullis_jwks_fetches_total.provider.local.result.failed"
            if eventually(lambda: (cls.envoy.stats(failed).get(failed) or 0) >= 1, timeout=10) is not True:
                raise RuntimeError("no JWKS fetch failure counted")
            cls.upstream.set_jwks_mode("ok")
            age = "wasmcustom.portcullis_jwks_key_age_seconds.provider.local"
            if eventually(lambda: age in cls.envoy.stats(age), timeout=20) is not True:
                raise RuntimeError("the JWKS was not fetched after the endpoint recovered")
            cls.sent = []
            for round_ in range(1, ROUNDS + 1):
                cls.sent += cls.send_traffic(round_)
                # Counters reach Envoy on the next tick (250 ms), Prometheus scrapes every second.
                expect = labels(decision="allow")
                if eventually(lambda: cls.prometheus.query("sum by (decision) (portcullis_decisions_total)").get(expect)
                              == 7 * round_, timeout=15) is not True:
                    raise RuntimeError(f"round {round_} of the traffic never reached Prometheus")
                time.sleep(2.5)  # more scrapes: every series has samples before and after a change
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for part in (cls.prometheus, cls.envoy):
            if part:
                part.stop()
        cls.upstream.stop()

    @classmethod
    def send_traffic(cls, round_):
        base = cls.envoy.base
        reader = mint.mint(KEYS, {"sub": "reader-1"})                       # scope read, no groups
        expired = mint.mint(KEYS, {"sub": "late"}, lifetime=-3600)
        sent = []

        def send(path, token=None, headers=(), expect=None, method="GET"):
            status = tour.send(base, method, path, dict(headers), token)[0]
            if expect is not None:
                assert status == expect, (path, status, expect)
            sent.append(status)

        for _ in range(3):
            send("/api/orders", reader, expect=200)                          # api-reads allow, jwt ok
        tenant = mint.mint(KEYS, {"sub": "reader-2", "tenant": "acme"})
        for _ in range(2):
            send("/api/reports", tenant, expect=200)                         # global limit: service down, fallback
        send("/api/v1/orders", reader, expect=403)                           # retired-api-versions deny
        send("/admin/users", reader, expect=403)                             # admin-pages error (no groups)
        for _ in range(2):
            send("/api/orders", expect=401)                                  # jwt missing
            send("/api/orders", expired, expect=401)                         # invalid: expired
        send("/api/orders", "not.a.jwt", expect=401)                         # invalid: malformed
        legacy = (("user-agent", "legacy-cli/1.0"), ("x-client-id", f"client-{round_}"))
        for expect in (200, 200, 429, 429):                                  # public allow, shadow deny
            send("/public/hello", headers=legacy, expect=expect)
        # A header a policy reads, given twice: refused before any policy (urllib can't repeat one).
        status = envoyproc_raw(cls.envoy.port, "/public/hello", [("x-client-id", "a"), ("x-client-id", "b")])
        assert status == 400, status
        sent.append(status)
        return sent

    def test_every_dashboard_query_returns_the_series_the_traffic_implies(self):
        queries = dashboard_queries()
        self.assertEqual({title for title, _ in queries}, set(EXPECTED), "a panel without expectations")
        for title, expr in queries:
            with self.subTest(panel=title, expr=expr):
                result = self.prometheus.query(instant(expr))
                self.assertTrue(result, f"panel `{title}`: the query returned nothing")
                self.assertTrue(all(v == v for v in result.values()), f"NaN in {result}")
                expected = EXPECTED[title]
                if expected is None:
                    continue
                for series in expected:
                    self.assertGreater(result.get(series, 0), 0, f"{title}: {dict(series)} has no rate in {result}")
                counts = self.prometheus.query(totals(instant(expr)))
                for series, count in expected.items():
                    self.assertEqual(counts.get(series), ROUNDS * count, f"{title}: {dict(series)} in {counts}")

    def test_token_cache_key_age_fetches_and_decision_time(self):
        cache = self.prometheus.query("sum by (provider) (portcullis_jwt_cache_total)")
        self.assertGreaterEqual(cache.get(labels(provider="local"), 0), 5 * ROUNDS, cache)  # every token with keys is looked up
        age = self.prometheus.query(instant(dict(dashboard_queries())["JWKS key age"]))
        self.assertEqual(set(age), {labels(provider="local")})
        self.assertLess(age[labels(provider="local")], 120)
        fetches = self.prometheus.query("sum by (provider, result) (portcullis_jwks_fetches_total)")
        self.assertGreaterEqual(fetches.get(labels(provider="local", result="failed"), 0), 1, fetches)
        self.assertGreaterEqual(fetches.get(labels(provider="local", result="ok"), 0), 1, fetches)
        # Every request the filter saw is in the histogram (its count), and the quantiles are
        # finite, non-negative microseconds.
        count = self.prometheus.query("sum(portcullis_decision_duration_microseconds_count)")
        self.assertTrue(eventually(lambda: list(self.prometheus.query(
            "sum(portcullis_decision_duration_microseconds_count)").values()) == [len(self.sent)], timeout=10),
            (count, len(self.sent)))
        for title, expr in dashboard_queries():
            if title.startswith("Decision time"):
                for value in self.prometheus.query(instant(expr)).values():
                    self.assertTrue(0 <= value < 1e6, value)

    def test_labels_come_from_envoys_tag_extraction(self):
        # Only the families of filter/src/metrics.rs reach Prometheus, never a flat name with a
        # rule, provider or limit baked in.
        families = re.findall(r'"(portcullis_[a-z_]+)",\s*Kind::(\w+)', (EXAMPLES.parent / "filter" / "src" / "metrics.rs").read_text())
        allowed = {name for name, kind in families if kind != "Histogram"}
        allowed |= {name + suffix for name, kind in families if kind == "Histogram" for suffix in ("_bucket", "_sum", "_count")}
        names = {n for n in self.prometheus.api("label/__name__/values") if n.startswith("portcullis")}
        self.assertIn("portcullis_rule_decisions_total", names)
        self.assertEqual(names - allowed, set(), "metric names that are not a labelled family")

    def test_alert_rules_are_valid_and_fire_on_their_cases(self):
        r = subprocess.run([tool("promtool"), "check", "rules", "alerts.yaml"], cwd=OBSERVABILITY,
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = subprocess.run([tool("promtool"), "test", "rules", "alerts.test.yaml"], cwd=OBSERVABILITY,
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # Prometheus loaded them too, and evaluates them against the live series.
        groups = self.prometheus.api("rules")["groups"]
        self.assertEqual({rule["name"] for g in groups for rule in g["rules"]},
                         {a["alert"] for g in __import__("yaml").safe_load((OBSERVABILITY / "alerts.yaml").read_text())["groups"]
                          for a in g["rules"]})
        self.assertTrue(all(rule.get("health") == "ok" for g in groups for rule in g["rules"]), groups)


def envoyproc_raw(port, path, headers):
    from .e2e_test import raw_request
    return raw_request(port, path, headers)[0]


if __name__ == "__main__":
    unittest.main()
