//! Unit tests of the authenticator: extraction, requirements, answers, cache, remote keys.

use super::*;
use crate::decision::Deny;
use crate::error::ConfigError;
use crate::expr::Activation;
use crate::ports::memory::MemoryCounters;
use crate::ports::NoHostCrypto;
use jws::b64url_encode;
use keys::{KeyPolicy, KeySet};
use serde_json::json;
use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.portcullis.local";

fn ed_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

fn ed_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url_encode(&ed_key().verifying_key().to_bytes())})
}

fn sign_ed(header: &Value, claims: &Value) -> String {
    use ed25519_dalek::Signer;
    let input = format!(
        "{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(claims.to_string().as_bytes())
    );
    let sig = ed_key().sign(input.as_bytes());
    format!("{input}.{}", b64url_encode(&sig.to_bytes()))
}

fn es_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap_or_else(|_| unreachable!())
}

fn es_jwk() -> Value {
    let point = es_key().verifying_key().to_sec1_point(false);
    let bytes = point.as_bytes();
    json!({"kty": "EC", "crv": "P-256", "kid": "es", "x": b64url_encode(&bytes[1..33]), "y": b64url_encode(&bytes[33..65])})
}

fn sign_es(claims: &Value) -> String {
    use p256::ecdsa::signature::Signer;
    let header = json!({"alg": "ES256", "kid": "es"});
    let input = format!(
        "{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(claims.to_string().as_bytes())
    );
    let sig: p256::ecdsa::Signature = es_key().sign(input.as_bytes());
    format!("{input}.{}", b64url_encode(&sig.to_bytes()))
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": "portcullis-demo", "sub": "user:alice", "org": {"team": "blue"},
           "https://example.com/roles": ["admin", "dev"], "exp": NOW + 600, "iat": NOW - 10})
}

fn token(claims: &Value) -> String {
    sign_ed(&json!({"alg": "EdDSA", "kid": "k1"}), claims)
}

fn base_config() -> Value {
    json!({
        "providers": [{
            "name": "local",
            "issuer": ISS,
            "audiences": ["portcullis-demo"],
            "jwks": {"inline": {"keys": [ed_jwk("k1"), es_jwk()]}},
            "required_claims": ["sub"],
            "forward_payload_header": "x-jwt-payload",
            "claim_to_headers": [
                {"claim": "sub", "header": "x-jwt-sub"},
                {"claim": "org.team", "header": "x-team"},
                {"claim": "[\"https://example.com/roles\"]", "header": "x-roles"}
            ]
        }]
    })
}

fn compile(config: Value) -> Result<Authenticator, ConfigError> {
    let parsed: JwtConfig =
        serde_json::from_value(config).map_err(|e| ConfigError::new("jwt", e.to_string()))?;
    Authenticator::compile(&parsed)
}

fn auth(config: Value) -> Authenticator {
    match compile(config) {
        Ok(a) => a,
        Err(e) => panic!("config: {e}"),
    }
}

struct World {
    cache: TokenCache,
    counters: MemoryCounters,
    remote: RemoteKeys,
    now: SystemTime,
}

impl World {
    fn new() -> World {
        World {
            cache: TokenCache::default(),
            counters: MemoryCounters::default(),
            remote: RemoteKeys::default(),
            now: UNIX_EPOCH + Duration::from_secs(NOW),
        }
    }

    fn run_with(
        &mut self,
        a: &Authenticator,
        request: &RequestView,
        crypto: &dyn HostCrypto,
    ) -> AuthnOutcome {
        let activation = Activation::new(request);
        let mut env = AuthnEnv {
            now: self.now,
            crypto,
            remote_keys: &mut self.remote,
            cache: &mut self.cache,
            counters: &mut self.counters,
        };
        a.authenticate(&activation, &mut env)
    }

    fn run(&mut self, a: &Authenticator, request: &RequestView) -> AuthnOutcome {
        self.run_with(a, request, &NoHostCrypto)
    }
}

fn bearer(token: &str) -> RequestView {
    RequestView::new(
        "GET",
        "/api",
        &[("authorization", &format!("Bearer {token}"))],
    )
}

fn deny(outcome: AuthnOutcome) -> Deny {
    match outcome {
        AuthnOutcome::Fail(refusal) => refusal.answer(),
        other => panic!("expected a deny, got {other:?}"),
    }
}

fn pass(outcome: AuthnOutcome) -> (Option<Arc<VerifiedToken>>, Vec<HeaderEdit>) {
    match outcome {
        AuthnOutcome::Pass {
            token,
            request_headers,
        } => (token, request_headers),
        other => panic!("expected a pass, got {other:?}"),
    }
}

