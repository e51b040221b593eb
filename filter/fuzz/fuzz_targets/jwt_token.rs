//! Arbitrary bytes as a bearer token through the whole authenticator: the demo keys of
//! `policies/keys/` (RS256, ES256, verified in pure Rust as no host crypto is offered), the
//! RFC 8037 Ed25519 key and an HS256 secret, so the seed tokens verify and the fuzzer
//! mutates from inside the claim checks, not only the parser.
//!
//! Invariants: never a panic; the answer from the token cache equals the first answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_filter::expr::Activation;
use portcullis_filter::jwt::{Authenticator, AuthnEnv, AuthnOutcome, JwtConfig, RemoteKeys};
use portcullis_filter::ports::memory::MemoryCounters;
use portcullis_filter::ports::NoHostCrypto;
use portcullis_filter::request::RequestView;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

/// Secret of the HS256 seed tokens (`seeds.py`).
const HMAC_KEY_B64URL: &str = "cG9ydGN1bGxpcy1mdXp6LWhtYWMtc2VjcmV0LTMyYnl0ZXMh";

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let demo: serde_json::Value =
            serde_json::from_str(include_str!("../../../policies/keys/jwks.json")).expect("jwks");
        let config: JwtConfig = serde_json::from_value(serde_json::json!({
            "providers": [{
                "name": "local",
                "issuer": "https://issuer.portcullis.local",
                "audiences": ["portcullis-demo"],
                "jwks": {"inline": demo},
                "claim_to_headers": [{"claim": "sub", "header": "x-user"}]
            }, {
                "name": "fuzz",
                "issuer": "https://issuer",
                "jwks": {"inline": {"keys": [
                    {"kty": "OKP", "crv": "Ed25519", "kid": "ed",
                     "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
                ]}},
                "from_params": ["access_token"],
                "from_cookies": ["session"],
                "required_claims": ["sub"],
                "subjects": {"prefixes": ["user:", "svc:"]},
                "forward_payload_header": "x-payload",
                "claim_to_headers": [{"claim": "[\"a.b\"].c", "header": "x-c"},
                                     {"claim": "groups", "header": "x-groups"}]
            }, {
                // Secrets may not share a key set with public keys (algorithm confusion).
                "name": "hmac",
                "issuer": "https://issuer",
                "jwks": {"inline": {"keys": [
                    {"kty": "oct", "kid": "hs", "alg": "HS256", "k": HMAC_KEY_B64URL}
                ]}},
                "from_params": ["access_token"],
                "algorithms": ["HS256"],
                "max_lifetime_s": 7200
            }],
            "default_requirement": {"any_of": [
                {"provider": "local"}, {"provider": "fuzz"}, {"provider": "hmac"}
            ]}
        }))
        .expect("config");
        Authenticator::compile(&config).expect("compile")
    })
}

/// What must not change between a verification and a cache hit.
fn summary(outcome: &AuthnOutcome) -> String {
    match outcome {
        AuthnOutcome::Pass {
            token,
            request_headers,
        } => format!(
            "pass {:?} {:?} {request_headers:?}",
            token
                .as_ref()
                .map(|t| (&t.provider, t.exp, &t.header_edits)),
            token.as_ref().map(|t| &t.attributes.provider),
        ),
        AuthnOutcome::Fail(deny) => format!("fail {deny:?}"),
        AuthnOutcome::KeysPending(providers) => format!("pending {providers:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = portcullis_filter::jwt::jws::parse_compact(&text, 8192, 32);
    let requests = [
        RequestView::new("GET", "/", &[("authorization", &format!("Bearer {text}"))]),
        RequestView::new("GET", &format!("/?access_token={text}"), &[]),
        RequestView::new("GET", "/", &[("cookie", &format!("a=b; session={text}"))]),
    ];
    let mut remote = RemoteKeys::default();
    let mut cache = authenticator().new_token_cache();
    let mut counters = MemoryCounters::default();
    for request in &requests {
        let mut env = AuthnEnv {
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            crypto: &NoHostCrypto,
            remote_keys: &mut remote,
            cache: &mut cache,
            counters: &mut counters,
        };
        let first = authenticator().authenticate(&Activation::new(request), &mut env);
        let again = authenticator().authenticate(&Activation::new(request), &mut env);
        assert_eq!(summary(&first), summary(&again));
    }
});
