//! JWT authentication: token extraction, JWS verification (host crypto fast path, pure-Rust
//! fallback), claim checks, Envoy-style requirements, a per-VM token cache and remote JWKS.
//!
//! Everything is compiled once in [`Authenticator::compile`]; [`Authenticator::authenticate`]
//! is pure apart from the [`AuthnEnv`] it is handed. See docs/jwt.md.
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | requirement evaluation: [`Authenticator::authenticate`] |
//! | `compile.rs` | providers and requirements from [`JwtConfig`] |
//! | `config.rs` | the `jwt` section of the configuration |
//! | `extract.rs` | token sources, what a request holds, stripping |
//! | `jws.rs` | compact JWS parsing and signature verification |
//! | `alg.rs`, `der.rs`, `json.rs`, `keys.rs` | algorithms, DER, JOSE text, JWKs |
//! | `claims.rs`, `invalid.rs` | registered-claim checks; why a token was refused |
//! | `attributes.rs` | the verified token as CEL values |
//! | `cache.rs`, `remote.rs` | per-VM token cache; remote JWKS state machine |

pub mod alg;
pub mod attributes;
pub mod cache;
pub mod claims;
mod compile;
pub mod config;
pub mod der;
mod extract;
pub mod invalid;
pub mod json;
pub mod jws;
pub mod keys;
pub mod remote;

pub use alg::Alg;
pub use cache::{CacheConfig, TokenCache};
pub use config::JwtConfig;
pub use extract::{extract, Extracted, TokenLocation, TokenSource};
pub use remote::{FetchRequest, JwksSync, RemoteKeySet, RemoteKeys, RemoteKind, RemoteSpec};

use crate::attributes::Attribute;
use crate::decision::{DenyReason, HeaderEdit, Refusal};
use crate::expr::{Activation, Expr, JwtAttributes};
use crate::guard_index::GuardIndex;
use crate::metrics;
use crate::ports::{Counters, HostCrypto};
use crate::request::RequestView;
use claims::{check_claim_types, check_claims, header_value, unix_seconds, ClaimPath, ClaimRules};
use invalid::{Cause, Invalid};
use jws::{json_depth_ok, parse_json_object, verify_compact_with};
use keys::KeySet;
use serde_json::Value;
use std::sync::Arc;
use std::time::SystemTime;

/// A token whose signature and claims were verified.
#[derive(Debug)]
pub struct VerifiedToken {
    pub provider: String,
    /// Header and claims as CEL values, converted once (cached with the token).
    pub attributes: JwtAttributes,
    /// `claim_to_headers` and `forward_payload_header` edits for the upstream.
    pub header_edits: Vec<HeaderEdit>,
    /// The token's `exp`, Unix seconds.
    pub exp: Option<i64>,
}

/// What authentication needs from the outside world for one request.
pub struct AuthnEnv<'a> {
    pub now: SystemTime,
    pub crypto: &'a dyn HostCrypto,
    /// Remote key sets; authentication also records refetch requests here.
    pub remote_keys: &'a mut RemoteKeys,
    pub cache: &'a mut TokenCache,
    pub counters: &'a mut dyn Counters,
}

#[derive(Debug)]
pub enum AuthnOutcome {
    /// Authentication requirements are met. `token` is the verified token, if any.
    Pass {
        token: Option<Arc<VerifiedToken>>,
        request_headers: Vec<HeaderEdit>,
    },
    /// 401 (or 503 when keys are unavailable); [`Refusal::answer`] adds RFC 6750 headers.
    Fail(Refusal),
    /// Keys for these providers have not been fetched yet.
    KeysPending(Vec<String>),
}

/// A compiled requirement (mirrors Envoy's `JwtRequirement`).
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Provider(usize),
    AnyOf(Vec<Requirement>),
    AllOf(Vec<Requirement>),
    AllowMissing,
    AllowMissingOrFailed,
    None,
}