#[test]
fn valid_token_passes_with_header_edits_and_is_cached() {
    let a = auth(base_config());
    let mut w = World::new();
    let t = token(&claims());
    let (tok, edits) = pass(w.run(&a, &bearer(&t)));
    let tok = tok.unwrap_or_else(|| unreachable!());
    assert_eq!(tok.provider, "local");
    assert_eq!(tok.exp, Some((NOW + 600) as i64));
    assert!(edits.contains(&HeaderEdit::Remove("x-jwt-sub".into())));
    assert!(edits.contains(&HeaderEdit::Remove("authorization".into())));
    assert!(edits.contains(&HeaderEdit::Set("x-jwt-sub".into(), "user:alice".into())));
    assert!(edits.contains(&HeaderEdit::Set("x-team".into(), "blue".into())));
    assert!(edits.contains(&HeaderEdit::Set("x-roles".into(), "admin,dev".into())));
    let payload = t.split('.').nth(1).unwrap_or_default().to_owned();
    assert!(edits.contains(&HeaderEdit::Set("x-jwt-payload".into(), payload)));
    // The strip of a client-supplied header comes before the set.
    let remove = edits
        .iter()
        .position(|e| *e == HeaderEdit::Remove("x-jwt-sub".into()));
    let set = edits
        .iter()
        .position(|e| matches!(e, HeaderEdit::Set(h, _) if h == "x-jwt-sub"));
    assert!(remove < set);
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.ok"),
        1
    );
    assert_eq!(
        w.counters
            .get("portcullis_jwt_cache_total.provider.local.result.miss"),
        1
    );
    let (again, _) = pass(w.run(&a, &bearer(&t)));
    assert!(again.is_some());
    assert_eq!(
        w.counters
            .get("portcullis_jwt_cache_total.provider.local.result.hit"),
        1
    );
    assert_eq!(w.cache.len(), 1);
    // Cached entries die with the token.
    w.now = UNIX_EPOCH + Duration::from_secs(NOW + 600 + 61);
    let d = deny(w.run(&a, &bearer(&t)));
    assert_eq!(d.reason, "token expired");
}

#[test]
fn forward_keeps_the_token_header() {
    let mut c = base_config();
    c["providers"][0]["forward"] = json!(true);
    let a = auth(c);
    let (_, edits) = pass(World::new().run(&a, &bearer(&token(&claims()))));
    assert!(!edits.contains(&HeaderEdit::Remove("authorization".into())));
}

#[test]
fn missing_and_invalid_answers() {
    let a = auth(base_config());
    let mut w = World::new();
    let d = deny(w.run(&a, &RequestView::new("GET", "/", &[])));
    assert_eq!((d.status, d.error), (401, "missing_token"));
    assert_eq!(
        d.headers,
        vec![(
            "www-authenticate".to_owned(),
            "Bearer realm=\"portcullis\"".to_owned()
        )]
    );
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.missing"),
        1
    );

    let cases: Vec<(Value, &str)> = vec![
        (json!({"exp": NOW - 100}), "expired"),
        (json!({"nbf": NOW + 1000}), "not_yet_valid"),
        (json!({"iss": "https://evil"}), "wrong_issuer"),
        (json!({"aud": ["other"]}), "wrong_audience"),
        // `null` is a wrong type for a registered claim, not an absent one.
        (json!({"sub": null}), "malformed"),
    ];
    for (patch, code) in cases {
        let mut c = claims();
        for (k, v) in patch.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        let t = token(&c);
        let d = deny(w.run(&a, &bearer(&t)));
        assert_eq!((d.status, d.error), (401, "invalid_token"), "{code}");
        let www = d
            .headers
            .first()
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert!(
            www.starts_with(
                "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\""
            ),
            "{www}"
        );
        assert!(!www.contains(&t) && !d.reason.contains(&t));
        assert_eq!(
            w.counters.get(&format!(
                "portcullis_jwt_total.provider.local.result.invalid.reason.{code}"
            )),
            1,
            "{code}"
        );
    }
    let mut no_sub = claims();
    no_sub.as_object_mut().map(|c| c.remove("sub"));
    let d = deny(w.run(&a, &bearer(&token(&no_sub))));
    assert_eq!(d.reason, "missing claim sub");
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.invalid.reason.missing_claim"),
        1
    );
    assert_eq!(w.cache.len(), 0, "failures are never cached");

    // Tampered signature.
    let t = token(&claims());
    let tampered = format!("{}A", t.get(..t.len() - 1).unwrap_or_default());
    let tampered = if tampered == t {
        format!("{}B", t.get(..t.len() - 1).unwrap_or_default())
    } else {
        tampered
    };
    let d = deny(w.run(&a, &bearer(&tampered)));
    assert_eq!(d.error, "invalid_token");
    // Unknown kid, alg none, garbage.
    let d = deny(w.run(
        &a,
        &bearer(&sign_ed(&json!({"alg": "EdDSA", "kid": "nope"}), &claims())),
    ));
    assert!(d.reason.contains("kid"), "{}", d.reason);
    let none = format!(
        "{}.{}.",
        b64url_encode(br#"{"alg":"none"}"#),
        b64url_encode(claims().to_string().as_bytes())
    );
    deny(w.run(&a, &bearer(&none)));
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.invalid.reason.alg_none"),
        1
    );
    deny(w.run(&a, &bearer("garbage")));
    // The second: `sub: null` above.
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.invalid.reason.malformed"),
        2
    );
    // Too large.
    let big = "a".repeat(9000);
    deny(w.run(&a, &bearer(&big)));
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.invalid.reason.too_large"),
        1
    );
}

#[test]
fn bearer_scheme_is_case_insensitive_and_other_locations_work() {
    let mut c = base_config();
    c["providers"][0]["from_params"] = json!(["access_token"]);
    c["providers"][0]["from_cookies"] = json!(["session"]);
    let a = auth(c);
    let t = token(&claims());
    let mut w = World::new();
    pass(w.run(
        &a,
        &RequestView::new("GET", "/", &[("Authorization", &format!("bEaReR   {t}"))]),
    ));
    pass(w.run(
        &a,
        &RequestView::new("GET", &format!("/x?a=1&access_token={t}"), &[]),
    ));
    let (tok, edits) = pass(w.run(
        &a,
        &RequestView::new("GET", "/", &[("cookie", &format!("a=b; session={t}"))]),
    ));
    assert!(tok.is_some());
    assert!(!edits.contains(&HeaderEdit::Remove("authorization".into())));
    // A different scheme is not a token.
    let d = deny(w.run(
        &a,
        &RequestView::new("GET", "/", &[("authorization", &format!("Basic {t}"))]),
    ));
    assert_eq!(d.error, "missing_token");
}

