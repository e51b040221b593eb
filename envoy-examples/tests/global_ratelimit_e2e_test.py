"""Global rate limits end to end: real Envoy processes, the bundled rate-limit service
(ratelimit-service/, Limitador on Redis) and a real redis-server, all children of the test.

- two Envoy "replicas" (each --concurrency 2) behind one service: wrk against both admits the
  limit exactly, and both answer with the same RateLimit figures;
- differential: Envoy's native envoy.filters.http.ratelimit and Portcullis, same service, same
  descriptor, count into the same counter;
- faults: service not started, killed, restarted; Redis killed; a service slower than the
  timeout; garbage replies: each failure_mode answers as documented, the breaker opens and
  closes, nothing traps and Envoy keeps serving.

Needs redis-server, wrk (scripts/setup.sh) and target/debug/portcullis-ratelimit
(`cargo build -p portcullis-ratelimit-service`; PORTCULLIS_RATELIMIT overrides the path)."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
from pathlib import Path

from . import envoyproc
from .envoyproc import ROOT

BENCH = ROOT / "benches" / "envoy"
LIMIT = "per-tenant-global"
STAT = "wasmcustom.portcullis_global_ratelimit_total.result."


def limits_yaml(max_value, seconds=60):
    return (f"- namespace: portcullis\n  name: {LIMIT}\n  max_value: {max_value}\n  seconds: {seconds}\n"
            "  conditions: []\n  variables: [\"descriptors[0].tenant\"]\n")


class Redis:
    def __init__(self, port=None):
        self.port = port or envoyproc.free_port()
        self.start()

    def start(self):
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is required (scripts/setup.sh installs it)")
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--protected-mode", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if envoyproc.eventually(lambda: envoyproc.accepts(self.port), timeout=10, every=0.05) is not True:
            raise RuntimeError("redis-server did not start")

    def kill(self):
        self.proc.kill()
        self.proc.wait()


class Service:
    """target/debug/portcullis-ratelimit on free ports; restartable on the same ports."""

    def __init__(self, redis_port, max_value, seconds=60, start=True):
        self.grpc_port, self.admin_port = envoyproc.free_port(), envoyproc.free_port()
        self.redis_port = redis_port
        self.dir = Path(tempfile.mkdtemp(prefix="portcullis-rls-"))
        self.limits = self.dir / "limits.yaml"
        self.limits.write_text(limits_yaml(max_value, seconds))
        self.proc = None
        if start:
            self.start()

    def start(self):
        binary = os.environ.get("PORTCULLIS_RATELIMIT", str(ROOT / "target" / "debug" / "portcullis-ratelimit"))
        if not Path(binary).is_file():
            raise RuntimeError(f"{binary} is missing: cargo build -p portcullis-ratelimit-service")
        self.log = open(self.dir / "service.log", "a")
        self.proc = subprocess.Popen(
            [binary, "--grpc", f"127.0.0.1:{self.grpc_port}", "--admin", f"127.0.0.1:{self.admin_port}",
             "--redis", f"redis://127.0.0.1:{self.redis_port}", "--limits", str(self.limits)],
            stdout=self.log, stderr=subprocess.STDOUT)
        ready = envoyproc.eventually(lambda: envoyproc.accepts(self.grpc_port) and envoyproc.accepts(self.admin_port),
                                     timeout=20, every=0.05)
        if ready is not True:
            raise RuntimeError(f"the rate-limit service did not start:\n{(self.dir / 'service.log').read_text()}")

    def admin(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode()

    def counters(self):
        return json.loads(self.admin("/counters"))

    def fault(self, **knobs):
        self.admin("/fault?" + "&".join(f"{k}={v}" for k, v in knobs.items()))

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc:
            self.log.close()


def plugin(failure_mode="deny", timeout_ms=50, fraction=None, breaker=(3, 500), mode="enforce"):
    service = {"cluster": "ratelimit", "domain": "portcullis", "timeout_ms": timeout_ms,
               "failure_mode": failure_mode, "breaker": {"failures": breaker[0], "open_ms": breaker[1]}}
    if fraction is not None:
        service["fallback_fraction"] = fraction
    return {
        "policy": {"default_action": "allow"},
        "rate_limits": {"headers_on_allow": True, "service": service, "limits": [
            {"name": LIMIT, "scope": "global", "mode": mode, "requests": 100, "period_s": 60,
             "descriptors": [{"key": "tenant", "value": "request.headers['x-tenant']"}]}]},
    }


def portcullis_envoy(config, rls_port, concurrency=2):
    return envoyproc.Envoy(config, envoyproc.free_port(), concurrency=concurrency,
                           template=BENCH / "bench.envoy.yaml", ratelimit_port=rls_port)


class NativeEnvoy(envoyproc.Envoy):
    """Envoy's own ratelimit filter (benches/envoy/native-ratelimit.envoy.yaml)."""

    def __init__(self, rls_port):
        super().__init__({}, envoyproc.free_port(), concurrency=2,
                         template=BENCH / "native-ratelimit.envoy.yaml", ratelimit_port=rls_port)


