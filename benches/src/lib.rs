//! Shared fixtures for the benchmarks: the configurations the Envoy load script also uses.

use portcullis_filter::config::Config;
use serde_json::json;

/// The ten rules of `benches/fixtures/ten-rules.json` (shared with the Envoy load script),
/// JWT-dependent.
pub fn ten_rules() -> serde_json::Value {
    rules("with_jwt")
}

/// The same shapes over request attributes only.
pub fn ten_rules_without_jwt() -> serde_json::Value {
    rules("without_jwt")
}

fn rules(which: &str) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/ten-rules.json")).unwrap_or_default();
    all.get(which).cloned().unwrap_or_default()
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

/// `n` path-scoped rules, the shape of issue 20's scaling targets: rule `svc-N` applies under
/// `/svc-N/` and allows `GET` for members of `team-(N mod 10)`. `indexable: false` appends
/// `|| false` to each guard: the same evaluation cost per guard, but a shape the guard index
/// leaves alone, so every guard is evaluated for every request (the cost without the index).
pub fn path_scoped_rules(n: usize, indexable: bool) -> serde_json::Value {
    let tail = if indexable { "" } else { " || false" };
    (0..n)
        .map(|i| {
            json!({
                "name": format!("svc-{i}"),
                "when": format!("request.url_path.startsWith(\"/svc-{i}/\"){tail}"),
                "allow": format!("request.method == \"GET\" && \"team-{}\" in jwt.claims.groups", i % 10),
            })
        })
        .collect()
}