struct RecordingHost {
    answer: Option<bool>,
    calls: RefCell<Vec<(String, usize, usize)>>,
}

impl HostCrypto for RecordingHost {
    fn verify_signature(&self, hash: &str, key: &[u8], sig: &[u8], _: &[u8]) -> Option<bool> {
        self.calls
            .borrow_mut()
            .push((hash.to_owned(), key.len(), sig.len()));
        self.answer
    }
}

#[test]
fn a_disabled_cache_verifies_every_time_and_counts_no_cache_traffic() {
    let mut c = base_config();
    c["cache"] = json!({"max_entries": 0});
    let a = auth(c);
    let mut w = World::new();
    w.cache = a.new_token_cache();
    assert!(!w.cache.is_enabled());
    let t = sign_es(&claims());
    let host = RecordingHost {
        answer: Some(true),
        calls: RefCell::new(Vec::new()),
    };
    pass(w.run_with(&a, &bearer(&t), &host));
    pass(w.run_with(&a, &bearer(&t), &host));
    assert_eq!(host.calls.borrow().len(), 2, "verified twice");
    assert_eq!(w.cache.len(), 0);
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.ok"),
        2
    );
    assert_eq!(
        w.counters
            .get("portcullis_jwt_cache_total.provider.local.result.hit"),
        0
    );
    assert_eq!(
        w.counters
            .get("portcullis_jwt_cache_total.provider.local.result.miss"),
        0
    );
}

#[test]
fn es256_uses_the_host_then_falls_back() {
    let mut c = base_config();
    c["cache"] = json!({"max_entries": 0});
    let a = auth(c);
    let t = sign_es(&claims());
    let host = RecordingHost {
        answer: Some(false),
        calls: RefCell::new(Vec::new()),
    };
    let mut w = World::new();
    deny(w.run_with(&a, &bearer(&t), &host));
    {
        let calls = host.calls.borrow();
        let (hash, key_len, sig_len) = calls.first().cloned().unwrap_or_default();
        assert_eq!(hash, "sha256");
        assert_eq!(key_len, 91, "P-256 SubjectPublicKeyInfo");
        assert!((68..=72).contains(&sig_len), "DER signature, got {sig_len}");
    }
    let fallback = RecordingHost {
        answer: None,
        calls: RefCell::new(Vec::new()),
    };
    pass(w.run_with(&a, &bearer(&t), &fallback));
    assert_eq!(fallback.calls.borrow().len(), 1);
    // EdDSA never goes to the host.
    pass(w.run_with(&a, &bearer(&token(&claims())), &host));
    assert_eq!(host.calls.borrow().len(), 1);
}