#[derive(Debug)]
enum ProviderKeys {
    Static(Arc<KeySet>),
    Remote(RemoteSpec),
}

#[derive(Debug)]
struct Provider {
    name: String,
    rules: ClaimRules,
    algorithms: Vec<Alg>,
    keys: ProviderKeys,
    sources: Vec<TokenSource>,
    forward: bool,
    payload_header: Option<String>,
    claim_headers: Vec<(ClaimPath, String)>,
    max_token_bytes: usize,
    max_json_depth: usize,
    /// Token cache scope: provider name + configuration epoch.
    cache_scope: String,
    c_ok: String,
    c_missing: String,
    c_multiple_tokens: String,
    c_invalid: String,
    c_cache_hit: String,
    c_cache_miss: String,
    c_keys_pending: String,
    c_keys_unavailable: String,
}

#[derive(Debug)]
struct Rule {
    name: String,
    when: Expr,
    require: Requirement,
}

/// The compiled `jwt` configuration.
#[derive(Debug)]
pub struct Authenticator {
    providers: Vec<Provider>,
    rules: Vec<Rule>,
    /// The requirements whose `when` may hold for a request (see [`crate::guard_index`]).
    guards: GuardIndex,
    default: Requirement,
    keys_unavailable_status: u16,
    pending_deadline_ms: u64,
    cache: CacheConfig,
    /// Every header this filter writes from claims: removed from every passing request first,
    /// so a client can never inject them.
    output_headers: Vec<String>,
}

/// The result of one provider for one request (memoised per request).
#[derive(Debug, Clone)]
enum ProviderResult {
    Missing,
    /// More than one token in the provider's locations ([`Extracted::Several`]).
    MultipleTokens,
    Verified(Arc<VerifiedToken>, TokenLocation),
    Invalid(Invalid),
    Pending,
    Unavailable,
}

#[derive(Debug)]
enum Eval {
    Pass(Vec<usize>),
    Missing,
    MultipleTokens,
    Invalid(Invalid),
    Pending(Vec<String>),
    Unavailable,
}

impl Authenticator {
    pub fn host_attributes(&self) -> Vec<Attribute> {
        let mut all: Vec<Attribute> = self
            .rules
            .iter()
            .flat_map(|r| r.when.host_attributes())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Every compiled expression: the requirement guards.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.rules.iter().map(|r| &r.when)
    }

    /// The remote key sources, for [`JwksSync::new`].
    pub fn remote_specs(&self) -> Vec<RemoteSpec> {
        self.providers
            .iter()
            .filter_map(|p| match &p.keys {
                ProviderKeys::Remote(spec) => Some(spec.clone()),
                ProviderKeys::Static(_) => None,
            })
            .collect()
    }

    /// A remote-JWKS state machine for this configuration (one per VM).
    pub fn jwks_sync(&self, owner: &str, seed: u64) -> JwksSync {
        JwksSync::new(self.remote_specs(), owner, seed)
    }

    /// A token cache sized by `jwt.cache` (one per VM).
    pub fn new_token_cache(&self) -> TokenCache {
        TokenCache::new(self.cache.clone())
    }

    /// How long the shell may hold a `KeysPending` request before answering
    /// [`Authenticator::keys_unavailable`].
    pub fn pending_deadline_ms(&self) -> u64 {
        self.pending_deadline_ms
    }

    /// The refusal when keys did not arrive in time (or are too stale).
    pub fn keys_unavailable(&self) -> Refusal {
        Refusal::new(
            DenyReason::KeysUnavailable {
                status: self.keys_unavailable_status,
            },
            None,
        )
    }

