//! Shared fixtures for the benchmarks: the configurations the Envoy load script also uses.

use portcullis_filter::config::Config;
use serde_json::json;

/// The ten rules of `benches/envoy/envoy_load.py` (`TEN_RULES`), JWT-dependent.
pub fn ten_rules() -> serde_json::Value {
    json!([
        {"name": "deny-blocked-ua", "deny": "'user-agent' in request.headers && request.headers['user-agent'].contains('evil-bot')"},
        {"name": "deny-tenant-mismatch", "when": "'x-tenant' in request.headers", "deny": "request.headers['x-tenant'] != jwt.claims.tenant"},
        {"name": "deny-admin", "when": "request.url_path.startsWith('/admin')", "deny": "!('admin' in jwt.claims.groups)"},
        {"name": "deny-delete", "deny": "request.method == 'DELETE' && !('admin' in jwt.claims.groups)"},
        {"name": "deny-internal", "when": "request.url_path.startsWith('/internal')", "deny": "true"},
        {"name": "allow-health", "allow": "request.url_path == '/healthz'"},
        {"name": "allow-public", "allow": "request.url_path.startsWith('/public/')"},
        {"name": "allow-writes", "allow": "request.method in ['POST', 'PUT'] && 'write' in jwt.claims.scope.split(' ')"},
        {"name": "allow-groups", "allow": "request.method == 'GET' && jwt.claims.groups.exists(g, g == 'dev')"},
        {"name": "allow-reads", "allow": "request.method in ['GET', 'HEAD'] && jwt.provider == 'local'"}
    ])
}

pub const ISSUER: &str = "https://issuer.portcullis.local";
pub const AUDIENCE: &str = "portcullis-demo";

/// JWT (inline demo JWKS) + the ten rules + one rate limit keyed by a claim.
pub fn full_config(jwks: &serde_json::Value) -> Config {
    let config = json!({
        "jwt": {
            "providers": [{"name": "local", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"inline": jwks}}],
            "default_requirement": {"provider": "local"}
        },
        "policy": {"default_action": "deny", "rules": ten_rules()},
        "rate_limits": {"limits": [{"name": "per-user", "key": "jwt.claims.sub", "requests": 1000000000u64, "period_s": 1}]}
    });
    compile(&config)
}

pub fn compile(config: &serde_json::Value) -> Config {
    match Config::from_json(config.to_string().as_bytes()) {
        Ok(config) => config,
        Err(e) => panic!("benchmark config rejected: {e}"),
    }
}