#[test]
fn hmac_only_when_listed_with_an_oct_key() {
    let oct = json!({"keys": [{"kty": "oct", "k": b64url_encode(&[9u8; 32])}]});
    let mut c = base_config();
    c["providers"][0]["jwks"] = json!({"inline": oct});
    let e = compile(c.clone()).err().unwrap_or_else(|| unreachable!());
    assert_eq!(e.field, "jwt.providers[0].jwks.inline");
    c["providers"][0]["algorithms"] = json!(["HS256"]);
    let a = auth(c.clone());
    use hmac::{Hmac, KeyInit, Mac};
    let input = format!(
        "{}.{}",
        b64url_encode(br#"{"alg":"HS256"}"#),
        b64url_encode(claims().to_string().as_bytes())
    );
    let mut mac =
        Hmac::<rsa::sha2::Sha256>::new_from_slice(&[9u8; 32]).unwrap_or_else(|_| unreachable!());
    mac.update(input.as_bytes());
    let t = format!("{input}.{}", b64url_encode(&mac.finalize().into_bytes()));
    pass(World::new().run(&a, &bearer(&t)));
    // Asymmetric providers refuse HS tokens (algorithm confusion).
    let a = auth(base_config());
    let d = deny(World::new().run(&a, &bearer(&t)));
    assert_eq!(d.reason, "algorithm not allowed");
    // HS listed without an oct key.
    let mut listed = base_config();
    listed["providers"][0]["algorithms"] = json!(["EdDSA", "HS256"]);
    assert_eq!(
        compile(listed).err().map(|e| e.field).as_deref(),
        Some("jwt.providers[0].algorithms")
    );
    // A too-short secret.
    c["providers"][0]["jwks"] =
        json!({"inline": {"keys": [{"kty": "oct", "k": b64url_encode(&[9u8; 16])}]}});
    assert!(compile(c).is_err());
    // Inline JWKS as a JSON string.
    let mut c = base_config();
    c["providers"][0]["jwks"] = json!({"inline": json!({"keys": [ed_jwk("k1")]}).to_string()});
    pass(World::new().run(&auth(c), &bearer(&token(&claims()))));
}

#[test]
fn requirements() {
    let mut c = base_config();
    c["requirements"] = json!([
        {"name": "open", "when": "false", "require": {"none": {}}},
        {"name": "maybe", "when": "true", "require": {"allow_missing": {}}}
    ]);
    let a = auth(c.clone());
    let mut w = World::new();
    let spoofed = RequestView::new("GET", "/", &[("x-jwt-sub", "root")]);
    let (tok, edits) = pass(w.run(&a, &spoofed));
    assert!(tok.is_none());
    assert!(
        edits.contains(&HeaderEdit::Remove("x-jwt-sub".into())),
        "client copies are stripped"
    );
    let (tok, _) = pass(w.run(&a, &bearer(&token(&claims()))));
    assert!(tok.is_some());
    let mut bad = claims();
    bad["exp"] = json!(NOW - 1000);
    let d = deny(w.run(&a, &bearer(&token(&bad))));
    assert_eq!(d.rule.as_deref(), Some("maybe"));

    c["requirements"][1]["require"] = json!({"allow_missing_or_failed": {}});
    let a = auth(c.clone());
    let (tok, _) = pass(w.run(&a, &bearer(&token(&bad))));
    assert!(tok.is_none());

    c["requirements"][1]["require"] =
        json!({"any_of": [{"provider": "local"}, {"allow_missing": {}}]});
    pass(w.run(&auth(c.clone()), &RequestView::new("GET", "/", &[])));
    c["requirements"][1]["require"] =
        json!({"all_of": [{"provider": "local"}, {"allow_missing": {}}]});
    deny(w.run(&auth(c.clone()), &RequestView::new("GET", "/", &[])));
    c["requirements"][1]["require"] = json!({"none": {}});
    pass(w.run(&auth(c.clone()), &bearer("garbage")));

    // `when` must not read jwt; unknown providers and empty lists are config errors.
    c["requirements"][1]["when"] = json!("jwt.claims.sub == 'x'");
    let e = compile(c.clone()).err().map(|e| e.field);
    assert_eq!(e.as_deref(), Some("jwt.requirements[1].when"));
    c["requirements"][1]["when"] = json!("true");
    c["requirements"][1]["require"] = json!({"any_of": [{"provider": "nope"}]});
    let e = compile(c.clone()).err().map(|e| e.field);
    assert_eq!(
        e.as_deref(),
        Some("jwt.requirements[1].require.any_of[0].provider")
    );
    c["requirements"][1]["require"] = json!({"any_of": []});
    assert!(compile(c).is_err());
}

#[test]
fn default_requirement_is_any_of_all_providers() {
    let mut c = base_config();
    let mut second = c["providers"][0].clone();
    second["name"] = json!("other");
    second["issuer"] = json!("https://other.issuer");
    c["providers"]
        .as_array_mut()
        .into_iter()
        .for_each(|p| p.push(second.clone()));
    let a = auth(c);
    assert!(matches!(a.default, Requirement::AnyOf(ref v) if v.len() == 2));
    let mut w = World::new();
    deny(w.run(&a, &RequestView::new("GET", "/", &[])));
    let mut other = claims();
    other["iss"] = json!("https://other.issuer");
    let (tok, _) = pass(w.run(&a, &bearer(&token(&other))));
    assert_eq!(tok.map(|t| t.provider.clone()).as_deref(), Some("other"));
    // The cheap issuer filter means no signature check for the non-matching provider.
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.invalid.reason.wrong_issuer"),
        1
    );
    // No providers: nothing is required.
    let a = auth(json!({}));
    pass(World::new().run(&a, &RequestView::new("GET", "/", &[])));
}

fn remote_config() -> Value {
    let mut c = base_config();
    c["providers"][0]["jwks"] = json!({"remote": {"cluster": "jwks", "path": "/jwks.json", "cache_duration_s": 300, "max_stale_s": 600}});
    c
}

#[test]
fn remote_keys_pending_stale_and_refetch() {
    let a = auth(remote_config());
    assert_eq!(
        a.remote_specs().first().map(|s| s.authority.as_str()),
        Some("issuer.portcullis.local")
    );
    let mut w = World::new();
    let t = token(&claims());
    assert!(
        matches!(w.run(&a, &bearer(&t)), AuthnOutcome::KeysPending(p) if p == vec!["local".to_owned()])
    );
    // Missing tokens don't wait for keys.
    deny(w.run(&a, &RequestView::new("GET", "/", &[])));
    let set =
        KeySet::from_value(&json!({"keys": [ed_jwk("k1")]}), KeyPolicy::Remote).unwrap_or_default();
    w.remote.install("local", set, NOW as i64 - 100);
    pass(w.run(&a, &bearer(&t)));
    // Unknown kid asks for a refetch.
    deny(w.run(
        &a,
        &bearer(&sign_ed(&json!({"alg": "EdDSA", "kid": "new"}), &claims())),
    ));
    assert_eq!(w.remote.take_refetch_requests(), vec!["local".to_owned()]);
    // Past cache_duration + max_stale: 503.
    w.now = UNIX_EPOCH + Duration::from_secs(NOW + 900);
    let mut late = claims();
    late["exp"] = json!(NOW + 5000);
    let d = deny(w.run(&a, &bearer(&token(&late))));
    assert_eq!((d.status, d.error), (503, "keys_unavailable"));
    assert!(
        d.headers
            .iter()
            .any(|(n, v)| n == "retry-after" && v == "2"),
        "{:?}",
        d.headers
    );
    let mut c = remote_config();
    c["keys_unavailable_status"] = json!(401);
    let a = auth(c);
    let d = deny(w.run(&a, &bearer(&token(&late))));
    assert_eq!(d.status, 401);
    // HS with a remote provider is a config error.
    let mut c = remote_config();
    c["providers"][0]["algorithms"] = json!(["HS256"]);
    assert_eq!(
        compile(c).err().map(|e| e.field).as_deref(),
        Some("jwt.providers[0].algorithms")
    );
}

