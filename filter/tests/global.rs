//! Global rate limits through the whole pipeline, with the rate-limit service scripted:
//! local limits first, the request the service sees, its answers, failure modes, the breaker.

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use portcullis_filter::config::Config;
use portcullis_filter::decision::{Decision, GlobalPending, HeaderEdit, Outcome};
use portcullis_filter::global::{GlobalState, Reply};
use portcullis_filter::jwt::{RemoteKeys, TokenCache};
use portcullis_filter::pipeline::{decide, render_deny, resume, Env};
use portcullis_filter::ports::memory::{MemoryCounters, MemoryLog, MemoryStore};
use portcullis_filter::ports::NoHostCrypto;
use portcullis_filter::ratelimit::LocalTokens;
use portcullis_filter::request::RequestView;
use portcullis_filter::rls::{encode_response, Code, CurrentLimit, DescriptorStatus, Response};
use prost::Message;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn config(service: serde_json::Value, limits: serde_json::Value) -> Config {
    let json = json!({
        "policy": {"default_action": "allow"},
        "rate_limits": {"service": service, "limits": limits}
    });
    Config::from_json(json.to_string().as_bytes()).unwrap()
}

fn service(extra: serde_json::Value) -> serde_json::Value {
    let mut base = json!({"cluster": "ratelimit", "domain": "portcullis", "breaker": {"failures": 3, "open_ms": 1000}});
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    base
}

fn per_tenant() -> serde_json::Value {
    json!([{"name": "per-tenant", "scope": "global", "requests": 10, "period_s": 60,
            "descriptors": [{"key": "tenant", "value": "request.headers['x-tenant']"},
                            {"key": "path", "value": "request.url_path"}]}])
}

/// One proxy worker: its breaker and tokens persist across requests; the clock is set per call.
struct Worker {
    store: MemoryStore,
    remote: RemoteKeys,
    cache: TokenCache,
    local: LocalTokens,
    counters: MemoryCounters,
    log: MemoryLog,
    global: GlobalState,
    now: SystemTime,
}

