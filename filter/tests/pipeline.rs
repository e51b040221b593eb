//! The whole decision pipeline, natively: extract → authenticate → authorize → rate-limit.

use portcullis_filter::config::Config;
use portcullis_filter::decision::{Decision, HeaderEdit, Outcome};
use portcullis_filter::global::GlobalState;
use portcullis_filter::jwt::RemoteKeys;
use portcullis_filter::pipeline::{decide, render_deny, Env};
use portcullis_filter::ports::memory::{MemoryCounters, MemoryLog, MemoryStore};
use portcullis_filter::ports::{LogLevel, NoHostCrypto};
use portcullis_filter::ratelimit::LocalTokens;
use portcullis_filter::request::RequestView;
use serde_json::json;
use std::time::{Duration, UNIX_EPOCH};

const TOKEN: &str = include_str!("../../benches/fixtures/alice-rs256.jwt");

fn config(extra: serde_json::Value) -> Config {
    let jwks: serde_json::Value =
        serde_json::from_str(include_str!("../../policies/keys/jwks.json")).unwrap();
    let mut base = json!({
        "jwt": {
            "providers": [{"name": "local", "issuer": "https://issuer.portcullis.local",
                           "audiences": ["portcullis-demo"], "jwks": {"inline": jwks},
                           "claim_to_headers": [{"claim": "sub", "header": "x-user"}]}],
            "requirements": [{"name": "public", "when": "request.url_path.startsWith('/public/')", "require": {"allow_missing": {}}}],
            "default_requirement": {"provider": "local"}
        },
        "policy": {"default_action": "deny", "rules": [
            {"name": "public", "allow": "request.url_path.startsWith('/public/')"},
            {"name": "admins", "when": "request.url_path.startsWith('/admin')", "allow": "'admin' in jwt.claims.groups"},
            {"name": "no-delete", "deny": "request.method == 'DELETE'"},
            {"name": "reads", "allow": "request.method == 'GET' && jwt.provider == 'local'"}
        ]},
        "rate_limits": {"limits": [{"name": "per-user", "key": "jwt.claims.sub", "requests": 1, "period_s": 60, "burst": 2, "on_key_error": "skip"}]},
        "responses": {"decision_header": "x-portcullis-decision", "deny_header": ["x-denied", "1"], "filter_state": true}
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    Config::from_json(base.to_string().as_bytes()).unwrap()
}

struct World {
    store: MemoryStore,
    remote: RemoteKeys,
    counters: MemoryCounters,
    log: MemoryLog,
}

impl World {
    fn new() -> World {
        World {
            store: MemoryStore::default(),
            remote: RemoteKeys::default(),
            counters: MemoryCounters::default(),
            log: MemoryLog::default(),
        }
    }

    fn decide(
        &mut self,
        config: &Config,
        cache: &mut portcullis_filter::jwt::TokenCache,
        request: &RequestView,
    ) -> Outcome {
        let mut env = Env {
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            store: &self.store,
            crypto: &NoHostCrypto,
            remote_keys: &mut self.remote,
            token_cache: cache,
            local_tokens: &mut LocalTokens::default(),
            counters: &mut self.counters,
            log: &mut self.log,
            global: &mut GlobalState::default(),
        };
        decide(config, request, &mut env)
    }
}

fn bearer() -> String {
    format!("Bearer {}", TOKEN.trim())
}

fn deny_status(outcome: &Outcome) -> Option<u16> {
    match outcome {
        Outcome::Decided(Decision::Deny(d)) => Some(d.status),
        _ => None,
    }
}

#[test]
fn a_valid_token_is_allowed_with_claim_headers_and_the_token_stripped() {
    let config = config(json!({}));
    let mut world = World::new();
    let mut cache = config.authenticator.new_token_cache();
    let auth = bearer();
    let out = world.decide(
        &config,
        &mut cache,
        &RequestView::new("GET", "/api/x", &[("authorization", &auth)]),
    );
    let Outcome::Decided(Decision::Allow {
        rule,
        request_headers,
        filter_state,
        ..
    }) = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(rule.as_deref(), Some("reads"));
    assert!(filter_state.contains(&("portcullis.rule", "reads".into())));
    // The subject is personal data: omitted unless `decision_log.subject` says otherwise.
    assert!(!filter_state.iter().any(|(k, _)| *k == "portcullis.jwt_sub"));
    assert!(filter_state.contains(&("portcullis.jwt_provider", "local".into())));
    assert!(request_headers.contains(&HeaderEdit::Set("x-user".into(), "alice".into())));
    assert!(request_headers.contains(&HeaderEdit::Remove("authorization".into())));
    assert!(request_headers.contains(&HeaderEdit::Set(
        "x-portcullis-decision".into(),
        "allow; rule=reads".into()
    )));
}

#[test]
fn each_stage_answers_with_its_own_status() {
    let config = config(json!({}));
    let mut world = World::new();
    let mut cache = config.authenticator.new_token_cache();
    let auth = bearer();
    // authenticate: no token → 401
    let out = world.decide(&config, &mut cache, &RequestView::new("GET", "/api/x", &[]));
    assert_eq!(deny_status(&out), Some(401));
    // authorize: a deny rule → 403 naming it, with the configured header and a JSON body
    let out = world.decide(
        &config,
        &mut cache,
        &RequestView::new("DELETE", "/api/x", &[("authorization", &auth)]),
    );
    let Outcome::Decided(Decision::Deny(deny)) = &out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (deny.status, deny.rule.as_deref()),
        (403, Some("no-delete"))
    );
    let (status, headers, body) = render_deny(&config, deny);
    assert_eq!(status, 403);
    assert!(headers.contains(&("x-denied".into(), "1".into())));
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["rule"], "no-delete");
    assert!(!body.to_string().contains(TOKEN.trim()));
    // rate-limit: burst 2 for alice, the third is 429; a denied request took no token
    let get = RequestView::new("GET", "/api/x", &[("authorization", &auth)]);
    for _ in 0..2 {
        assert!(matches!(
            world.decide(&config, &mut cache, &get),
            Outcome::Decided(Decision::Allow { .. })
        ));
    }
    assert_eq!(
        deny_status(&world.decide(&config, &mut cache, &get)),
        Some(429)
    );
    // public: no token needed, no rate-limit key (skipped), allowed by rule
    let out = world.decide(
        &config,
        &mut cache,
        &RequestView::new("GET", "/public/a", &[]),
    );
    assert!(
        matches!(out, Outcome::Decided(Decision::Allow { rule: Some(ref r), .. }) if r == "public")
    );
}