#[test]
fn config_errors_name_the_field() {
    let check = |patch: Value, field: &str| {
        let mut c = base_config();
        for (k, v) in patch.as_object().into_iter().flatten() {
            c["providers"][0][k] = v.clone();
        }
        let got = compile(c).err().map(|e| e.field);
        assert_eq!(got.as_deref(), Some(field), "{patch}");
    };
    check(json!({"name": "a.b"}), "jwt.providers[0].name");
    check(json!({"issuer": ""}), "jwt.providers[0].issuer");
    check(
        json!({"algorithms": ["none"]}),
        "jwt.providers[0].algorithms[0]",
    );
    check(
        json!({"algorithms": ["RS1"]}),
        "jwt.providers[0].algorithms[0]",
    );
    check(
        json!({"claim_to_headers": [{"claim": "a..b", "header": "x"}]}),
        "jwt.providers[0].claim_to_headers[0].claim",
    );
    check(
        json!({"claim_to_headers": [{"claim": "a", "header": "bad header"}]}),
        "jwt.providers[0].claim_to_headers[0].header",
    );
    check(
        json!({"required_claims": ["[\"x"]}),
        "jwt.providers[0].required_claims[0]",
    );
    check(
        json!({"max_json_depth": 0}),
        "jwt.providers[0].max_json_depth",
    );
    check(
        json!({"jwks": {"inline": {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}}}),
        "jwt.providers[0].jwks.inline",
    );
    check(
        json!({"jwks": {"oidc": {"cluster": "c"}}, "issuer": "not-a-url"}),
        "jwt.providers[0].issuer",
    );
    // Unknown fields are rejected by serde with their path.
    let bytes = serde_json::to_vec(&json!({"jwt": {"providers": [{"name": "x", "issuer": "i", "jwks": {"inline": {}}, "bogus": 1}]}}))
        .unwrap_or_default();
    let e = crate::config::parse_plugin_config(&bytes)
        .err()
        .map(|e| e.field);
    assert!(
        e.as_deref()
            .is_some_and(|f| f.starts_with("jwt.providers[0]")),
        "{e:?}"
    );
    let mut c = base_config();
    c["providers"].as_array_mut().into_iter().for_each(|p| {
        let first = p.first().cloned().unwrap_or_default();
        p.push(first)
    });
    assert_eq!(
        compile(c).err().map(|e| e.field).as_deref(),
        Some("jwt.providers[1].name")
    );
}

#[test]
fn oidc_spec_from_issuer() {
    let mut c = base_config();
    c["providers"][0]["issuer"] = json!("https://login.example.com/tenant/");
    c["providers"][0]["jwks"] = json!({"oidc": {"cluster": "idp"}});
    let a = auth(c);
    let spec = a.remote_specs().into_iter().next();
    assert_eq!(
        spec.map(|s| (s.authority, s.kind)),
        Some((
            "login.example.com".to_owned(),
            RemoteKind::Oidc {
                path: "/tenant/.well-known/openid-configuration".into(),
                issuer: "https://login.example.com/tenant/".into()
            }
        ))
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn token_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = jws::parse_compact(&text, 8192, 32);
            let a = auth(base_config());
            let _ = World::new().run(&a, &bearer(&text));
        }

        #[test]
        fn token_like_strings_never_panic(h in "[A-Za-z0-9_-]{0,60}", p in "[A-Za-z0-9_-]{0,60}", s in "[A-Za-z0-9_=.-]{0,90}") {
            let token = format!("{h}.{p}.{s}");
            let a = auth(base_config());
            let _ = World::new().run(&a, &bearer(&token));
            let header = b64url_encode(h.as_bytes());
            let _ = jws::parse_compact(&format!("{header}.{p}.{s}"), 8192, 32);
        }

        #[test]
        fn jwks_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = KeySet::parse(&bytes, KeyPolicy::Remote, 16);
            let _ = KeySet::parse(&bytes, KeyPolicy::Inline, 16);
        }

        #[test]
        fn jwk_like_objects_never_panic(kty in "(RSA|EC|OKP|oct|x)", crv in "(P-256|P-384|Ed25519|P-521)", x in "[A-Za-z0-9_-]{0,90}", y in "[A-Za-z0-9_-]{0,90}", alg in "(RS256|ES256|ES384|EdDSA|HS256|none|PS512)") {
            let v = json!({"keys": [{"kty": kty, "crv": crv, "x": x, "y": y, "n": x, "e": y, "k": x, "alg": alg}]});
            let _ = KeySet::from_value(&v, KeyPolicy::Inline);
        }

        #[test]
        fn deep_json_is_refused_cheaply(depth in 33usize..5000) {
            let payload = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let t = format!("{}.{}.AAAA", b64url_encode(br#"{"alg":"EdDSA"}"#), b64url_encode(payload.as_bytes()));
            let a = auth(base_config());
            let mut w = World::new();
            let _ = w.run(&a, &bearer(&t));
        }
    }
}

#[test]
fn requirement_rules_see_the_request() {
    let mut c = base_config();
    c["requirements"] = json!([
        {"name": "public", "when": "request.path.startsWith('/public/')", "require": {"allow_missing": {}}}
    ]);
    let a = auth(c);
    let mut w = World::new();
    let (tok, _) = pass(w.run(&a, &RequestView::new("GET", "/public/x", &[])));
    assert!(tok.is_none());
    let d = deny(w.run(&a, &RequestView::new("GET", "/private", &[])));
    assert_eq!((d.error, d.rule), ("missing_token", None));
}