impl Worker {
    fn new(config: &Config) -> Worker {
        Worker {
            store: MemoryStore::default(),
            remote: RemoteKeys::default(),
            cache: config.authenticator.new_token_cache(),
            local: LocalTokens::default(),
            counters: MemoryCounters::default(),
            log: MemoryLog::default(),
            global: GlobalState::default(),
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn advance_ms(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
    }

    fn env(&mut self) -> Env<'_> {
        Env {
            now: self.now,
            store: &self.store,
            crypto: &NoHostCrypto,
            remote_keys: &mut self.remote,
            token_cache: &mut self.cache,
            local_tokens: &mut self.local,
            counters: &mut self.counters,
            log: &mut self.log,
            global: &mut self.global,
        }
    }

    fn decide(&mut self, config: &Config, tenant: &str) -> Outcome {
        let request = RequestView::new("GET", "/api/orders", &[("x-tenant", tenant)]);
        decide(config, &request, &mut self.env())
    }

    fn resume(&mut self, config: &Config, pending: GlobalPending, reply: Reply<'_>) -> Decision {
        resume(config, pending, reply, &mut self.env())
    }

    /// Decides, and if the service is asked, answers with `reply`.
    fn request(&mut self, config: &Config, reply: Reply<'_>) -> (bool, Decision) {
        match self.decide(config, "acme") {
            Outcome::GlobalPending(pending) => (true, self.resume(config, *pending, reply)),
            Outcome::Decided(decision) => (false, decision),
            other => panic!("{other:?}"),
        }
    }

    fn count(&self, name: &str) -> i64 {
        self.counters.get(name)
    }
}

fn pending(outcome: Outcome) -> GlobalPending {
    match outcome {
        Outcome::GlobalPending(pending) => *pending,
        other => panic!("expected a call to the service, got {other:?}"),
    }
}

fn status(decision: &Decision) -> u16 {
    match decision {
        Decision::Allow { .. } => 200,
        Decision::Deny(deny) => deny.status,
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn ok() -> Vec<u8> {
    encode_response(&Response {
        overall_code: Code::Ok,
        statuses: vec![DescriptorStatus {
            code: Code::Ok,
            current_limit: Some(CurrentLimit {
                name: "tenant".into(),
                requests_per_unit: 10,
                unit_s: 60,
            }),
            limit_remaining: 7,
            reset_s: Some(30),
        }],
        response_headers_to_add: vec![("x-rls".into(), "seen".into())],
        request_headers_to_add: vec![("x-rls-upstream".into(), "1".into())],
    })
}

fn over_limit() -> Vec<u8> {
    encode_response(&Response {
        overall_code: Code::OverLimit,
        statuses: vec![DescriptorStatus {
            code: Code::OverLimit,
            current_limit: Some(CurrentLimit {
                name: "tenant".into(),
                requests_per_unit: 10,
                unit_s: 60,
            }),
            limit_remaining: 0,
            reset_s: Some(42),
        }],
        response_headers_to_add: vec![("x-rls".into(), "over".into())],
        request_headers_to_add: vec![],
    })
}

#[test]
fn the_service_is_asked_with_the_limits_descriptors_in_envoys_encoding() {
    let config = config(
        service(json!({"timeout_ms": 25})),
        json!([{"name": "per-tenant", "scope": "global", "requests": 10, "period_s": 60,
                "descriptors": [{"key": "tenant", "value": "request.headers['x-tenant']"},
                                {"key": "path", "value": "request.url_path"}],
                "hits_addend": "int(request.headers['x-cost'])"}]),
    );
    let mut worker = Worker::new(&config);
    let request = RequestView::new(
        "GET",
        "/api/orders",
        &[("x-tenant", "acme"), ("x-cost", "5")],
    );
    let call = pending(decide(&config, &request, &mut worker.env())).call;
    assert_eq!(call.cluster, "ratelimit");
    assert_eq!(call.timeout_ms, 25);
    let sent = RateLimitRequest::decode(call.message.as_slice()).unwrap();
    assert_eq!(sent.domain, "portcullis");
    let [descriptor] = sent.descriptors.as_slice() else {
        panic!("{sent:?}")
    };
    let entries: Vec<(&str, &str)> = descriptor
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries, [("tenant", "acme"), ("path", "/api/orders")]);
    assert_eq!(descriptor.hits_addend.as_ref().map(|h| h.value), Some(5));
}

#[test]
fn a_request_refused_locally_never_calls_the_service() {
    let config = Config::from_json(
        json!({
            "policy": {"default_action": "allow"},
            "rate_limits": {"service": service(json!({})), "limits": [
                {"name": "local-first", "key": "request.headers['x-tenant']", "requests": 1, "period_s": 60, "burst": 2},
                {"name": "per-tenant", "scope": "global", "requests": 10, "period_s": 60,
                 "descriptors": [{"key": "tenant", "value": "request.headers['x-tenant']"}]}
            ]}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let mut worker = Worker::new(&config);
    let mut calls = 0;
    for _ in 0..10 {
        match worker.decide(&config, "acme") {
            Outcome::GlobalPending(p) => {
                calls += 1;
                let ok = ok();
                assert_eq!(
                    status(&worker.resume(&config, *p, Reply::Message(&ok))),
                    200
                );
            }
            Outcome::Decided(Decision::Deny(deny)) => {
                assert_eq!(deny.status, 429);
                assert_eq!(deny.rule.as_deref(), Some("local-first"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        calls, 2,
        "only the two locally admitted requests ask the service"
    );
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.ok"),
        2
    );
    assert_eq!(worker.count("portcullis_decisions_total.decision.allow"), 2);
}

#[test]
fn ok_applies_the_services_headers() {
    let config = config(service(json!({})), per_tenant());
    let mut worker = Worker::new(&config);
    let ok = ok();
    let (asked, decision) = worker.request(&config, Reply::Message(&ok));
    assert!(asked);
    let Decision::Allow {
        request_headers,
        response_headers,
        ..
    } = decision
    else {
        panic!("{decision:?}")
    };
    assert!(request_headers.contains(&HeaderEdit::Set("x-rls-upstream".into(), "1".into())));
    assert_eq!(header(&response_headers, "x-rls"), Some("seen"));
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.ok"),
        1
    );
    assert_eq!(worker.count("portcullis_decisions_total.decision.allow"), 1);
}

#[test]
fn ok_sends_ratelimit_headers_when_configured() {
    let json = json!({
        "policy": {"default_action": "allow"},
        "rate_limits": {"service": service(json!({})), "limits": per_tenant(), "headers_on_allow": true}
    });
    let config = Config::from_json(json.to_string().as_bytes()).unwrap();
    let mut worker = Worker::new(&config);
    let ok = ok();
    let (
        _,
        Decision::Allow {
            response_headers, ..
        },
    ) = worker.request(&config, Reply::Message(&ok))
    else {
        panic!()
    };
    assert_eq!(
        header(&response_headers, "ratelimit-policy"),
        Some("\"per-tenant\";q=10;w=60")
    );
    assert_eq!(
        header(&response_headers, "ratelimit"),
        Some("\"per-tenant\";r=7;t=30")
    );
}

#[test]
fn over_limit_is_a_429_with_the_services_figures() {
    let config = config(service(json!({})), per_tenant());
    let mut worker = Worker::new(&config);
    let over = over_limit();
    let (_, Decision::Deny(deny)) = worker.request(&config, Reply::Message(&over)) else {
        panic!()
    };
    assert_eq!(deny.status, 429);
    assert_eq!(deny.rule.as_deref(), Some("per-tenant"));
    assert_eq!(header(&deny.headers, "retry-after"), Some("42"));
    assert_eq!(
        header(&deny.headers, "ratelimit-policy"),
        Some("\"per-tenant\";q=10;w=60")
    );
    assert_eq!(
        header(&deny.headers, "ratelimit"),
        Some("\"per-tenant\";r=0;t=42")
    );
    assert_eq!(header(&deny.headers, "x-rls"), Some("over"));
    let (_, _, body) = render_deny(&config, &deny);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["rule"], "per-tenant");
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.over_limit"),
        1
    );
    assert_eq!(
        worker.count("portcullis_ratelimit_total.limit.per-tenant.result.limited"),
        1
    );
    assert_eq!(worker.count("portcullis_decisions_total.decision.allow"), 0);
}

#[test]
fn shadow_global_limits_count_but_never_refuse() {
    let limits = json!([{"name": "per-tenant", "scope": "global", "mode": "shadow", "requests": 10, "period_s": 60,
                         "descriptors": [{"key": "tenant", "value": "request.headers['x-tenant']"}]}]);
    let config = config(service(json!({})), limits);
    let mut worker = Worker::new(&config);
    let over = over_limit();
    assert_eq!(
        status(&worker.request(&config, Reply::Message(&over)).1),
        200
    );
    assert_eq!(
        worker.count("portcullis_ratelimit_total.limit.per-tenant.result.shadow_limited"),
        1
    );
    // A failing service does not refuse for a shadow limit either, whatever the failure mode.
    assert_eq!(
        status(&worker.request(&config, Reply::Failed { timeout: false }).1),
        200
    );
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.error"),
        1
    );
}

#[test]
fn failure_mode_deny_is_a_503() {
    let config = config(service(json!({})), per_tenant());
    let mut worker = Worker::new(&config);
    let (_, Decision::Deny(deny)) = worker.request(&config, Reply::Failed { timeout: true }) else {
        panic!()
    };
    assert_eq!(deny.status, 503);
    assert_eq!(deny.error, "ratelimit_unavailable");
    assert_eq!(header(&deny.headers, "retry-after"), Some("1"));
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.timeout"),
        1
    );
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.fail_closed"),
        1
    );
}

#[test]
fn garbage_and_unknown_codes_are_errors() {
    let config = config(service(json!({"failure_mode": "allow"})), per_tenant());
    let mut worker = Worker::new(&config);
    for reply in [
        &b"\xff\xff\xff"[..],
        b"\x12\x05ab",
        &encode_response(&Response::default()),
    ] {
        assert_eq!(
            status(&worker.request(&config, Reply::Message(reply)).1),
            200
        );
    }
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.error"),
        3
    );
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.fail_open"),
        3
    );
}

