//! Arbitrary bytes as a bearer token through the whole authenticator (inline Ed25519 key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_filter::expr::Activation;
use portcullis_filter::jwt::{AuthnEnv, Authenticator, JwtConfig, RemoteKeys, TokenCache};
use portcullis_filter::ports::memory::MemoryCounters;
use portcullis_filter::ports::NoHostCrypto;
use portcullis_filter::request::RequestView;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let config: JwtConfig = serde_json::from_value(serde_json::json!({
            "providers": [{
                "name": "fuzz",
                "issuer": "https://issuer",
                "jwks": {"inline": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k",
                    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}},
                "from_params": ["access_token"],
                "from_cookies": ["session"],
                "claim_to_headers": [{"claim": "[\"a.b\"].c", "header": "x-c"}]
            }]
        }))
        .expect("config");
        Authenticator::compile(&config).expect("compile")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = portcullis_filter::jwt::jws::parse_compact(&String::from_utf8_lossy(data), 8192, 32);
    let text = String::from_utf8_lossy(data);
    let request = RequestView::new(
        "GET",
        &format!("/?access_token={text}"),
        &[("authorization", &format!("Bearer {text}")), ("cookie", &format!("session={text}"))],
    );
    let mut cache = TokenCache::default();
    let mut counters = MemoryCounters::default();
    let remote = RemoteKeys::default();
    let mut env = AuthnEnv {
        now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        crypto: &NoHostCrypto,
        remote_keys: &remote,
        cache: &mut cache,
        counters: &mut counters,
    };
    let _ = authenticator().authenticate(&Activation::new(&request), &mut env);
});
