//! The Portcullis filter itself, through the harness.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use portcullis_harness::token::SigningKeys;
use portcullis_harness::{Host, HttpRequest, Vm, VmError, VmOptions};
use serde_json::{json, Value};
use std::time::Duration;

fn start(host: &Host, config: &Value) -> Result<Vm, VmError> {
    Vm::start(host, &common::filter(), VmOptions::new(config.to_string()))
}

#[test]
fn rejected_configuration_fails_configure_with_the_filters_message() {
    let host = Host::new();
    let err = start(
        &host,
        &json!({"policy": {"rules": [{"name": "bad", "allow": "1 +"}]}}),
    )
    .unwrap_err();
    let msg = err.configure_message().unwrap_or_else(|| panic!("{err}"));
    assert!(msg.contains("invalid plugin configuration"), "{msg}");
    assert!(msg.contains("policy.rules[0].allow"), "{msg}");

    let err = start(&host, &json!({"no_such_section": {}})).unwrap_err();
    assert!(
        err.configure_message().unwrap().contains("no_such_section"),
        "{err}"
    );
}

#[test]
fn policy_allows_and_denies() {
    let host = Host::new();
    let config = json!({
        "policy": {
            "default_action": "deny",
            "rules": [{"name": "public", "allow": "request.path.startsWith(\"/public/\")"}]
        },
        "responses": {"decision_header": "x-portcullis-decision"}
    });
    let mut vm = start(&host, &config).unwrap();
    let ex = vm.request(&HttpRequest::get("/public/index.html")).unwrap();
    assert_eq!(ex.status, 200, "{ex:?}");
    assert_eq!(
        ex.upstream_header("x-portcullis-decision"),
        Some("allow; rule=public")
    );

    let ex = vm.request(&HttpRequest::get("/private")).unwrap();
    assert_eq!(ex.status, 403);
    let body = ex.local_response.as_ref().unwrap().body_json().unwrap();
    assert_eq!(body["error"], "forbidden");
}

fn jwt_config() -> Value {
    let jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(common::workspace_root().join("policies/keys/jwks.json")).unwrap(),
    )
    .unwrap();
    json!({
        "jwt": {
            "providers": [{
                "name": "local",
                "issuer": "https://issuer.test",
                "audiences": ["api"],
                "jwks": {"inline": jwks}
            }],
            "default_requirement": {"provider": "local"}
        },
        "policy": {"default_action": "allow"}
    })
}

#[test]
fn jwt_required_then_accepted() {
    let host = Host::new();
    host.set_unix_seconds(1_700_000_000);
    let mut vm = start(&host, &jwt_config()).unwrap();
    let ex = vm.request(&HttpRequest::get("/api")).unwrap();
    assert_eq!(ex.status, 401);
    assert!(ex
        .response_header("www-authenticate")
        .unwrap_or("")
        .starts_with("Bearer"));

    let keys = SigningKeys::load(&common::workspace_root().join("policies/keys/private.jwks.json"))
        .unwrap();
    for kid in ["demo-rsa-1", "demo-ec-1"] {
        let token = keys
            .sign(
                Some(kid),
                &json!({"sub": "alice", "iss": "https://issuer.test", "aud": "api",
                        "iat": 1_700_000_000u64, "exp": 1_700_000_600u64}),
                None,
            )
            .unwrap();
        let ex = vm
            .request(&HttpRequest::get("/api").bearer(&token))
            .unwrap();
        assert_eq!(ex.status, 200, "{kid}: {ex:?}");

        // The same token after it expired (virtual clock).
        host.set_unix_seconds(1_700_001_000);
        let ex = vm
            .request(&HttpRequest::get("/api").bearer(&token))
            .unwrap();
        assert_eq!(ex.status, 401, "{kid}: expired token accepted");
        host.set_unix_seconds(1_700_000_000);
    }
}