    /// The requirement that applies to a request, and the rule that chose it.
    pub fn requirement_for(
        &self,
        activation: &Activation<'_>,
        counters: &mut dyn Counters,
    ) -> (&Requirement, Option<&str>) {
        let candidates = self.guards.candidates(activation);
        for rule in candidates.iter().filter_map(|i| self.rules.get(i)) {
            match rule.when.eval_bool(activation) {
                Ok(true) => return (&rule.require, Some(&rule.name)),
                Ok(false) => {}
                Err(_) => counters.increment(metrics::JWT_REQUIREMENT_ERRORS.plain(), 1),
            }
        }
        (&self.default, None)
    }

    /// `activation` has no `jwt` yet; requirement `when` expressions are evaluated against it.
    pub fn authenticate(
        &self,
        activation: &Activation<'_>,
        env: &mut AuthnEnv<'_>,
    ) -> AuthnOutcome {
        let (requirement, rule) = self.requirement_for(activation, env.counters);
        if *requirement == Requirement::None {
            return AuthnOutcome::Pass {
                token: None,
                request_headers: self.strip_output_headers(),
            };
        }
        env.cache.configure(self.cache.clone());
        let mut memo: Vec<Option<ProviderResult>> = vec![None; self.providers.len()];
        let eval = self.eval(requirement, activation.request, env, &mut memo);
        let rule = rule.map(str::to_owned);
        match eval {
            Eval::Pass(used) => {
                let mut request_headers = self.strip_output_headers();
                let mut token = None;
                for i in used {
                    let (Some(Some(ProviderResult::Verified(t, source))), Some(p)) =
                        (memo.get(i), self.providers.get(i))
                    else {
                        continue;
                    };
                    if !p.forward {
                        request_headers.extend(source.strip(activation.request));
                    }
                    request_headers.extend(t.header_edits.iter().cloned());
                    if token.is_none() {
                        token = Some(Arc::clone(t));
                    }
                }
                AuthnOutcome::Pass {
                    token,
                    request_headers,
                }
            }
            Eval::Missing => AuthnOutcome::Fail(Refusal::new(DenyReason::MissingToken, rule)),
            Eval::MultipleTokens => {
                AuthnOutcome::Fail(Refusal::new(DenyReason::MultipleTokens, rule))
            }
            Eval::Invalid(invalid) => {
                AuthnOutcome::Fail(Refusal::new(DenyReason::InvalidToken(invalid), rule))
            }
            Eval::Pending(providers) => AuthnOutcome::KeysPending(providers),
            Eval::Unavailable => AuthnOutcome::Fail(Refusal {
                rule,
                ..self.keys_unavailable()
            }),
        }
    }

    fn strip_output_headers(&self) -> Vec<HeaderEdit> {
        self.output_headers
            .iter()
            .map(|h| HeaderEdit::Remove(h.clone()))
            .collect()
    }

    fn eval(
        &self,
        requirement: &Requirement,
        request: &RequestView,
        env: &mut AuthnEnv<'_>,
        memo: &mut Vec<Option<ProviderResult>>,
    ) -> Eval {
        match requirement {
            Requirement::None => Eval::Pass(Vec::new()),
            Requirement::Provider(i) => match self.provider_result(*i, request, env, memo) {
                ProviderResult::Verified(..) => Eval::Pass(vec![*i]),
                ProviderResult::Missing => Eval::Missing,
                ProviderResult::MultipleTokens => Eval::MultipleTokens,
                ProviderResult::Invalid(e) => Eval::Invalid(e),
                ProviderResult::Pending => Eval::Pending(self.name_of(*i)),
                ProviderResult::Unavailable => Eval::Unavailable,
            },
            Requirement::AnyOf(children) => {
                let results: Vec<Eval> = {
                    let mut out = Vec::with_capacity(children.len());
                    for child in children {
                        let r = self.eval(child, request, env, memo);
                        if matches!(r, Eval::Pass(_)) {
                            return r;
                        }
                        out.push(r);
                    }
                    out
                };
                combine_failures(results)
            }
            Requirement::AllOf(children) => {
                let mut used = Vec::new();
                for child in children {
                    match self.eval(child, request, env, memo) {
                        Eval::Pass(u) => used.extend(u),
                        other => return other,
                    }
                }
                Eval::Pass(used)
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                let lenient = *requirement == Requirement::AllowMissingOrFailed;
                let mut results = Vec::with_capacity(self.providers.len());
                for i in 0..self.providers.len() {
                    let r = match self.provider_result(i, request, env, memo) {
                        ProviderResult::Verified(..) => return Eval::Pass(vec![i]),
                        ProviderResult::Missing => Eval::Missing,
                        ProviderResult::MultipleTokens => Eval::MultipleTokens,
                        ProviderResult::Invalid(e) => Eval::Invalid(e),
                        ProviderResult::Pending => Eval::Pending(self.name_of(i)),
                        ProviderResult::Unavailable => Eval::Unavailable,
                    };
                    results.push(r);
                }
                match combine_failures(results) {
                    Eval::Missing => Eval::Pass(Vec::new()),
                    Eval::Invalid(_) | Eval::MultipleTokens | Eval::Unavailable if lenient => {
                        Eval::Pass(Vec::new())
                    }
                    other => other,
                }
            }
        }
    }

