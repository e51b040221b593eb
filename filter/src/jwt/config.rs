//! The `jwt` section of the plugin configuration, as JSON. Compiled by
//! [`super::Authenticator::compile`]; see docs/jwt.md for the reference.

use super::cache::CacheConfig;
use crate::expr::ExprSource;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub requirements: Vec<RequirementRule>,
    /// When absent and providers exist: any_of all providers (fail closed).
    #[serde(default)]
    pub default_requirement: Option<RequirementConfig>,
    /// Status when a provider's keys are unavailable (never fetched within the deadline, or
    /// older than `max_stale_s`): 503 (default) or 401.
    #[serde(default = "default_keys_unavailable_status")]
    pub keys_unavailable_status: u16,
    /// How long the shell may hold a request while the first key set is fetched.
    #[serde(default = "default_pending_deadline_ms")]
    pub pending_deadline_ms: u64,
    #[serde(default)]
    pub cache: CacheConfig,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            providers: Vec::new(),
            requirements: Vec::new(),
            default_requirement: None,
            keys_unavailable_status: default_keys_unavailable_status(),
            pending_deadline_ms: default_pending_deadline_ms(),
            cache: CacheConfig::default(),
        }
    }
}

fn default_keys_unavailable_status() -> u16 {
    503
}
fn default_pending_deadline_ms() -> u64 {
    3000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: String,
    /// Absent or empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Default: every asymmetric algorithm. HS* only if listed and an `oct` key is configured.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    pub jwks: JwksSource,
    /// Default: `[{"name": "authorization", "value_prefix": "Bearer "}]`.
    #[serde(default)]
    pub from_headers: Option<Vec<HeaderSource>>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default = "default_skew")]
    pub clock_skew_s: u64,
    #[serde(default)]
    pub max_lifetime_s: Option<u64>,
    /// Claim paths that must be present (and not null).
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default)]
    pub subjects: Option<SubjectsConfig>,
    /// Keep the token header for the upstream. Default false: it is removed.
    #[serde(default)]
    pub forward: bool,
    /// Header that receives the verified payload, base64url.
    #[serde(default)]
    pub forward_payload_header: Option<String>,
    #[serde(default)]
    pub claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
}

fn default_skew() -> u64 {
    60
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_max_json_depth() -> usize {
    32
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSource {
    pub name: String,
    /// Compared case-insensitively (RFC 6750: the scheme is case-insensitive).
    #[serde(default)]
    pub value_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectsConfig {
    /// `sub` must equal one of these...
    #[serde(default)]
    pub exact: Vec<String>,
    /// ...or start with one of these.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub prefixes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// A claim path (see docs/jwt.md): `sub`, `org.team`, `["https://example.com/roles"]`.
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum JwksSource {
    /// A JWKS object, or a JSON string holding one.
    Inline(serde_json::Value),
    Remote(RemoteJwksConfig),
    Oidc(OidcConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    pub cluster: String,
    pub path: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_cache_duration_s")]
    pub cache_duration_s: u64,
    #[serde(default = "default_max_stale_s")]
    pub max_stale_s: u64,
    #[serde(default = "default_refetch_interval_s")]
    pub refetch_unknown_kid_min_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub cluster: String,
    /// Default: the issuer's host.
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_cache_duration_s")]
    pub cache_duration_s: u64,
    #[serde(default = "default_max_stale_s")]
    pub max_stale_s: u64,
    #[serde(default = "default_refetch_interval_s")]
    pub refetch_unknown_kid_min_interval_s: u64,
}

/// When and how long to fetch, shared by `remote` and `oidc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchTiming {
    pub timeout_ms: u64,
    pub cache_duration_s: u64,
    pub max_stale_s: u64,
    pub refetch_unknown_kid_min_interval_s: u64,
}

impl Default for FetchTiming {
    fn default() -> Self {
        FetchTiming {
            timeout_ms: default_timeout_ms(),
            cache_duration_s: default_cache_duration_s(),
            max_stale_s: default_max_stale_s(),
            refetch_unknown_kid_min_interval_s: default_refetch_interval_s(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_cache_duration_s() -> u64 {
    300
}
fn default_max_stale_s() -> u64 {
    3600
}
fn default_refetch_interval_s() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementRule {
    pub name: String,
    /// CEL over request attributes (must not use `jwt`).
    pub when: ExprSource,
    pub require: RequirementConfig,
}

/// Mirrors Envoy's `JwtRequirement`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RequirementConfig {
    Provider(String),
    AnyOf(Vec<RequirementConfig>),
    AllOf(Vec<RequirementConfig>),
    AllowMissing(Empty),
    AllowMissingOrFailed(Empty),
    None(Empty),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

impl RemoteJwksConfig {
    pub fn timing(&self) -> FetchTiming {
        FetchTiming {
            timeout_ms: self.timeout_ms,
            cache_duration_s: self.cache_duration_s,
            max_stale_s: self.max_stale_s,
            refetch_unknown_kid_min_interval_s: self.refetch_unknown_kid_min_interval_s,
        }
    }
}

impl OidcConfig {
    pub fn timing(&self) -> FetchTiming {
        FetchTiming {
            timeout_ms: self.timeout_ms,
            cache_duration_s: self.cache_duration_s,
            max_stale_s: self.max_stale_s,
            refetch_unknown_kid_min_interval_s: self.refetch_unknown_kid_min_interval_s,
        }
    }
}
