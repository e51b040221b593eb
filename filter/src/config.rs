//! The plugin configuration: parsed and compiled once in `on_configure`. Anything wrong is
//! reported with the path of the offending field (and, for CEL, file, line and column).

use crate::attributes::Attribute;
use crate::canonical::{RequestCheck, RequestConfig};
use crate::decision_log::{DecisionLog, DecisionLogConfig};
pub use crate::error::ConfigError;
use crate::global::GlobalLimiter;
use crate::jwt::{Authenticator, JwtConfig};
use crate::policy::{Policy, PolicyConfig};
use crate::ratelimit::{RateLimitConfig, RateLimiter};
use serde::Deserialize;
use std::collections::BTreeSet;

/// The JSON document Envoy hands the plugin (`configuration` in the Wasm filter config).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(default)]
    pub jwt: JwtConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    #[serde(default)]
    pub responses: ResponseConfig,
    #[serde(default)]
    pub request: RequestConfig,
    /// One JSON record per request, and what may be logged of a token (decision_log.rs).
    #[serde(default)]
    pub decision_log: Option<DecisionLogConfig>,
}

/// How answers look.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Leave the deciding rule's name out of deny bodies.
    pub hide_rule_name: bool,
    /// If set, a request header carrying the decision (`allow; rule=NAME`) is added for the
    /// upstream; the harness uses it to report which rule decided.
    pub decision_header: Option<String>,
    /// A header added to every local deny response (e.g. `x-portcullis-denied: true`).
    pub deny_header: Option<(String, String)>,
    /// Publish the decision to Envoy's filter state for access logs: `wasm.portcullis.decision`,
    /// `.rule`, `.error` and, for a verified token, `.jwt_provider` and `.jwt_sub`
    /// (`%FILTER_STATE(wasm.portcullis.rule:PLAIN)%`). One host call each: off by default.
    pub filter_state: bool,
}

/// The compiled configuration: everything the pipeline needs, nothing left to parse.
#[derive(Debug)]
pub struct Config {
    pub authenticator: Authenticator,
    pub policy: Policy,
    pub rate_limiter: RateLimiter,
    /// `scope: global` limits: asked of the rate-limit service after the local ones pass.
    pub global: GlobalLimiter,
    pub responses: ResponseConfig,
    /// What is refused before any policy reads the request (paths, repeated headers).
    pub request_check: RequestCheck,
    /// Host attributes some expression reads: the shell fetches exactly these per request.
    pub host_attributes: BTreeSet<Attribute>,
    pub decision_log: DecisionLog,
}

impl Config {
    /// Parses and compiles the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let plugin = parse_plugin_config(bytes)?;
        Config::compile(&plugin)
    }

    pub fn compile(plugin: &PluginConfig) -> Result<Config, ConfigError> {
        let authenticator = Authenticator::compile(&plugin.jwt)?;
        let policy = Policy::compile(&plugin.policy)?;
        let rate_limiter = RateLimiter::compile(&plugin.rate_limits)?;
        let decision_log = DecisionLog::compile(plugin.decision_log.as_ref())?;
        let global = GlobalLimiter::compile(&plugin.rate_limits)?;
        let host_attributes = authenticator
            .host_attributes()
            .into_iter()
            .chain(policy.host_attributes())
            .chain(rate_limiter.host_attributes())
            .chain(global.exprs().flat_map(crate::expr::Expr::host_attributes))
            .collect();
        let request_check = RequestCheck::compile(
            &plugin.request,
            authenticator
                .exprs()
                .chain(policy.exprs())
                .chain(rate_limiter.exprs())
                .chain(global.exprs()),
        );
        Ok(Config {
            request_check,
            authenticator,
            policy,
            rate_limiter,
            global,
            responses: plugin.responses.clone(),
            host_attributes,
            decision_log,
        })
    }
}

/// JSON → [`PluginConfig`], with the failing field's path in the error.
pub fn parse_plugin_config(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(PluginConfig::default());
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(root)".to_owned()
        } else {
            path
        };
        ConfigError::new(field, e.into_inner().to_string())
    })
}