#[test]
fn shadow_policy_logs_and_counts_what_it_would_deny_but_allows() {
    let config = config(
        json!({"policy": {"mode": "shadow", "default_action": "deny", "rules": [
            {"name": "no-delete", "deny": "request.method == 'DELETE'"},
            {"name": "claims", "allow": "jwt.claims.nope == 1"}
        ]}}),
    );
    let mut world = World::new();
    let mut cache = config.authenticator.new_token_cache();
    let auth = bearer();
    let out = world.decide(
        &config,
        &mut cache,
        &RequestView::new("DELETE", "/api/x", &[("authorization", &auth)]),
    );
    assert!(
        matches!(out, Outcome::Decided(Decision::Allow { .. })),
        "{out:?}"
    );
    assert_eq!(
        world.counters.get("portcullis_policy_shadow_denials_total"),
        1
    );
    assert!(world
        .log
        .lines
        .iter()
        .any(|(l, m)| *l == LogLevel::Info
            && m.contains("shadow policy would deny (rule no-delete)")));
    // An evaluation error (missing claim) is logged with the rule name, not the claims.
    let out = world.decide(
        &config,
        &mut cache,
        &RequestView::new("GET", "/api/x", &[("authorization", &auth)]),
    );
    assert!(matches!(out, Outcome::Decided(Decision::Allow { .. })));
    assert!(world
        .log
        .lines
        .iter()
        .any(|(_, m)| m.contains("rule `claims`: evaluation error")));
    assert!(world
        .log
        .lines
        .iter()
        .all(|(_, m)| !m.contains("alice") && !m.contains(TOKEN.trim())));
}

#[test]
fn tokens_from_query_parameters_and_cookies_are_stripped_too() {
    let jwks: serde_json::Value =
        serde_json::from_str(include_str!("../../policies/keys/jwks.json")).unwrap();
    let config = Config::from_json(
        json!({
            "jwt": {"providers": [{"name": "local", "issuer": "https://issuer.portcullis.local",
                "audiences": ["portcullis-demo"], "jwks": {"inline": jwks},
                "from_headers": [], "from_params": ["access_token"], "from_cookies": ["session"]}]},
            "policy": {"default_action": "allow"}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let mut world = World::new();
    let mut cache = config.authenticator.new_token_cache();
    let token = TOKEN.trim();

    let path = format!("/api/x?a=1&access_token={token}&b=2");
    let out = world.decide(&config, &mut cache, &RequestView::new("GET", &path, &[]));
    let Outcome::Decided(Decision::Allow {
        request_headers, ..
    }) = out
    else {
        panic!("{out:?}")
    };
    assert!(request_headers.contains(&HeaderEdit::Set(":path".into(), "/api/x?a=1&b=2".into())));

    let cookie = format!("theme=dark; session={token}; lang=en");
    let out = world.decide(
        &config,
        &mut cache,
        &RequestView::new("GET", "/api/x", &[("cookie", &cookie)]),
    );
    let Outcome::Decided(Decision::Allow {
        request_headers, ..
    }) = out
    else {
        panic!("{out:?}")
    };
    assert!(request_headers.contains(&HeaderEdit::Set(
        "cookie".into(),
        "theme=dark; lang=en".into()
    )));
}

#[test]
fn the_subject_reaches_the_filter_state_only_as_configured() {
    let subject_of = |decision_log: serde_json::Value| {
        let config = config(json!({"decision_log": decision_log}));
        let mut world = World::new();
        let mut cache = config.authenticator.new_token_cache();
        let auth = bearer();
        let allowed = world.decide(
            &config,
            &mut cache,
            &RequestView::new("GET", "/api/x", &[("authorization", &auth)]),
        );
        let denied = world.decide(
            &config,
            &mut cache,
            &RequestView::new("DELETE", "/api/x", &[("authorization", &auth)]),
        );
        let Outcome::Decided(Decision::Allow { filter_state, .. }) = allowed else {
            panic!("{allowed:?}")
        };
        let Outcome::Decided(Decision::Deny(deny)) = denied else {
            panic!("{denied:?}")
        };
        let sub = |facts: &[(&str, String)]| {
            facts
                .iter()
                .find(|(k, _)| *k == "portcullis.jwt_sub")
                .map(|(_, v)| v.clone())
        };
        let allowed_sub = sub(&filter_state);
        assert_eq!(
            allowed_sub,
            sub(&deny.filter_state()),
            "allow and deny agree"
        );
        allowed_sub
    };
    assert_eq!(subject_of(json!({})), None);
    assert_eq!(
        subject_of(json!({"subject": "clear"})),
        Some("alice".into())
    );
    let key = "k".repeat(32);
    let pseudonym = subject_of(json!({"subject": "hmac", "subject_hmac_key": key})).unwrap();
    assert_eq!(pseudonym.len(), 64);
    assert!(!pseudonym.contains("alice"));
}
