//! The plugin configuration: JSON bytes → parse → compile, as `on_configure` does, then one
//! request through the compiled pipeline.
//!
//! Invariants: never a panic; compiling is deterministic (same error, or two configurations
//! that decide the same request the same way).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_filter::config::Config;
use portcullis_filter::global::GlobalState;
use portcullis_filter::jwt::RemoteKeys;
use portcullis_filter::pipeline::{decide, Env};
use portcullis_filter::ports::memory::{MemoryCounters, MemoryLog, MemoryStore};
use portcullis_filter::ports::NoHostCrypto;
use portcullis_filter::ratelimit::LocalTokens;
use portcullis_filter::request::{AttributeValue, HostAttribute, RequestView};
use std::time::{Duration, UNIX_EPOCH};

fn run(config: &Config, request: &RequestView) -> portcullis_filter::decision::Outcome {
    let store = MemoryStore::default();
    let mut remote_keys = RemoteKeys::default();
    let mut token_cache = config.authenticator.new_token_cache();
    let mut local_tokens = LocalTokens::default();
    let mut counters = MemoryCounters::default();
    let mut log = MemoryLog::default();
    let mut env = Env {
        now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        store: &store,
        crypto: &NoHostCrypto,
        remote_keys: &mut remote_keys,
        token_cache: &mut token_cache,
        local_tokens: &mut local_tokens,
        counters: &mut counters,
        log: &mut log,
        global: &mut GlobalState::default(),
    };
    decide(config, request, &mut env)
}

fuzz_target!(|data: &[u8]| {
    let first = Config::from_json(data);
    let second = Config::from_json(data);
    let (first, second) = match (first, second) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            // The message is what Envoy logs: it must render.
            let _ = a.to_string();
            return;
        }
        (a, b) => panic!("compiled differently: {:?} vs {:?}", a.err(), b.err()),
    };
    assert_eq!(first.host_attributes, second.host_attributes);
    let request = RequestView::new(
        "GET",
        "/api/orders?access_token=x",
        &[
            ("x-tenant", "acme"),
            ("authorization", "Bearer a.b.c"),
            ("user-agent", "legacy-cli/1"),
        ],
    )
    .with_attribute(
        HostAttribute::SourceAddress,
        AttributeValue::String("10.0.0.1:5000".into()),
    )
    .with_attribute(HostAttribute::ConnectionMtls, AttributeValue::Bool(true));
    let outcome = run(&first, &request);
    assert_eq!(outcome, run(&second, &request));
    if let portcullis_filter::decision::Outcome::Decided(
        portcullis_filter::decision::Decision::Deny(deny),
    ) = &outcome
    {
        let _ = portcullis_filter::pipeline::render_deny(&first, deny);
    }
});
