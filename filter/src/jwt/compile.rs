//! Compiling the `jwt` configuration: providers (issuer, audiences, keys, token sources,
//! claim headers) and requirements. Everything is checked here, once; errors name the field.

use super::*;
use crate::error::{valid_name, ConfigError};
use crate::expr::Expr;
use crate::guard_index::GuardIndex;
use crate::metrics;
use claims::{ClaimPath, ClaimRules, SubjectRule};
use config::{JwksSource, ProviderConfig, RequirementConfig};
use jws::json_depth_ok;
use keys::{KeyPolicy, KeySet};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Authenticator {
    pub fn compile(config: &JwtConfig) -> Result<Authenticator, ConfigError> {
        let mut providers = Vec::with_capacity(config.providers.len());
        for (i, pc) in config.providers.iter().enumerate() {
            let field = format!("jwt.providers[{i}]");
            if providers.iter().any(|p: &Provider| p.name == pc.name) {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    format!("duplicate provider name `{}`", pc.name),
                ));
            }
            providers.push(compile_provider(pc, &field)?);
        }
        let mut rules = Vec::with_capacity(config.requirements.len());
        for (i, rc) in config.requirements.iter().enumerate() {
            let field = format!("jwt.requirements[{i}]");
            let when = Expr::compile(&rc.when)
                .map_err(|e| ConfigError::from_expr(format!("{field}.when"), &e))?;
            if when.uses_jwt() {
                return Err(ConfigError::new(
                    format!("{field}.when"),
                    "a requirement's `when` is evaluated before authentication and must not use `jwt`",
                ));
            }
            let require =
                compile_requirement(&rc.require, &providers, &format!("{field}.require"))?;
            rules.push(Rule {
                name: rc.name.clone(),
                when,
                require,
            });
        }
        let default = match &config.default_requirement {
            Some(rc) => compile_requirement(rc, &providers, "jwt.default_requirement")?,
            None => match providers.len() {
                0 => Requirement::None,
                1 => Requirement::Provider(0),
                n => Requirement::AnyOf((0..n).map(Requirement::Provider).collect()),
            },
        };
        if !matches!(config.keys_unavailable_status, 401 | 503) {
            return Err(ConfigError::new(
                "jwt.keys_unavailable_status",
                "must be 401 or 503",
            ));
        }
        let mut output_headers = BTreeSet::new();
        for p in &providers {
            output_headers.extend(p.payload_header.iter().cloned());
            output_headers.extend(p.claim_headers.iter().map(|(_, h)| h.clone()));
        }
        Ok(Authenticator {
            providers,
            guards: GuardIndex::build(rules.iter().map(|r| Some(&r.when))),
            rules,
            default,
            keys_unavailable_status: config.keys_unavailable_status,
            pending_deadline_ms: config.pending_deadline_ms,
            cache: config.cache.clone(),
            output_headers: output_headers.into_iter().collect(),
        })
    }
}

fn compile_requirement(
    rc: &RequirementConfig,
    providers: &[Provider],
    field: &str,
) -> Result<Requirement, ConfigError> {
    Ok(match rc {
        RequirementConfig::Provider(name) => {
            let i = providers
                .iter()
                .position(|p| p.name == *name)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.provider"),
                        format!("unknown provider `{name}`"),
                    )
                })?;
            Requirement::Provider(i)
        }
        RequirementConfig::AnyOf(list) | RequirementConfig::AllOf(list) => {
            let any = matches!(rc, RequirementConfig::AnyOf(_));
            let key = if any { "any_of" } else { "all_of" };
            if list.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.{key}"),
                    "must not be empty",
                ));
            }
            let children = list
                .iter()
                .enumerate()
                .map(|(j, c)| compile_requirement(c, providers, &format!("{field}.{key}[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if any {
                Requirement::AnyOf(children)
            } else {
                Requirement::AllOf(children)
            }
        }
        RequirementConfig::AllowMissing(_) => Requirement::AllowMissing,
        RequirementConfig::AllowMissingOrFailed(_) => Requirement::AllowMissingOrFailed,
        RequirementConfig::None(_) => Requirement::None,
    })
}

/// What every fetched key source needs: no HS* (remote sets never carry secrets), a cluster.
fn remote_source_check(
    field: &str,
    source_field: &str,
    algorithms: &[Alg],
    cluster: &str,
) -> Result<(), ConfigError> {
    if let Some(a) = algorithms.iter().find(|a| a.is_hmac()) {
        return Err(ConfigError::new(
            format!("{field}.algorithms"),
            format!(
                "{} needs an inline oct key; remote key sets never provide secrets",
                a.name()
            ),
        ));
    }
    if cluster.is_empty() {
        return Err(ConfigError::new(
            format!("{source_field}.cluster"),
            "must not be empty",
        ));
    }
    Ok(())
}