#[test]
fn vms_share_rate_limit_buckets_through_shared_data() {
    let host = Host::new();
    let config = json!({
        "policy": {"default_action": "allow"},
        "rate_limits": {"limits": [{
            "name": "per-client",
            "key": "request.headers[\"x-client-id\"]",
            "requests": 2,
            "period_s": 60
        }]}
    });
    let mut a = start(&host, &config).unwrap();
    let mut b = start(&host, &config).unwrap();
    let req = HttpRequest::get("/x").header("x-client-id", "c1");
    assert_eq!(a.request(&req).unwrap().status, 200);
    assert_eq!(b.request(&req).unwrap().status, 200);
    let ex = a.request(&req).unwrap();
    assert_eq!(ex.status, 429, "{ex:?}");
    let ex = b.request(&req).unwrap();
    assert_eq!(ex.status, 429);
    // Another client has its own bucket.
    assert_eq!(
        b.request(&HttpRequest::get("/x").header("x-client-id", "c2"))
            .unwrap()
            .status,
        200
    );
    assert!(!host.shared_data_keys().is_empty());
    // A minute later the bucket refilled.
    a.advance(Duration::from_secs(60)).unwrap();
    assert_eq!(b.request(&req).unwrap().status, 200);
}

#[test]
fn batched_buckets_admit_exactly_the_burst_and_the_refill_across_vms() {
    let host = Host::new();
    // 3000 tokens, 50 per second: the automatic batch is 3 tokens per worker.
    let config = json!({
        "policy": {"default_action": "allow"},
        "rate_limits": {"limits": [{
            "name": "batched",
            "key": "request.headers[\"x-client-id\"]",
            "requests": 3000,
            "period_s": 60
        }]}
    });
    let mut vms: Vec<Vm> = (0..3).map(|_| start(&host, &config).unwrap()).collect();
    let req = HttpRequest::get("/x").header("x-client-id", "c1");
    // Interleave unevenly (VM i sends i + 1 requests per round) until every VM is refused
    // several times in a row: every token batched into a VM has then been spent.
    let drain = |vms: &mut [Vm]| {
        let mut admitted = 0;
        let mut refused_in_a_row = 0;
        while refused_in_a_row < 12 {
            for (i, vm) in vms.iter_mut().enumerate() {
                for _ in 0..=i {
                    match vm.request(&req).unwrap().status {
                        200 => {
                            admitted += 1;
                            refused_in_a_row = 0;
                        }
                        429 => refused_in_a_row += 1,
                        other => panic!("status {other}"),
                    }
                }
            }
        }
        admitted
    };
    assert_eq!(drain(&mut vms), 3000);
    // One virtual second later: exactly 50 more, wherever they land.
    host.advance_clock(Duration::from_secs(1));
    assert_eq!(drain(&mut vms), 50);
}

#[test]
fn counters_are_flushed_to_metrics_on_ticks() {
    let host = Host::new();
    let mut vm = start(&host, &json!({"policy": {"default_action": "allow"}})).unwrap();
    vm.request(&HttpRequest::get("/x")).unwrap();
    vm.advance(Duration::from_secs(1)).unwrap();
    let metrics = host.metrics();
    assert!(
        metrics
            .iter()
            .any(|(name, m)| name == "portcullis_decisions_total.decision.allow" && m.value == 1),
        "{metrics:?}"
    );
}

#[test]
fn remote_jwks_fetched_through_http_call_and_paused_request_resumed() {
    let host = Host::new();
    host.set_unix_seconds(1_700_000_000);
    let jwks =
        std::fs::read_to_string(common::workspace_root().join("policies/keys/jwks.json")).unwrap();
    host.on_http_call("idp", move |req| {
        assert_eq!(req.path(), "/jwks.json");
        portcullis_harness::HttpReply::ok(jwks.clone())
            .with_header("content-type", "application/json")
            .after(Duration::from_millis(50))
    });
    let mut config = jwt_config();
    config["jwt"]["providers"][0]["jwks"] =
        json!({"remote": {"cluster": "idp", "path": "/jwks.json"}});
    let mut a = start(&host, &config).unwrap();
    let mut b = start(&host, &config).unwrap();
    let keys = SigningKeys::load(&common::workspace_root().join("policies/keys/private.jwks.json"))
        .unwrap();
    let token = keys
        .sign(
            Some("demo-rsa-1"),
            &json!({"sub": "alice", "iss": "https://issuer.test", "aud": "api",
                    "iat": 1_700_000_000u64, "exp": 1_700_003_600u64}),
            None,
        )
        .unwrap();
    let ex = a.request(&HttpRequest::get("/api").bearer(&token)).unwrap();
    assert_eq!(ex.status, 200, "{ex:?}");
    assert!(!host.http_calls().is_empty());
    // The second worker uses the keys the first one fetched (shared data), or fetches itself.
    let ex = b.request(&HttpRequest::get("/api").bearer(&token)).unwrap();
    assert_eq!(ex.status, 200, "{ex:?}");
}
