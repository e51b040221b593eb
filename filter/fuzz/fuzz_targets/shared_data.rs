//! What other VMs (or anything else in the proxy) left in shared data, and what a JWKS or
//! OIDC endpoint answers: rate-limit buckets, the JWKS fetch lease, the shared key-set
//! envelope, the discovery document and the fetched JWKS. Input: those five byte strings,
//! separated by `#=#`, served by a store that then keeps whatever the filter writes.
//!
//! Invariants: never a panic; a rate-limit check admits or limits; the state machine never
//! asks for more callouts than it has providers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_filter::expr::{Activation, ExprSource};
use portcullis_filter::jwt::config::FetchTiming;
use portcullis_filter::jwt::{JwksSync, RemoteKeys, RemoteKind, RemoteSpec};
use portcullis_filter::ports::memory::MemoryCounters;
use portcullis_filter::ports::{SharedStore, StoreError};
use portcullis_filter::ratelimit::{
    LimitConfig, LocalTokens, RateLimitConfig, RateLimiter, RateVerdict,
};
use portcullis_filter::request::RequestView;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

/// Serves the fuzzer's bytes for a key until the filter writes that key.
struct FuzzStore<'d> {
    bucket: &'d [u8],
    lease: &'d [u8],
    envelope: &'d [u8],
    written: RefCell<HashMap<String, (Vec<u8>, u32)>>,
}

impl SharedStore for FuzzStore<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        if let Some(entry) = self.written.borrow().get(key) {
            return Some(entry.clone());
        }
        let bytes = if key.ends_with(".lease") {
            self.lease
        } else if key.starts_with("portcullis.jwks.") {
            self.envelope
        } else {
            self.bucket
        };
        (!bytes.is_empty()).then(|| (bytes.to_vec(), 7))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let current = self.get(key).map(|(_, c)| c);
        if cas.is_some() && current.is_some() && cas != current {
            return Err(StoreError::CasMismatch);
        }
        let next = current.unwrap_or(0).wrapping_add(1).max(1);
        self.written
            .borrow_mut()
            .insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }
}

fn limiter() -> &'static RateLimiter {
    static LIMITER: OnceLock<RateLimiter> = OnceLock::new();
    let limit = |name: &str, requests, period_s, burst, batch| LimitConfig {
        name: name.into(),
        when: None,
        key: Some(ExprSource::Inline("request.headers[\"x-tenant\"]".into())),
        scope: Default::default(),
        descriptors: Vec::new(),
        hits_addend: None,
        requests,
        period_s,
        burst,
        mode: Default::default(),
        on_key_error: Default::default(),
        batch,
    };
    LIMITER.get_or_init(|| {
        RateLimiter::compile(&RateLimitConfig {
            limits: vec![
                limit("exact", 5, 1, None, Some(1)),
                limit("batched", 10_000, 1, Some(20_000), None),
                limit("slow", 1, 3600, Some(u32::MAX), Some(64)),
            ],
            max_buckets: 16,
            headers_on_allow: true,
            service: None,
        })
        .expect("limits compile")
    })
}

fn specs() -> Vec<RemoteSpec> {
    let spec = |provider: &str, kind| RemoteSpec {
        provider: provider.into(),
        cluster: "jwks".into(),
        authority: "keys.example".into(),
        kind,
        timing: FetchTiming::default(),
    };
    vec![
        spec(
            "remote",
            RemoteKind::Jwks {
                path: "/jwks.json".into(),
            },
        ),
        spec(
            "oidc",
            RemoteKind::Oidc {
                path: "/.well-known/openid-configuration".into(),
                issuer: "https://keys.example".into(),
            },
        ),
    ]
}

fuzz_target!(|data: &[u8]| {
    let mut parts = split(data);
    let mut next = || parts.next().unwrap_or_default();
    let store = FuzzStore {
        bucket: next(),
        lease: next(),
        envelope: next(),
        written: RefCell::default(),
    };
    let (discovery, jwks) = (next(), next());
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut counters = MemoryCounters::default();

    let mut local = LocalTokens::default();
    let request = RequestView::new("GET", "/", &[("x-tenant", "acme")]);
    for step in 0..4u64 {
        let verdict = limiter().check(
            &Activation::new(&request),
            &store,
            &mut local,
            now + Duration::from_millis(step * 400),
            &mut counters,
        );
        assert!(matches!(
            verdict,
            RateVerdict::Admit { .. } | RateVerdict::Limited(_)
        ));
    }

    let specs = specs();
    let providers = specs.len();
    let mut sync = JwksSync::new(specs, "vm-1", 42);
    let mut keys = RemoteKeys::default();
    let mut calls = sync.poll(now, &store, &mut keys);
    for _ in 0..3 {
        assert!(calls.len() <= providers);
        let mut more = Vec::new();
        for call in calls {
            let body = if call.path.contains("openid") {
                discovery
            } else {
                jwks
            };
            more.extend(sync.on_response(
                &call.provider,
                Some(200),
                Some(body),
                now,
                &store,
                &mut keys,
                &mut counters,
            ));
        }
        calls = more;
    }
    let _ = sync.poll(now + Duration::from_secs(400), &store, &mut keys);
});

fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(3).position(|w| w == b"#=#") {
            Some(at) => {
                rest = current.get(at + 3..);
                current.get(..at)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}