def get(envoy, tenant, path="/orders"):
    req = urllib.request.Request(envoy.base + path, headers={"x-tenant": tenant})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def stat(envoy, name):
    return envoy.stats(STAT + name).get(STAT + name) or 0


def wrk(envoy, tenant, seconds):
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is required (scripts/setup.sh installs it)")
    out = subprocess.run([binary, "-t1", "-c8", f"-d{seconds}s", "-H", f"x-tenant: {tenant}", f"{envoy.base}/orders"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return total, total - (int(m.group(1)) if m else 0), out


class TwoReplicasTest(unittest.TestCase):
    """Two Envoy processes, one service, one Redis: the limit holds across both."""

    limit = 600

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.service = Service(cls.redis.port, cls.limit)
        cls.replicas = []
        try:
            for _ in range(2):
                cls.replicas.append(portcullis_envoy(plugin(timeout_ms=200), cls.service.grpc_port))
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for envoy in cls.replicas:
            envoy.stop()
        cls.service.kill()
        cls.redis.kill()

    def test_wrk_against_both_replicas_admits_the_global_limit_exactly(self):
        time.sleep(1)  # counters reach Envoy's stats on the workers' next tick (250 ms)
        hits_before = self.service.counters()["admitted_hits"].get(LIMIT, 0)
        ok_before = [stat(envoy, "ok") for envoy in self.replicas]
        results = [None, None]

        def load(i):
            results[i] = wrk(self.replicas[i], "flood", 3)
        threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = sum(r[0] for r in results)
        admitted = sum(r[1] for r in results)
        self.assertGreater(total, 2 * self.limit, f"too little load: {results}")
        # The service reserves atomically in Redis within a fixed window: exact, not ±1 %.
        self.assertEqual(admitted, self.limit, results)
        self.assertGreater(min(r[1] for r in results), 0, "each replica admitted some")
        # The service saw every admitted hit; each replica counted its own answers (on the
        # next tick) and every request asked the service.
        self.assertEqual(self.service.counters()["admitted_hits"][LIMIT] - hits_before, self.limit)
        for envoy, before, (total_i, admitted_i, _) in zip(self.replicas, ok_before, results):
            self.assertTrue(envoyproc.eventually(lambda: stat(envoy, "ok") - before == admitted_i, timeout=5),
                            (stat(envoy, "ok"), before, admitted_i))
            self.assertTrue(envoyproc.eventually(lambda: stat(envoy, "over_limit") >= total_i - admitted_i, timeout=5),
                            (stat(envoy, "over_limit"), total_i - admitted_i))
            self.assertEqual(stat(envoy, "error") + stat(envoy, "timeout"), 0)
        # Both replicas now refuse, with the service's figures.
        for envoy in self.replicas:
            status, headers, body = get(envoy, "flood")
            self.assertEqual(status, 429, body)
            self.assertEqual(json.loads(body)["rule"], LIMIT)
            self.assertEqual(headers["ratelimit-policy"], f'"{LIMIT}";q={self.limit};w=60')
            self.assertRegex(headers["ratelimit"], rf'^"{LIMIT}";r=0;t=\d+$')
            self.assertGreaterEqual(int(headers["retry-after"]), 1)

    def test_remaining_counts_down_across_replicas(self):
        remaining = []
        for i in range(4):
            status, headers, _ = get(self.replicas[i % 2], "fresh")
            self.assertEqual(status, 200)
            remaining.append(int(re.search(r";r=(\d+);", headers["ratelimit"]).group(1)))
        self.assertEqual(remaining, [self.limit - 1, self.limit - 2, self.limit - 3, self.limit - 4])


class DifferentialTest(unittest.TestCase):
    """Envoy's native ratelimit filter and Portcullis, same service and descriptor."""

    limit = 40

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.service = Service(cls.redis.port, cls.limit)
        cls.envoys = []
        try:
            cls.envoys.append(NativeEnvoy(cls.service.grpc_port))
            cls.envoys.append(portcullis_envoy(plugin(timeout_ms=200), cls.service.grpc_port))
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for envoy in cls.envoys:
            envoy.stop()
        cls.service.kill()
        cls.redis.kill()

    def test_each_admits_the_same_count(self):
        native, portcullis = self.envoys
        statuses = {}
        for name, envoy in (("native", native), ("portcullis", portcullis)):
            statuses[name] = [get(envoy, f"own-{name}")[0] for _ in range(self.limit + 10)]
        self.assertEqual(statuses["native"], statuses["portcullis"])
        self.assertEqual(statuses["native"], [200] * self.limit + [429] * 10)

    def test_both_count_into_the_same_descriptor(self):
        native, portcullis = self.envoys
        admitted = {"native": 0, "portcullis": 0}
        for i in range(self.limit + 10):
            name, envoy = (("native", native), ("portcullis", portcullis))[i % 2]
            if get(envoy, "shared")[0] == 200:
                admitted[name] += 1
        # The service saw one descriptor, {tenant: shared}, from both filters.
        self.assertEqual(admitted["native"] + admitted["portcullis"], self.limit, admitted)
        self.assertEqual(admitted["native"], admitted["portcullis"], admitted)


class FaultsTest(unittest.TestCase):
    """The service and Redis fail under a running Envoy (one worker, so the breaker's count of
    consecutive failures is the test's)."""

    def setUp(self):
        self.redis = Redis()
        self.service = Service(self.redis.port, 1000, start=False)
        self.envoys = []

    def tearDown(self):
        for envoy in self.envoys:
            logs = envoy.log_text()
            alive = envoy.alive()
            envoy.stop()
            self.assertTrue(alive, "Envoy exited")
            self.assertNotIn("panicked", logs)
            self.assertNotIn("wasm trap", logs.lower())
        self.service.kill()
        self.redis.kill()

    def envoy(self, **kwargs):
        envoy = portcullis_envoy(plugin(**kwargs), self.service.grpc_port, concurrency=1)
        self.envoys.append(envoy)
        return envoy

    def statuses(self, envoy, n, tenant="t"):
        return [get(envoy, tenant)[0] for _ in range(n)]

    def test_service_not_started_each_failure_mode(self):
        deny = self.envoy(failure_mode="deny")
        allow = self.envoy(failure_mode="allow")
        fallback = self.envoy(failure_mode="local_fallback", fraction=0.1)
        status, _, body = get(deny, "t")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["error"], "ratelimit_unavailable")
        self.assertEqual(self.statuses(allow, 5), [200] * 5)
        # 10 % of 100 per minute: 10 admitted by this proxy's own bucket, then 429.
        self.assertEqual(self.statuses(fallback, 15), [200] * 10 + [429] * 5)
        self.assertTrue(envoyproc.eventually(lambda: stat(fallback, "fallback_admitted") == 10, timeout=5))
        self.assertTrue(envoyproc.eventually(lambda: stat(allow, "fail_open") == 5, timeout=5))

    def test_breaker_opens_on_a_dead_service_and_closes_when_it_returns(self):
        envoy = self.envoy(failure_mode="deny", breaker=(3, 500))
        self.assertEqual(self.statuses(envoy, 10), [503] * 10)
        # Three failures opened the breaker; the other seven never waited for the service.
        self.assertTrue(envoyproc.eventually(lambda: stat(envoy, "breaker_open") == 7, timeout=5),
                        envoy.stats(STAT))
        self.assertEqual(stat(envoy, "error"), 3)
        self.assertEqual(envoy.log_text().count("breaker open after 3 consecutive failures"), 1)
        self.service.start()
        time.sleep(0.6)
        self.assertTrue(envoyproc.eventually(lambda: get(envoy, "t")[0] == 200, timeout=5))
        self.assertTrue(envoyproc.eventually(lambda: "breaker closed" in envoy.log_text(), timeout=5))
        # Killed mid-run: fail closed again; restarted: served again.
        self.service.kill()
        self.assertEqual(get(envoy, "t")[0], 503)
        self.service.start()
        time.sleep(0.6)
        self.assertTrue(envoyproc.eventually(lambda: get(envoy, "t")[0] == 200, timeout=5))

    def test_redis_killed_fails_by_the_failure_mode_and_recovers(self):
        self.service.start()
        envoy = self.envoy(failure_mode="allow", breaker=(1000, 500))
        self.assertEqual(get(envoy, "t")[0], 200)
        self.redis.kill()
        self.assertEqual(self.statuses(envoy, 3), [200] * 3)
        self.assertTrue(envoyproc.eventually(lambda: stat(envoy, "fail_open") == 3, timeout=5),
                        envoy.stats(STAT))
        # The service fails the calls (gRPC UNAVAILABLE) once its Redis connection gives up.
        self.assertTrue(envoyproc.eventually(lambda: self.service.counters()["error"] >= 1, timeout=10))
        self.redis.start()
        # Limitador's Redis connection reconnects; the service counts again.
        self.assertTrue(envoyproc.eventually(
            lambda: get(envoy, "t")[0] == 200 and self.service.counters()["ok"] >= 2, timeout=15))

    def test_a_service_slower_than_the_timeout_and_garbage_replies(self):
        self.service.start()
        envoy = self.envoy(failure_mode="deny", timeout_ms=50, breaker=(1000, 500))
        self.assertEqual(get(envoy, "t")[0], 200)
        self.service.fault(delay_ms=300)
        self.assertEqual(self.statuses(envoy, 2), [503] * 2)
        self.assertTrue(envoyproc.eventually(lambda: stat(envoy, "timeout") == 2, timeout=5), envoy.stats(STAT))
        self.service.fault(delay_ms=0, garbage=1)
        self.assertEqual(self.statuses(envoy, 2), [503] * 2)
        self.assertTrue(envoyproc.eventually(lambda: stat(envoy, "error") == 2, timeout=5), envoy.stats(STAT))
        self.service.fault(garbage=0)
        self.assertEqual(get(envoy, "t")[0], 200)

    def test_shadow_limits_never_refuse(self):
        envoy = self.envoy(failure_mode="deny", mode="shadow")
        self.assertEqual(self.statuses(envoy, 3), [200] * 3)


if __name__ == "__main__":
    unittest.main()
