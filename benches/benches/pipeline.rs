//! Native benchmarks of the decision core: the whole decision (`decide: …`, the same
//! configurations as the Envoy load script) and each stage on its own — token extraction,
//! signature verification per algorithm (pure Rust, keys parsed), a verified-token cache hit,
//! CEL policy evaluation (1 and 10 rules) and one rate-limit check.
//! (Through-the-wasm numbers: `--bench harness`, or `portcullis bench`, see docs/harness.md.)
//!
//! `cargo bench -p portcullis-benches --bench pipeline [-- FILTER]`

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_benches::{compile, full_config, ten_rules, ten_rules_without_jwt};
use portcullis_filter::decision::Outcome;
use portcullis_filter::expr::Activation;
use portcullis_filter::global::GlobalState;
use portcullis_filter::jwt::cache::CacheConfig;
use portcullis_filter::jwt::jws::{parse_compact, verify_signature};
use portcullis_filter::jwt::keys::{parse_jwk, Jwk};
use portcullis_filter::jwt::{
    extract, AuthnEnv, AuthnOutcome, Extracted, RemoteKeys, TokenCache, TokenLocation, TokenSource,
};
use portcullis_filter::pipeline::{decide, Env};
use portcullis_filter::policy::Verdict;
use portcullis_filter::ports::memory::{MemoryCounters, MemoryStore};
use portcullis_filter::ports::{NoHostCrypto, NoLog};
use portcullis_filter::ratelimit::{LocalTokens, RateVerdict};
use portcullis_filter::request::RequestView;
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;
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
    let mut remote = RemoteKeys::default();

    let full = full_config(&jwks());
    let mut cache = full.authenticator.new_token_cache();
    let mut counters = MemoryCounters::default();
    let req = request(Some(token));
    let mut run = |config, cache: &mut TokenCache, req: &RequestView| {
        let mut env = Env {
            now: now(),
            store: &store,
            crypto: &NoHostCrypto,
            remote_keys: &mut remote,
            token_cache: cache,
            local_tokens: &mut LocalTokens::default(),
            counters: &mut counters,
            log: &mut NoLog,
            global: &mut GlobalState::default(),
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

/// The benchmark-only keys of `benches/fixtures/bench-keys.jwks.json` (PS256, ES384, EdDSA,
/// HS256), next to the demo keys (RS256, ES256).
fn bench_jwks() -> serde_json::Value {
    let text = include_str!("../fixtures/bench-keys.jwks.json");
    serde_json::from_str(text).unwrap_or_default()
}

/// The key of `jwks` with `kid`, parsed once as the filter does at configure time.
fn key(jwks: &serde_json::Value, kid: &str) -> Jwk {
    let value = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .unwrap_or_else(|| panic!("no key {kid}"));
    match parse_jwk(value) {
        Ok(Some(jwk)) => jwk,
        other => panic!("key {kid} unusable: {other:?}"),
    }
}

/// Each stage of the pipeline on its own, through the filter's public API.
fn stages(c: &mut Criterion) {
    let token = include_str!("../fixtures/alice-rs256.jwt").trim();
    let req = request(Some(token));
    let mut counters = MemoryCounters::default();

    // Extraction: the default source (`Authorization: Bearer …`), the header last of seven.
    let sources = [TokenSource::Header {
        name: "authorization".into(),
        prefix: Some("Bearer ".into()),
    }];
    assert_eq!(
        extract(&sources, &req),
        Extracted::One(token.into(), TokenLocation::Header("authorization".into()))
    );
    c.bench_function("extract: bearer token from the Authorization header", |b| {
        b.iter(|| black_box(extract(black_box(&sources), black_box(&req))))
    });

    // Signature verification, pure Rust (no host crypto), keys already parsed: the signing
    // input and the signature are decoded once, outside the loop.
    let demo = jwks();
    let bench_keys = bench_jwks();
    let cases = [
        (
            "RS256",
            &demo,
            "demo-rsa-1",
            include_str!("../fixtures/alice-rs256.jwt"),
        ),
        (
            "PS256",
            &bench_keys,
            "bench-ps256",
            include_str!("../fixtures/alice-ps256.jwt"),
        ),
        (
            "ES256",
            &demo,
            "demo-ec-1",
            include_str!("../fixtures/alice-es256.jwt"),
        ),
        (
            "ES384",
            &bench_keys,
            "bench-es384",
            include_str!("../fixtures/alice-es384.jwt"),
        ),
        (
            "EdDSA",
            &bench_keys,
            "bench-eddsa",
            include_str!("../fixtures/alice-eddsa.jwt"),
        ),
        (
            "HS256",
            &bench_keys,
            "bench-hs256",
            include_str!("../fixtures/alice-hs256.jwt"),
        ),
    ];
    for (name, set, kid, text) in cases {
        let jws = match parse_compact(text.trim(), 8192, 16) {
            Ok(jws) => jws,
            Err(e) => panic!("{name} fixture: {e:?}"),
        };
        assert_eq!(jws.alg.name(), name);
        let key = key(set, kid);
        let message = jws.signing_input.as_bytes();
        assert!(
            verify_signature(jws.alg, &key, message, &jws.signature, &NoHostCrypto),
            "{name} fixture does not verify"
        );
        c.bench_function(&format!("verify: {name} (pure Rust)"), |b| {
            b.iter(|| {
                black_box(verify_signature(
                    jws.alg,
                    &key,
                    black_box(message),
                    black_box(&jws.signature),
                    &NoHostCrypto,
                ))
            })
        });
    }

    // The verified token, as the pipeline gets it (its claims feed the policy benches).
    let full = full_config(&jwks());
    let mut remote = RemoteKeys::default();
    let mut token_cache = full.authenticator.new_token_cache();
    let mut authenticate = |cache: &mut TokenCache, counters: &mut MemoryCounters| {
        let mut env = AuthnEnv {
            now: now(),
            crypto: &NoHostCrypto,
            remote_keys: &mut remote,
            cache,
            counters,
        };
        full.authenticator
            .authenticate(&Activation::new(black_box(&req)), &mut env)
    };
    let verified = match authenticate(&mut token_cache, &mut counters) {
        AuthnOutcome::Pass {
            token: Some(token), ..
        } => token,
        other => panic!("{other:?}"),
    };

    // Cache hit alone: the entry's hash (provider scope + token), the lookup, the comparison.
    let mut cache = TokenCache::new(CacheConfig::default());
    let now_s = 1_800_000_000;
    cache.insert(
        "local#1",
        token,
        Arc::clone(&verified),
        4_102_444_800,
        0,
        token.len() * 4 + 256,
        now_s,
    );
    assert!(cache.get("local#1", token, now_s, 0).is_some());
    c.bench_function("jwt cache: hit (hash + lookup + compare)", |b| {
        b.iter(|| black_box(cache.get("local#1", black_box(token), now_s, 0)))
    });

    // The whole authentication stage on a cached token: requirement, extraction, cache hit,
    // header edits.
    c.bench_function(
        "authenticate: cached RS256 token (extract + cache hit)",
        |b| b.iter(|| black_box(authenticate(&mut token_cache, &mut counters))),
    );

    // Policy evaluation over the request and the verified token's claims, the activation
    // built per request as in the pipeline (its lazy header map included). One rule: the rule
    // that decides among the ten, `allow-groups` (`jwt.claims.groups.exists(…)`); ten:
    // `ten_rules()` (five deny rules and three allow rules before it, all false).
    let jwt = Some(&verified.attributes);
    let allow_groups = ten_rules()
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["name"] == "allow-groups").cloned())
        .unwrap_or_default();
    let policies = [
        (
            "policy: 1 rule",
            compile(&json!({"policy": {"default_action": "deny", "rules": [allow_groups]}})),
            "allow-groups",
        ),
        (
            "policy: 10 rules",
            compile(&json!({"policy": {"default_action": "deny", "rules": ten_rules()}})),
            "allow-groups",
        ),
    ];
    for (name, config, deciding) in &policies {
        let verdict = config.policy.evaluate(
            &Activation::new(&req).with_jwt(jwt),
            &mut counters,
            &mut NoLog,
        );
        assert_eq!(
            verdict,
            Verdict::Allow {
                rule: Some((*deciding).into())
            }
        );
        c.bench_function(name, |b| {
            b.iter(|| {
                let activation = Activation::new(black_box(&req)).with_jwt(jwt);
                black_box(
                    config
                        .policy
                        .evaluate(&activation, &mut counters, &mut NoLog),
                )
            })
        });
    }

    // One rate-limit check: a limit keyed by a header, bucket in the in-memory shared store;
    // every request a shared compare-and-swap (`batch: 1`), then with the default batch.
    for (label, batch) in [("batch 1", Some(1u32)), ("default batch", None)] {
        let store = MemoryStore::default();
        let mut local = LocalTokens::default();
        let mut limit_json = json!({"name": "per-client", "key": "request.headers['x-client-id']", "requests": 1000000000u64, "period_s": 1});
        if let Some(batch) = batch {
            limit_json["batch"] = json!(batch);
        }
        let limit = compile(&json!({"rate_limits": {"limits": [limit_json]}}));
        let mut check = |counters: &mut MemoryCounters| {
            let activation = Activation::new(black_box(&req));
            limit
                .rate_limiter
                .check(&activation, &store, &mut local, now(), counters)
        };
        assert!(matches!(check(&mut counters), RateVerdict::Admit { .. }));
        c.bench_function(
            &format!("rate limit: one check, {label} (in-memory store)"),
            |b| b.iter(|| black_box(check(&mut counters))),
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench, stages
}
criterion_main!(benches);