/// Signs header and claims given as JSON text, so they can say what `json!` can't (a member
/// twice).
fn sign_ed_raw(header: &str, claims: &str) -> String {
    use ed25519_dalek::Signer;
    let input = format!(
        "{}.{}",
        b64url_encode(header.as_bytes()),
        b64url_encode(claims.as_bytes())
    );
    let sig = ed_key().sign(input.as_bytes());
    format!("{input}.{}", b64url_encode(&sig.to_bytes()))
}

/// `claims()` as text with `extra` members spliced in at the front (before the originals,
/// so serde_json's "last one wins" would pick the good value).
fn claims_text_with(extra: &str) -> String {
    let text = claims().to_string();
    format!("{{{extra},{}", text.get(1..).unwrap_or_default())
}

#[test]
fn signed_tokens_repeating_a_member_are_refused_with_their_own_reason() {
    let a = auth(base_config());
    let mut w = World::new();
    let good_header = r#"{"alg":"EdDSA","kid":"k1"}"#;
    // The control: the same construction without a repeat passes.
    pass(w.run(
        &a,
        &bearer(&sign_ed_raw(good_header, &claims_text_with(r#""jti":"1""#))),
    ));
    let past = NOW - 3600;
    let cases = [
        (
            r#"{"alg":"EdDSA","kid":"nope","kid":"k1"}"#.to_owned(),
            claims().to_string(),
            "header",
        ),
        (
            r#"{"alg":"HS256","alg":"EdDSA","kid":"k1"}"#.to_owned(),
            claims().to_string(),
            "header",
        ),
        (
            good_header.to_owned(),
            claims_text_with(r#""sub":"user:root""#),
            "payload",
        ),
        (
            good_header.to_owned(),
            claims_text_with(&format!(r#""exp":{past}"#)),
            "payload",
        ),
        (
            good_header.to_owned(),
            claims_text_with(r#""iss":"https://evil""#),
            "payload",
        ),
        (
            good_header.to_owned(),
            claims_text_with(r#""aud":"someone-else""#),
            "payload",
        ),
        (
            good_header.to_owned(),
            claims_text_with(r#""\u0073ub":"user:root""#),
            "payload",
        ),
        // Nested: the policy-visible `org.team` could be either.
        (
            good_header.to_owned(),
            claims()
                .to_string()
                .replace(r#""team":"blue""#, r#""team":"red","team":"blue""#),
            "payload",
        ),
        (
            good_header.to_owned(),
            claims_text_with(r#""groups":[{"n":"a","n":"b"}]"#),
            "payload",
        ),
    ];
    for (i, (header, payload, part)) in cases.iter().enumerate() {
        let t = sign_ed_raw(header, payload);
        let d = deny(w.run(&a, &bearer(&t)));
        assert_eq!((d.status, d.error), (401, "invalid_token"), "case {i}");
        assert_eq!(
            d.reason,
            format!("{part} repeats a member name"),
            "case {i}"
        );
        assert_eq!(
            d.headers,
            vec![(
                "www-authenticate".to_owned(),
                format!("Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{part} repeats a member name\"")
            )]
        );
    }
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.invalid.reason.duplicate_member"),
        cases.len() as i64
    );
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.ok"),
        1
    );
}

#[test]
fn signed_tokens_with_a_registered_claim_of_a_wrong_type_are_malformed() {
    // No audience check configured: `aud` is still type-checked.
    let mut c = base_config();
    c["providers"][0]["audiences"] = json!([]);
    for config in [base_config(), c] {
        let a = auth(config);
        let mut w = World::new();
        let cases = [
            ("aud", json!(["portcullis-demo", 5])),
            ("aud", json!([5, "portcullis-demo"])),
            ("aud", json!(["portcullis-demo", {"x": 1}])),
            ("aud", json!(null)),
            ("sub", json!(42)),
            ("jti", json!(["a"])),
            ("iat", json!("now")),
            ("nbf", json!(false)),
            ("iss", json!([ISS])),
        ];
        for (name, value) in &cases {
            let mut bad = claims();
            bad[*name] = value.clone();
            let d = deny(w.run(&a, &bearer(&token(&bad))));
            assert_eq!(d.error, "invalid_token", "{name}: {value}");
            assert!(d.reason.starts_with(name), "{name}: {}", d.reason);
        }
        assert_eq!(
            w.counters
                .get("portcullis_jwt_total.provider.local.result.invalid.reason.malformed"),
            cases.len() as i64
        );
        // Refused before the issuer filter, the signature and every other check.
        assert_eq!(
            w.counters
                .get("portcullis_jwt_total.provider.local.result.invalid.reason.wrong_issuer"),
            0
        );
        let mut good = claims();
        good["aud"] = json!(["x", "portcullis-demo"]);
        pass(w.run(&a, &bearer(&token(&good))));
    }
}

fn multi_config() -> Value {
    let mut c = base_config();
    c["providers"][0]["from_headers"] = json!([
        {"name": "authorization", "value_prefix": "Bearer "},
        {"name": "x-token"}
    ]);
    c["providers"][0]["from_params"] = json!(["access_token"]);
    c["providers"][0]["from_cookies"] = json!(["session"]);
    c
}

#[test]
fn more_than_one_token_is_an_invalid_request() {
    let a = auth(multi_config());
    let mut w = World::new();
    let t = token(&claims());
    let mut other = claims();
    other["sub"] = json!("user:bob");
    let u = token(&other);
    let req = |path: &str, headers: &[(&str, &str)]| RequestView::new("GET", path, headers);
    let bearer_t = format!("Bearer {t}");
    let several: Vec<(&str, RequestView)> = vec![
        (
            "merged header, same token",
            req(
                "/",
                &[("authorization", &format!("Bearer {t}, Bearer {t}"))],
            ),
        ),
        (
            "merged header, no space",
            req("/", &[("authorization", &format!("Bearer {t},Bearer {u}"))]),
        ),
        (
            "header twice",
            req(
                "/",
                &[
                    ("authorization", &bearer_t),
                    ("Authorization", &format!("Bearer {u}")),
                ],
            ),
        ),
        (
            "bearer next to another scheme",
            req(
                "/",
                &[("authorization", &format!("Bearer {t}, Basic dXNlcjpwdw=="))],
            ),
        ),
        (
            "bearer next to another scheme, two entries",
            req(
                "/",
                &[
                    ("authorization", "Basic dXNlcjpwdw=="),
                    ("authorization", &bearer_t),
                ],
            ),
        ),
        (
            "custom header twice",
            req("/", &[("x-token", &t), ("x-token", &u)]),
        ),
        (
            "custom header merged",
            req("/", &[("x-token", &format!("{t},{u}"))]),
        ),
        (
            "param twice",
            req(&format!("/?access_token={t}&access_token={u}"), &[]),
        ),
        (
            "param twice, once percent-encoded",
            req(&format!("/?access%5Ftoken={t}&a=1&access_token={t}"), &[]),
        ),
        (
            "param next to an undecodable one",
            req(&format!("/?access_token={t}&access_token=%FF"), &[]),
        ),
        (
            "cookie twice",
            req(
                "/",
                &[("cookie", &format!("session={t}; a=b; session={u}"))],
            ),
        ),
        (
            "cookie in two headers",
            req(
                "/",
                &[
                    ("cookie", &format!("session={t}")),
                    ("cookie", &format!("session={t}")),
                ],
            ),
        ),
        (
            "header and param",
            req(
                &format!("/?access_token={t}"),
                &[("authorization", &bearer_t)],
            ),
        ),
        (
            "header and cookie",
            req(
                "/",
                &[
                    ("authorization", &bearer_t),
                    ("cookie", &format!("session={t}")),
                ],
            ),
        ),
        (
            "two headers",
            req("/", &[("authorization", &bearer_t), ("x-token", &t)]),
        ),
        (
            "a token and garbage",
            req("/", &[("authorization", &bearer_t), ("x-token", "garbage")]),
        ),
    ];
    for (name, request) in &several {
        let d = deny(w.run(&a, request));
        assert_eq!((d.status, d.error), (401, "invalid_request"), "{name}");
        assert_eq!(d.reason, "more than one token in the request");
        assert_eq!(
            d.headers,
            vec![(
                "www-authenticate".to_owned(),
                "Bearer realm=\"portcullis\", error=\"invalid_request\", error_description=\"more than one token in the request\"".to_owned()
            )],
            "{name}"
        );
        assert!(!d.body(false).contains(&t) && !d.body(false).contains(&u));
        assert_eq!(
            serde_json::from_str::<Value>(&d.body(true)).ok(),
            Some(
                json!({"error": "invalid_request", "reason": "more than one token in the request"})
            )
        );
    }
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.multiple_tokens"),
        several.len() as i64
    );
    assert_eq!(
        w.counters
            .get("portcullis_jwt_total.provider.local.result.ok"),
        0,
        "no token was verified"
    );

    // One token, wherever it is, and other values that are no token: one candidate.
    let one: Vec<(&str, RequestView)> = vec![
        ("plain", req("/", &[("authorization", &bearer_t)])),
        (
            "an empty merged value",
            req("/", &[("authorization", &format!("Bearer {t},"))]),
        ),
        (
            "an empty second entry",
            req("/", &[("authorization", &bearer_t), ("authorization", "")]),
        ),
        (
            "an empty param",
            req(&format!("/?access_token=&access_token={t}"), &[]),
        ),
        (
            "an empty cookie and others",
            req(
                "/",
                &[("cookie", &format!("session=; a=b; session={t}; c=d"))],
            ),
        ),
        (
            "an unrelated header",
            req("/", &[("x-tokens", &t), ("x-token", &t)]),
        ),
    ];
    for (name, request) in &one {
        let (tok, _) = pass(w.run(&a, request));
        assert!(tok.is_some(), "{name}");
    }
    // No token at all, even in a header holding several values: missing.
    let d = deny(w.run(&a, &req("/", &[("authorization", "Basic a, Basic b")])));
    assert_eq!(d.error, "missing_token");
}

#[test]
fn several_tokens_under_each_requirement() {
    let t = token(&claims());
    let twice = RequestView::new(
        "GET",
        "/",
        &[("authorization", &format!("Bearer {t}, Bearer {t}"))],
    );
    let mut c = base_config();
    c["requirements"] =
        json!([{"name": "maybe", "when": "true", "require": {"allow_missing": {}}}]);
    let d = deny(World::new().run(&auth(c.clone()), &twice));
    assert_eq!(
        (d.error, d.rule.as_deref()),
        ("invalid_request", Some("maybe"))
    );
    // `allow_missing_or_failed` lets the request through, but with no token.
    c["requirements"][0]["require"] = json!({"allow_missing_or_failed": {}});
    let (tok, _) = pass(World::new().run(&auth(c.clone()), &twice));
    assert!(tok.is_none());
    // Another provider (another header) with one valid token still satisfies `any_of`; when
    // every alternative fails, the several tokens are what the answer reports.
    let mut second = c["providers"][0].clone();
    second["name"] = json!("other");
    second["from_headers"] = json!([{"name": "x-other"}]);
    c["providers"]
        .as_array_mut()
        .into_iter()
        .for_each(|p| p.push(second.clone()));
    c["requirements"][0]["require"] =
        json!({"any_of": [{"provider": "local"}, {"provider": "other"}]});
    let a = auth(c);
    let both = RequestView::new(
        "GET",
        "/",
        &[
            ("authorization", &format!("Bearer {t}, Bearer {t}")),
            ("x-other", &t),
        ],
    );
    let (tok, _) = pass(World::new().run(&a, &both));
    assert_eq!(tok.map(|t| t.provider.clone()).as_deref(), Some("other"));
    let bad_other = RequestView::new(
        "GET",
        "/",
        &[
            ("authorization", &format!("Bearer {t}, Bearer {t}")),
            ("x-other", "garbage"),
        ],
    );
    assert_eq!(
        deny(World::new().run(&a, &bad_other)).error,
        "invalid_request"
    );
}

#[test]
fn a_value_prefix_with_a_comma_is_a_config_error() {
    let mut c = base_config();
    c["providers"][0]["from_headers"] =
        json!([{"name": "authorization", "value_prefix": "Bearer,"}]);
    assert_eq!(
        compile(c).err().map(|e| e.field).as_deref(),
        Some("jwt.providers[0].from_headers[0].value_prefix")
    );
}

mod jose_props {
    use super::*;
    use proptest::prelude::*;

    /// Object member names, a few of them shared so that repeats come up.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof!["(alg|kid|sub|exp|aud)", "[a-z]{1,3}"]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((name(), inner), 0..4)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// JSON text of `value` with the last member of its first non-empty object (depth-first)
    /// written twice.
    fn with_a_repeat(value: &Value) -> Option<String> {
        match value {
            Value::Object(map) => {
                let mut members: Vec<String> = Vec::new();
                let mut repeated = false;
                for (k, v) in map {
                    let v_text = if repeated { None } else { with_a_repeat(v) };
                    repeated |= v_text.is_some();
                    members.push(format!(
                        "{}:{}",
                        Value::from(k.as_str()),
                        v_text.unwrap_or_else(|| v.to_string())
                    ));
                }
                if !repeated {
                    let last = members.last().cloned()?;
                    members.push(last);
                }
                Some(format!("{{{}}}", members.join(",")))
            }
            Value::Array(items) => {
                let mut parts: Vec<String> = Vec::new();
                let mut repeated = false;
                for v in items {
                    let text = if repeated { None } else { with_a_repeat(v) };
                    repeated |= text.is_some();
                    parts.push(text.unwrap_or_else(|| v.to_string()));
                }
                repeated.then(|| format!("[{}]", parts.join(",")))
            }
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn strict_parsing_agrees_with_serde_json_on_unique_names(members in proptest::collection::vec((name(), json_value()), 0..6)) {
            let object = Value::Object(members.into_iter().collect());
            let text = object.to_string();
            prop_assert_eq!(json::parse_object(text.as_bytes()).map(Value::Object), Ok(object));
        }

        #[test]
        fn any_repeat_at_any_depth_is_refused(members in proptest::collection::vec((name(), json_value()), 1..6)) {
            let object = Value::Object(members.into_iter().collect());
            let text = with_a_repeat(&object);
            prop_assert!(text.is_some());
            let text = text.unwrap_or_default();
            prop_assert_eq!(json::parse_object(text.as_bytes()), Err(json::JsonError::DuplicateMember), "{}", text);
            // And through a signed token, as the payload.
            let a = auth(base_config());
            let d = deny(World::new().run(&a, &bearer(&sign_ed_raw(r#"{"alg":"EdDSA","kid":"k1"}"#, &text))));
            prop_assert_eq!(d.reason, "payload repeats a member name");
        }

        #[test]
        fn a_second_token_anywhere_is_an_invalid_request(
            places in proptest::collection::vec(0usize..5, 2..5),
            spaces in "[ ]{0,2}",
        ) {
            let t = token(&claims());
            let mut headers: Vec<(String, String)> = Vec::new();
            let mut query = Vec::new();
            for place in &places {
                match place {
                    0 => headers.push(("authorization".into(), format!("Bearer{spaces} {t}"))),
                    1 => headers.push(("x-token".into(), t.clone())),
                    2 => query.push(format!("access_token={t}")),
                    3 => headers.push(("cookie".into(), format!("a=1;{spaces}session={t}"))),
                    _ => headers.push(("authorization".into(), format!("bearer {t},{spaces}Bearer {t}"))),
                }
            }
            let path = format!("/?{}", query.join("&"));
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let a = auth(multi_config());
            let mut w = World::new();
            let d = deny(w.run(&a, &RequestView::new("GET", &path, &pairs)));
            prop_assert_eq!(d.error, "invalid_request");
            prop_assert_eq!(w.counters.get("portcullis_jwt_total.provider.local.result.multiple_tokens"), 1);
        }
    }
}
