//! JWT authentication: token extraction, JWS verification (host crypto fast path, pure-Rust
//! fallback), claim checks, Envoy-style requirements, a per-VM token cache and remote JWKS.
//!
//! Everything is compiled once in [`Authenticator::compile`]; [`Authenticator::authenticate`]
//! is pure apart from the [`AuthnEnv`] it is handed. See docs/jwt.md.

pub mod alg;
pub mod attributes;
pub mod cache;
pub mod claims;
pub mod config;
pub mod der;
pub mod invalid;
pub mod json;
pub mod jws;
pub mod keys;
pub mod remote;

pub use alg::Alg;
pub use cache::{CacheConfig, TokenCache};
pub use config::JwtConfig;
pub use remote::{FetchRequest, JwksSync, RemoteKeySet, RemoteKeys, RemoteKind, RemoteSpec};

use crate::attributes::Attribute;
use crate::decision::{DenyReason, HeaderEdit, Refusal};
use crate::error::{valid_name, ConfigError};
use crate::expr::{Activation, Expr, JwtAttributes};
use crate::guard_index::GuardIndex;
use crate::ports::{Counters, HostCrypto};
use crate::request::RequestView;
use claims::{
    check_claim_types, check_claims, header_value, unix_seconds, ClaimPath, ClaimRules, SubjectRule,
};
use config::{JwksSource, ProviderConfig, RequirementConfig};
use invalid::{Cause, Invalid};
use jws::{json_depth_ok, parse_json_object, verify_compact_with};
use keys::{KeyPolicy, KeySet};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeSet;
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

/// Where a provider looks for its token (`from_headers`, `from_params`, `from_cookies`).
/// Public only so the benchmarks can time [`extract`]; the default source is
/// `Header { name: "authorization", prefix: Some("Bearer ") }`.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A header (name lower-case), with an optional case-insensitive value prefix.
    Header {
        name: String,
        prefix: Option<String>,
    },
    Param(String),
    Cookie(String),
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

/// Where a token was found: what `forward: false` removes before the request goes upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenLocation {
    Header(String),
    Param(String),
    Cookie(String),
}

impl TokenLocation {
    /// The request edit that removes the token from where it was found.
    fn strip(&self, request: &RequestView) -> Option<HeaderEdit> {
        match self {
            TokenLocation::Header(name) => Some(HeaderEdit::Remove(name.clone())),
            TokenLocation::Param(param) => {
                let (path, query) = request.path().split_once('?')?;
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                        percent_decode(key).as_deref() != Some(param.as_str())
                    })
                    .collect();
                let path = if kept.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}?{}", kept.join("&"))
                };
                Some(HeaderEdit::Set(":path".to_owned(), path))
            }
            TokenLocation::Cookie(cookie) => {
                let kept: Vec<&str> = request
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                    .flat_map(|(_, v)| v.split(';'))
                    .map(str::trim)
                    .filter(|pair| pair.split_once('=').is_none_or(|(n, _)| n.trim() != cookie))
                    .filter(|pair| !pair.is_empty())
                    .collect();
                Some(if kept.is_empty() {
                    HeaderEdit::Remove("cookie".to_owned())
                } else {
                    HeaderEdit::Set("cookie".to_owned(), kept.join("; "))
                })
            }
        }
    }
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
                Err(_) => counters.increment("portcullis.jwt.requirement_error", 1),
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
                    .increment(&format!("{}.{}", p.c_invalid, invalid.code), 1);
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

/// What a provider's token locations hold in one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Extracted<'r> {
    Missing,
    /// Exactly one token, and where it was.
    One(Cow<'r, str>, TokenLocation),
    /// More than one candidate: a token header with several values (Envoy joins a repeated
    /// header with `,`), a repeated parameter or cookie, or tokens in two locations. Which
    /// one is "the" token is a guess another component could make differently, and RFC 6750
    /// 2 allows one method per request: the request is refused (`invalid_request`).
    Several,
}

/// A second token, or a token next to another value of its location: the search ends there.
struct SecondToken;