    fn name_of(&self, i: usize) -> Vec<String> {
        self.providers
            .get(i)
            .map(|p| p.name.clone())
            .into_iter()
            .collect()
    }

    fn provider_result(
        &self,
        i: usize,
        request: &RequestView,
        env: &mut AuthnEnv<'_>,
        memo: &mut [Option<ProviderResult>],
    ) -> ProviderResult {
        if let Some(Some(done)) = memo.get(i) {
            return done.clone();
        }
        let result = match self.providers.get(i) {
            Some(p) => self.run_provider(p, request, env),
            None => ProviderResult::Missing,
        };
        if let Some(slot) = memo.get_mut(i) {
            *slot = Some(result.clone());
        }
        result
    }

    fn run_provider(
        &self,
        p: &Provider,
        request: &RequestView,
        env: &mut AuthnEnv<'_>,
    ) -> ProviderResult {
        let (token, source) = match extract(&p.sources, request) {
            Extracted::One(token, source) => (token, source),
            Extracted::Missing => {
                env.counters.increment(&p.c_missing, 1);
                return ProviderResult::Missing;
            }
            Extracted::Several => {
                env.counters.increment(&p.c_multiple_tokens, 1);
                return ProviderResult::MultipleTokens;
            }
        };
        let now = unix_seconds(env.now);
        let (keys, generation) = match &p.keys {
            ProviderKeys::Static(set) => (Arc::clone(set), 0),
            ProviderKeys::Remote(spec) => match env.remote_keys.get(&p.name) {
                None => {
                    env.counters.increment(&p.c_keys_pending, 1);
                    return ProviderResult::Pending;
                }
                Some(set) => {
                    let usable_until = set
                        .fetched_at
                        .saturating_add(
                            i64::try_from(spec.timing.cache_duration_s).unwrap_or(i64::MAX),
                        )
                        .saturating_add(i64::try_from(spec.timing.max_stale_s).unwrap_or(i64::MAX));
                    if now >= usable_until {
                        env.counters.increment(&p.c_keys_unavailable, 1);
                        return ProviderResult::Unavailable;
                    }
                    (Arc::clone(&set.keys), set.generation)
                }
            },
        };
        let cached = env.cache.is_enabled();
        if cached {
            if let Some(hit) = env.cache.get(&p.cache_scope, &token, now, generation) {
                env.counters.increment(&p.c_cache_hit, 1);
                env.counters.increment(&p.c_ok, 1);
                return ProviderResult::Verified(hit, source);
            }
            env.counters.increment(&p.c_cache_miss, 1);
        }
        match verify_token(p, &token, &keys, env.crypto, now) {
            Ok(verified) => {
                let skew = i64::try_from(p.rules.clock_skew_s).unwrap_or(i64::MAX);
                let ttl = i64::try_from(env.cache.max_ttl_s()).unwrap_or(i64::MAX);
                let expires_at = match verified.exp {
                    Some(exp) => exp.saturating_add(skew),
                    None => now.saturating_add(ttl),
                };
                let bytes = token.len() * 4 + 256;
                let verified = Arc::new(verified);
                if cached {
                    env.cache.insert(
                        &p.cache_scope,
                        &token,
                        Arc::clone(&verified),
                        expires_at,
                        generation,
                        bytes,
                        now,
                    );
                }
                env.counters.increment(&p.c_ok, 1);
                ProviderResult::Verified(verified, source)
            }
            Err(invalid) => {
                if invalid.code == Cause::UnknownKid && matches!(p.keys, ProviderKeys::Remote(_)) {
                    env.remote_keys.request_refetch(&p.name);
                }
                env.counters
                    .increment(&format!("{}{}", p.c_invalid, invalid.code), 1);
                ProviderResult::Invalid(invalid)
            }
        }
    }
}