/// The provider's scope in the token cache: its name and a digest of its whole configuration,
/// so a token verified under other issuer, audience or key rules is never served from the
/// cache, and compiling the same configuration twice gives the same scope. (The shell also
/// starts a new cache on every reconfiguration.)
fn cache_scope(pc: &ProviderConfig) -> String {
    use std::hash::Hasher;
    let mut hasher = siphasher::sip::SipHasher13::new();
    hasher.write(format!("{pc:?}").as_bytes());
    format!("{}\0{:016x}", pc.name, hasher.finish())
}

fn compile_provider(pc: &ProviderConfig, field: &str) -> Result<Provider, ConfigError> {
    let name = pc.name.clone();
    if !valid_name(&name) {
        return Err(ConfigError::new(
            format!("{field}.name"),
            "must be 1-64 characters of [A-Za-z0-9_-]",
        ));
    }
    if pc.issuer.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.issuer"),
            "must not be empty",
        ));
    }
    let algorithms: Vec<Alg> = match &pc.algorithms {
        None => Alg::ALL.iter().copied().filter(|a| !a.is_hmac()).collect(),
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.algorithms"),
                    "must not be empty",
                ));
            }
            let mut out = Vec::new();
            for (j, name) in list.iter().enumerate() {
                let alg = Alg::parse(name).ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.algorithms[{j}]"),
                        if name.eq_ignore_ascii_case("none") {
                            "`none` is never accepted".to_owned()
                        } else {
                            format!("unsupported algorithm `{name}`")
                        },
                    )
                })?;
                out.push(alg);
            }
            out
        }
    };
    let timing_check = |t: &config::FetchTiming, f: &str| -> Result<(), ConfigError> {
        if t.timeout_ms == 0 || t.cache_duration_s == 0 {
            return Err(ConfigError::new(
                f.to_owned(),
                "timeout_ms and cache_duration_s must be positive",
            ));
        }
        Ok(())
    };
    let keys = match &pc.jwks {
        JwksSource::Inline(value) => {
            let f = format!("{field}.jwks.inline");
            let parsed;
            let value = match value {
                Value::String(text) => {
                    if !json_depth_ok(text.as_bytes(), 32) {
                        return Err(ConfigError::new(f, "JWKS nests too deeply"));
                    }
                    parsed = serde_json::from_str::<Value>(text)
                        .map_err(|e| ConfigError::new(f.clone(), format!("not JSON: {e}")))?;
                    &parsed
                }
                other => other,
            };
            let set = KeySet::from_value(value, KeyPolicy::Inline)
                .map_err(|e| ConfigError::new(f.clone(), e.0))?;
            if let Some(hs) = algorithms.iter().find(|a| a.is_hmac()) {
                if !set.keys.iter().any(|k| k.fits(*hs)) {
                    return Err(ConfigError::new(
                        format!("{field}.algorithms"),
                        format!(
                            "{} is listed but the key set has no oct key for it (at least the hash size)",
                            hs.name()
                        ),
                    ));
                }
            }
            if !set
                .keys
                .iter()
                .any(|k| algorithms.iter().any(|a| k.fits(*a)))
            {
                return Err(ConfigError::new(
                    f,
                    "no key fits the provider's algorithms (HS* must be listed explicitly, with an oct key of at least the hash size)",
                ));
            }
            ProviderKeys::Static(Arc::new(set))
        }
        JwksSource::Remote(r) => {
            let f = format!("{field}.jwks.remote");
            remote_source_check(field, &f, &algorithms, &r.cluster)?;
            if !r.path.starts_with('/') {
                return Err(ConfigError::new(format!("{f}.path"), "must start with `/`"));
            }
            timing_check(&r.timing(), &f)?;
            let authority = match &r.authority {
                Some(a) => a.clone(),
                None => remote::split_url(&pc.issuer)
                    .map(|(a, _)| a)
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("{f}.authority"),
                            "required when the issuer is not an http(s) URL",
                        )
                    })?,
            };
            ProviderKeys::Remote(RemoteSpec {
                provider: name.clone(),
                cluster: r.cluster.clone(),
                authority,
                kind: RemoteKind::Jwks {
                    path: r.path.clone(),
                },
                timing: r.timing(),
            })
        }
        JwksSource::Oidc(o) => {
            let f = format!("{field}.jwks.oidc");
            remote_source_check(field, &f, &algorithms, &o.cluster)?;
            timing_check(&o.timing(), &f)?;
            let (issuer_authority, issuer_path) =
                remote::split_url(&pc.issuer).ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.issuer"),
                        "OIDC discovery needs an http(s) issuer URL",
                    )
                })?;
            let base = issuer_path.trim_end_matches('/');
            ProviderKeys::Remote(RemoteSpec {
                provider: name.clone(),
                cluster: o.cluster.clone(),
                authority: o.authority.clone().unwrap_or(issuer_authority),
                kind: RemoteKind::Oidc {
                    path: format!("{base}/.well-known/openid-configuration"),
                    issuer: pc.issuer.clone(),
                },
                timing: o.timing(),
            })
        }
    };
    let mut sources = Vec::new();
    let headers = pc.from_headers.clone().unwrap_or_else(|| {
        vec![config::HeaderSource {
            name: "authorization".into(),
            value_prefix: Some("Bearer ".into()),
        }]
    });
    for (j, h) in headers.iter().enumerate() {
        let lower = h.name.to_ascii_lowercase();
        if !valid_header_name(&lower) {
            return Err(ConfigError::new(
                format!("{field}.from_headers[{j}].name"),
                "not a valid header name",
            ));
        }
        if h.value_prefix.as_deref().is_some_and(|p| p.contains(',')) {
            // `,` separates the values of a repeated header (see `find_candidates`).
            return Err(ConfigError::new(
                format!("{field}.from_headers[{j}].value_prefix"),
                "must not contain `,`",
            ));
        }
        sources.push(TokenSource::Header {
            name: lower,
            prefix: h.value_prefix.clone().filter(|p| !p.is_empty()),
        });
    }
    sources.extend(pc.from_params.iter().cloned().map(TokenSource::Param));
    sources.extend(pc.from_cookies.iter().cloned().map(TokenSource::Cookie));
    if sources.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.from_headers"),
            "the provider has no token location",
        ));
    }
    let required = pc
        .required_claims
        .iter()
        .enumerate()
        .map(|(j, c)| {
            ClaimPath::parse(c)
                .map_err(|e| ConfigError::new(format!("{field}.required_claims[{j}]"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut claim_headers = Vec::new();
    for (j, ch) in pc.claim_to_headers.iter().enumerate() {
        let path = ClaimPath::parse(&ch.claim)
            .map_err(|e| ConfigError::new(format!("{field}.claim_to_headers[{j}].claim"), e))?;
        let header = ch.header.to_ascii_lowercase();
        if !valid_header_name(&header) {
            return Err(ConfigError::new(
                format!("{field}.claim_to_headers[{j}].header"),
                "not a valid header name",
            ));
        }
        claim_headers.push((path, header));
    }
    let payload_header = match &pc.forward_payload_header {
        None => None,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            if !valid_header_name(&h) {
                return Err(ConfigError::new(
                    format!("{field}.forward_payload_header"),
                    "not a valid header name",
                ));
            }
            Some(h)
        }
    };
    if pc.max_token_bytes < 16 || pc.max_token_bytes > 1024 * 1024 {
        return Err(ConfigError::new(
            format!("{field}.max_token_bytes"),
            "must be between 16 and 1048576",
        ));
    }
    if pc.max_json_depth == 0 || pc.max_json_depth > 128 {
        return Err(ConfigError::new(
            format!("{field}.max_json_depth"),
            "must be between 1 and 128",
        ));
    }
    let subjects = pc.subjects.as_ref().map(|s| SubjectRule {
        exact: s.exact.clone(),
        prefixes: s.prefix.iter().chain(s.prefixes.iter()).cloned().collect(),
    });
    if subjects
        .as_ref()
        .is_some_and(|s| s.exact.is_empty() && s.prefixes.is_empty())
    {
        return Err(ConfigError::new(
            format!("{field}.subjects"),
            "give `exact` and/or `prefix`/`prefixes`",
        ));
    }
    let counter = |result: &str| metrics::JWT.with(&[&name, result]);
    let cache = |result: &str| metrics::JWT_CACHE.with(&[&name, result]);
    Ok(Provider {
        rules: ClaimRules {
            issuer: pc.issuer.clone(),
            audiences: pc.audiences.clone(),
            clock_skew_s: pc.clock_skew_s,
            max_lifetime_s: pc.max_lifetime_s,
            required,
            subjects,
        },
        algorithms,
        keys,
        sources,
        forward: pc.forward,
        payload_header,
        claim_headers,
        max_token_bytes: pc.max_token_bytes,
        max_json_depth: pc.max_json_depth,
        cache_scope: cache_scope(pc),
        c_ok: counter("ok"),
        c_missing: counter("missing"),
        c_multiple_tokens: counter("multiple_tokens"),
        c_invalid: format!("{}.reason.", counter("invalid")),
        c_cache_hit: cache("hit"),
        c_cache_miss: cache("miss"),
        c_keys_pending: counter("keys_pending"),
        c_keys_unavailable: counter("keys_unavailable"),
        name,
    })
}