#[test]
fn local_fallback_admits_the_configured_fraction() {
    let config = config(
        service(
            json!({"failure_mode": "local_fallback", "fallback_fraction": 0.3, "breaker": {"failures": 1000, "open_ms": 1000}}),
        ),
        per_tenant(),
    );
    let mut worker = Worker::new(&config);
    let admitted = (0..10)
        .filter(|_| status(&worker.request(&config, Reply::Failed { timeout: false }).1) == 200)
        .count();
    assert_eq!(admitted, 3, "30 % of a burst of 10");
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.fallback_admitted"),
        3
    );
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.fallback_limited"),
        7
    );
    // The fallback refusal is a 429 naming the limit.
    let (_, Decision::Deny(deny)) = worker.request(&config, Reply::Failed { timeout: false })
    else {
        panic!()
    };
    assert_eq!(
        (deny.status, deny.rule.as_deref()),
        (429, Some("per-tenant"))
    );
}

#[test]
fn the_breaker_opens_skips_the_service_probes_and_closes() {
    let config = config(service(json!({"failure_mode": "deny"})), per_tenant());
    let mut worker = Worker::new(&config);
    let failed = Reply::Failed { timeout: false };
    for _ in 0..3 {
        assert_eq!(worker.request(&config, failed), (true, worker_deny()));
    }
    assert!(worker.global.breaker_open());
    let opened: Vec<&String> = worker
        .log
        .lines
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l.contains("breaker open"))
        .collect();
    assert_eq!(opened.len(), 1, "{:?}", worker.log.lines);
    // Open: answered at once, no call, no timeout paid.
    for _ in 0..50 {
        let (asked, decision) = worker.request(&config, failed);
        assert!(!asked);
        assert_eq!(status(&decision), 503);
    }
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.breaker_open"),
        50
    );
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.error"),
        3
    );
    // After open_ms one request probes; the others still skip the service meanwhile.
    worker.advance_ms(1001);
    let probe = pending(worker.decide(&config, "acme"));
    assert!(matches!(
        worker.decide(&config, "acme"),
        Outcome::Decided(_)
    ));
    let ok = ok();
    assert_eq!(
        status(&worker.resume(&config, probe, Reply::Message(&ok))),
        200
    );
    assert!(!worker.global.breaker_open());
    assert!(matches!(
        worker.decide(&config, "acme"),
        Outcome::GlobalPending(_)
    ));
    let transitions: Vec<&String> = worker.log.lines.iter().map(|(_, l)| l).collect();
    assert_eq!(
        transitions.len(),
        3,
        "open, half-open, closed: {transitions:?}"
    );
}

