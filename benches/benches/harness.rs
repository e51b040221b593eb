//! Requests/s through the real `.wasm` on the portcullis harness (wasmtime/cranelift): one VM,
//! one request at a time, the whole Envoy stream per iteration (context create, request
//! headers, upstream response headers, log/done/delete).
//!
//! Variants: a cached RS256 token + 10 rules + 1 limit (allowed), a new RS256 token every
//! request (token cache off: the harness's emulated host `verify_signature` checks it), no token
//! (401), rate limited (429), the empty policy (the floor) and 10 rules without a token (403).
//!
//! The `.wasm` is `$PORTCULLIS_WASM`, else `out/portcullis.wasm` (run `scripts/build.sh`).
//! See docs/harness.md ("Speed") and docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_benches::{ten_rules, AUDIENCE, ISSUER};
use portcullis_harness::{Host, HttpRequest, LogLevel, Vm, VmOptions, WasmModule};
use serde_json::json;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

/// The virtual clock: the fixture token is valid from 2023 to 2100.
const NOW_S: u64 = 1_800_000_000;

fn wasm_path() -> PathBuf {
    let path = match std::env::var_os("PORTCULLIS_WASM") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../out/portcullis.wasm"),
    };
    if !path.exists() {
        panic!(
            "{} not found: build the filter first with `scripts/build.sh` \
             (or point PORTCULLIS_WASM at a portcullis .wasm)",
            path.display()
        );
    }
    path
}

fn jwks() -> serde_json::Value {
    let text = include_str!("../../policies/keys/jwks.json");
    serde_json::from_str(text).unwrap_or_default()
}

/// `portcullis_benches::full_config` as the plugin's JSON configuration.
fn full_config() -> serde_json::Value {
    json!({
        "jwt": {
            "providers": [{"name": "local", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"inline": jwks()}}],
            "default_requirement": {"provider": "local"}
        },
        "policy": {"default_action": "deny", "rules": ten_rules()},
        "rate_limits": {"limits": [{"name": "per-user", "key": "jwt.claims.sub", "requests": 1000000000u64, "period_s": 1}]}
    })
}

/// [`full_config`] with the token cache disabled: every request verifies the token again.
fn full_config_uncached() -> serde_json::Value {
    let mut config = full_config();
    config["jwt"]["cache"] = json!({"max_entries": 0});
    config
}

/// One rate limit keyed by a header (as the native `pipeline` bench's), one request a day:
/// after the first request every request is refused.
fn exhausted_limit_config() -> serde_json::Value {
    json!({
        "policy": {"default_action": "allow"},
        "rate_limits": {"limits": [{"name": "per-client", "key": "request.headers['x-client-id']", "requests": 1, "period_s": 86400}]}
    })
}

/// The request of the native `pipeline` bench.
fn request(token: Option<&str>) -> HttpRequest {
    let req = HttpRequest::get("/api/orders?page=2")
        .header("user-agent", "wrk")
        .header("x-tenant", "acme")
        .header("x-client-id", "load");
    match token {
        Some(t) => req.bearer(t),
        None => req,
    }
}

/// One proxy with one VM running `config`, its clock at `NOW_S`, logging at info (as Envoy's
/// default); checks the first answer's status.
fn vm(module: &WasmModule, config: &serde_json::Value, req: &HttpRequest, status: u16) -> Vm {
    let host = Host::new();
    host.set_unix_seconds(NOW_S);
    host.set_log_level(LogLevel::Info);
    let mut vm = match Vm::start(&host, module, VmOptions::new(config.to_string())) {
        Ok(vm) => vm,
        Err(e) => panic!("VM start failed: {e}"),
    };
    match vm.request(req) {
        Ok(ex) => assert_eq!(ex.status, status, "{ex:?}"),
        Err(e) => panic!("first request failed: {e}"),
    }
    vm
}

/// One request; the host's log (the 10-rule variant logs a line per request) is emptied so a
/// long run doesn't grow it.
fn send(vm: &mut Vm, req: &HttpRequest) {
    let ex = vm.request(black_box(req));
    vm.host().clear_logs();
    let _ = black_box(ex);
}

fn bench(c: &mut Criterion) {
    let module = match WasmModule::load(wasm_path()) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let token = include_str!("../fixtures/alice-rs256.jwt").trim();
    let mut group = c.benchmark_group("harness");
    group.throughput(Throughput::Elements(1));

    let with_token = request(Some(token));
    let mut full = vm(&module, &full_config(), &with_token, 200);
    group.bench_function("cached RS256 token + 10 rules + 1 limit", |b| {
        b.iter(|| send(&mut full, &with_token))
    });

    let mut uncached = vm(&module, &full_config_uncached(), &with_token, 200);
    group.bench_function(
        "new RS256 token every request (cache off, host verify_signature) + 10 rules + 1 limit",
        |b| b.iter(|| send(&mut uncached, &with_token)),
    );

    let anon = request(None);
    let mut missing = vm(&module, &full_config(), &anon, 401);
    group.bench_function("no token (401)", |b| b.iter(|| send(&mut missing, &anon)));

    // The first request takes the bucket's only token; every later one is refused.
    let mut limited = vm(&module, &exhausted_limit_config(), &anon, 200);
    match limited.request(&anon) {
        Ok(ex) => assert_eq!(ex.status, 429, "{ex:?}"),
        Err(e) => panic!("second request failed: {e}"),
    }
    group.bench_function("rate limited (429)", |b| {
        b.iter(|| send(&mut limited, &anon))
    });

    let mut empty = vm(
        &module,
        &json!({"policy": {"default_action": "allow"}}),
        &anon,
        200,
    );
    group.bench_function("empty policy (host + filter floor)", |b| {
        b.iter(|| send(&mut empty, &anon))
    });

    // As the native bench: the tenant rule needs a token, so it fails closed (403).
    let policy_only = json!({"policy": {"default_action": "deny", "rules": ten_rules()}});
    let mut rules = vm(&module, &policy_only, &anon, 403);
    group.bench_function("10 rules, no token", |b| b.iter(|| send(&mut rules, &anon)));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