/// Most relevant failure among alternatives: pending keys (the token may yet verify), then
/// several tokens (a malformed request, whatever the keys), then unavailable keys, then the
/// first invalid token, else missing.
fn combine_failures(results: Vec<Eval>) -> Eval {
    let mut pending = Vec::new();
    let mut multiple = false;
    let mut unavailable = false;
    let mut invalid = None;
    for r in results {
        match r {
            Eval::Pass(u) => return Eval::Pass(u),
            Eval::Pending(p) => pending.extend(p),
            Eval::MultipleTokens => multiple = true,
            Eval::Unavailable => unavailable = true,
            Eval::Invalid(e) => {
                if invalid.is_none() {
                    invalid = Some(e);
                }
            }
            Eval::Missing => {}
        }
    }
    if !pending.is_empty() {
        pending.sort();
        pending.dedup();
        Eval::Pending(pending)
    } else if multiple {
        Eval::MultipleTokens
    } else if unavailable {
        Eval::Unavailable
    } else if let Some(e) = invalid {
        Eval::Invalid(e)
    } else {
        Eval::Missing
    }
}

/// Verifies one token for one provider: JWS, then claims. Pure.
fn verify_token(
    p: &Provider,
    token: &str,
    keys: &KeySet,
    host: &dyn HostCrypto,
    now: i64,
) -> Result<VerifiedToken, Invalid> {
    let (jws, claims) = verify_compact_with(
        token,
        &keys.keys,
        &p.algorithms,
        host,
        p.max_token_bytes,
        p.max_json_depth,
        |jws| {
            if !json_depth_ok(&jws.payload, p.max_json_depth) {
                return Err(Invalid::new(Cause::Malformed, "payload nests too deeply"));
            }
            let claims = parse_json_object(&jws.payload, "payload")?;
            // Malformed for every provider, so refused before the issuer filter and any crypto.
            check_claim_types(&claims)?;
            // Cheap issuer filter before any crypto (several providers may share a header).
            if claims.get("iss").and_then(Value::as_str) != Some(p.rules.issuer.as_str()) {
                return Err(Invalid::new(Cause::WrongIssuer, "wrong issuer"));
            }
            Ok(claims)
        },
    )?;
    let exp = check_claims(&claims, &p.rules, now)?;
    let mut header_edits = Vec::new();
    if let Some(header) = &p.payload_header {
        header_edits.push(HeaderEdit::Set(header.clone(), jws.payload_b64.clone()));
    }
    for (path, header) in &p.claim_headers {
        if let Some(value) = path.lookup(&claims).and_then(header_value) {
            header_edits.push(HeaderEdit::Set(header.clone(), value));
        }
    }
    let attributes =
        JwtAttributes::from_json_owned(&p.name, Value::Object(jws.header), Value::Object(claims));
    Ok(VerifiedToken {
        provider: p.name.clone(),
        attributes,
        header_edits,
        exp,
    })
}

#[cfg(test)]
mod tests;