#[test]
fn a_failed_probe_reopens_the_breaker() {
    let config = config(service(json!({})), per_tenant());
    let mut worker = Worker::new(&config);
    for _ in 0..3 {
        worker.request(&config, Reply::Failed { timeout: true });
    }
    worker.advance_ms(1001);
    let probe = pending(worker.decide(&config, "acme"));
    worker.resume(&config, probe, Reply::Failed { timeout: true });
    assert!(worker.global.breaker_open());
    assert!(matches!(
        worker.decide(&config, "acme"),
        Outcome::Decided(_)
    ));
    assert!(worker
        .log
        .lines
        .iter()
        .any(|(_, l)| l.contains("open again")));
    assert_eq!(
        worker.count("portcullis_global_ratelimit_total.result.timeout"),
        4
    );
}

fn worker_deny() -> Decision {
    let config = config(service(json!({})), per_tenant());
    let mut worker = Worker::new(&config);
    worker.request(&config, Reply::Failed { timeout: false }).1
}

#[test]
fn bad_configuration_names_the_field() {
    let error = |rate_limits: serde_json::Value| {
        let json = json!({"rate_limits": rate_limits});
        Config::from_json(json.to_string().as_bytes())
            .unwrap_err()
            .to_string()
    };
    let global = json!({"name": "g", "scope": "global", "requests": 1, "period_s": 1,
                        "descriptors": [{"key": "k", "value": "'v'"}]});
    assert!(error(json!({"limits": [global.clone()]})).contains("rate_limits.limits[0].scope"));
    assert!(error(json!({"service": service(json!({"failure_mode": "local_fallback"})), "limits": [global.clone()]}))
        .contains("rate_limits.service.fallback_fraction"));
    assert!(error(
        json!({"service": service(json!({"timeout_ms": 0})), "limits": [global.clone()]})
    )
    .contains("rate_limits.service.timeout_ms"));
    assert!(error(json!({"service": service(json!({})), "limits": [
        {"name": "g", "scope": "global", "requests": 1, "period_s": 1, "key": "'x'",
         "descriptors": [{"key": "k", "value": "'v'"}]}]}))
    .contains("rate_limits.limits[0].key"));
    assert!(error(json!({"service": service(json!({})), "limits": [
        {"name": "g", "scope": "global", "requests": 1, "period_s": 1, "descriptors": []}]}))
    .contains("rate_limits.limits[0].descriptors"));
    assert!(error(json!({"service": service(json!({})), "limits": [
        {"name": "g", "scope": "global", "requests": 1, "period_s": 1,
         "descriptors": [{"key": "k", "value": "nope.x"}]}]}))
    .contains("rate_limits.limits[0].descriptors[0].value"));
    assert!(
        error(json!({"limits": [{"name": "l", "requests": 1, "period_s": 1}]}))
            .contains("rate_limits.limits[0].key")
    );
}

#[test]
fn a_service_without_global_limits_is_checked_and_unused() {
    let json = json!({"policy": {"default_action": "allow"},
                      "rate_limits": {"service": service(json!({})), "limits": [
        {"name": "l", "key": "'k'", "requests": 1, "period_s": 1}]}});
    let config = Config::from_json(json.to_string().as_bytes()).unwrap();
    let mut worker = Worker::new(&config);
    assert!(matches!(
        worker.decide(&config, "acme"),
        Outcome::Decided(Decision::Allow { .. })
    ));
    let json = json!({"rate_limits": {"service": service(json!({"domain": ""})), "limits": []}});
    let error = Config::from_json(json.to_string().as_bytes()).unwrap_err();
    assert!(error.to_string().contains("rate_limits.service.domain"));
}
