//! Native benchmarks of the decision core: the same configurations as the Envoy load script.
//! (Through-the-wasm numbers: `portcullis bench`, see docs/harness.md.)

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_benches::{compile, full_config, ten_rules_without_jwt};
use portcullis_filter::decision::Outcome;
use portcullis_filter::jwt::{RemoteKeys, TokenCache};
use portcullis_filter::pipeline::{decide, Env};
use portcullis_filter::ports::memory::{MemoryCounters, MemoryStore};
use portcullis_filter::ports::{NoHostCrypto, NoLog};
use portcullis_filter::request::RequestView;
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn jwks() -> serde_json::Value {
    let text = include_str!("../../policies/keys/jwks.json");
    serde_json::from_str(text).unwrap_or_default()
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn request(token: Option<&str>) -> RequestView {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("user-agent", "wrk"),
        ("x-tenant", "acme"),
        ("x-client-id", "load"),
    ];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    RequestView::new("GET", "/api/orders?page=2", &headers)
}

fn bench(c: &mut Criterion) {
    let token = include_str!("../fixtures/alice-rs256.jwt").trim();
    let store = MemoryStore::default();
    let remote = RemoteKeys::default();

    let full = full_config(&jwks());
    let mut cache = full.authenticator.new_token_cache();
    let mut counters = MemoryCounters::default();
    let req = request(Some(token));
    let mut run = |config, cache: &mut TokenCache, req: &RequestView| {
        let mut env = Env {
            now: now(),
            store: &store,
            crypto: &NoHostCrypto,
            remote_keys: &remote,
            token_cache: cache,
            counters: &mut counters,
            log: &mut NoLog,
        };
        decide(config, req, &mut env)
    };
    let first = run(&full, &mut cache, &req);
    assert!(
        matches!(
            first,
            Outcome::Decided(portcullis_filter::decision::Decision::Allow { .. })
        ),
        "{first:?}"
    );
    c.bench_function("decide: cached RS256 token + 10 rules + 1 limit", |b| {
        b.iter(|| black_box(run(&full, &mut cache, black_box(&req))))
    });

    let policy_only =
        compile(&json!({"policy": {"default_action": "deny", "rules": ten_rules_without_jwt()}}));
    let anon = request(None);
    c.bench_function("decide: 10 rules, no token", |b| {
        b.iter(|| black_box(run(&policy_only, &mut cache, black_box(&anon))))
    });

    let limit_only = compile(&json!({
        "policy": {"default_action": "allow"},
        "rate_limits": {"limits": [{"name": "per-client", "key": "request.headers['x-client-id']", "requests": 1000000000u64, "period_s": 1}]}
    }));
    c.bench_function("decide: one rate limit keyed by a header", |b| {
        b.iter(|| black_box(run(&limit_only, &mut cache, black_box(&anon))))
    });

    let mut uncached = TokenCache::default();
    c.bench_function(
        "decide: new RS256 token each time (pure Rust verify) + 10 rules",
        |b| {
            b.iter(|| {
                uncached = full.authenticator.new_token_cache();
                black_box(run(&full, &mut uncached, black_box(&req)))
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