/// Collects candidates across a provider's locations.
struct Candidates<'r> {
    first: Option<(Cow<'r, str>, TokenLocation)>,
}

impl<'r> Candidates<'r> {
    /// Fails on the second candidate.
    fn add(
        &mut self,
        token: Cow<'r, str>,
        location: impl FnOnce() -> TokenLocation,
    ) -> Result<(), SecondToken> {
        if self.first.is_some() {
            return Err(SecondToken);
        }
        self.first = Some((token, location()));
        Ok(())
    }
}

/// Finds the provider's token in every configured location (headers, then query
/// parameters, then cookies) and makes sure there is only one. Public only so the
/// benchmarks can time this stage on its own.
pub fn extract<'r>(sources: &[TokenSource], request: &'r RequestView) -> Extracted<'r> {
    match find_candidates(sources, request) {
        Ok(Candidates { first: None }) => Extracted::Missing,
        Ok(Candidates {
            first: Some((token, location)),
        }) => Extracted::One(token, location),
        Err(SecondToken) => Extracted::Several,
    }
}

fn find_candidates<'r>(
    sources: &[TokenSource],
    request: &'r RequestView,
) -> Result<Candidates<'r>, SecondToken> {
    let mut found = Candidates { first: None };
    for source in sources {
        // Values of this location, and how many of them are tokens: a token next to any
        // other value of the same location (`Bearer t, Basic x`, `?access_token=t&access_token=%`)
        // is one value too many.
        let mut values = 0usize;
        let mut tokens = 0usize;
        match source {
            TokenSource::Header { name, prefix } => {
                for v in request.headers.values_ignore_case(name) {
                    // A token never contains `,` (RFC 6750 b64token), so splitting undoes
                    // Envoy's merge of a repeated header and can't cut a token in two.
                    for element in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                        values += 1;
                        let token = match prefix {
                            None => Some(element),
                            Some(prefix) => element
                                .get(..prefix.len())
                                .filter(|head| head.eq_ignore_ascii_case(prefix))
                                .and_then(|_| element.get(prefix.len()..))
                                .map(str::trim)
                                .filter(|t| !t.is_empty()),
                        };
                        if let Some(token) = token {
                            tokens += 1;
                            found.add(Cow::Borrowed(token), || {
                                TokenLocation::Header(name.clone())
                            })?;
                        }
                    }
                }
            }
            TokenSource::Param(param) => {
                let path = request.path();
                let Some((_, query)) = path.split_once('?') else {
                    continue;
                };
                let query = query.split('#').next().unwrap_or_default();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if v.is_empty() || percent_decode(k).as_deref() != Some(param.as_str()) {
                        continue;
                    }
                    values += 1;
                    if let Some(token) = percent_decode(v).filter(|t| !t.is_empty()) {
                        tokens += 1;
                        found.add(Cow::Owned(token), || TokenLocation::Param(param.clone()))?;
                    }
                }
            }
            TokenSource::Cookie(cookie) => {
                for v in request.headers.values_ignore_case("cookie") {
                    for pair in v.split(';') {
                        if let Some((name, value)) = pair.trim().split_once('=') {
                            let value = value.trim().trim_matches('"');
                            if name.trim() == cookie && !value.is_empty() {
                                values += 1;
                                tokens += 1;
                                found.add(Cow::Borrowed(value), || {
                                    TokenLocation::Cookie(cookie.clone())
                                })?;
                            }
                        }
                    }
                }
            }
        }
        if tokens > 0 && values > 1 {
            return Err(SecondToken);
        }
    }
    Ok(found)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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
    let counter = |suffix: &str| format!("portcullis.jwt.{name}.{suffix}");
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
        c_invalid: counter("invalid"),
        c_cache_hit: counter("cache_hit"),
        c_cache_miss: counter("cache_miss"),
        c_keys_pending: counter("keys_pending"),
        c_keys_unavailable: counter("keys_unavailable"),
        name,
    })
}

#[cfg(test)]
mod tests;
