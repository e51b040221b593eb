//! Global rate limits: limits counted by a rate-limit service (Envoy's RLS protocol,
//! [`crate::rls`]) shared by every proxy, not by this proxy's shared data.
//!
//! A limit with `scope: global` names descriptor entries as CEL expressions. Local limits run
//! first ([`crate::ratelimit`]): a request refused locally never costs a callout. For a request
//! that passes, [`GlobalLimiter::prepare`] evaluates the applicable global limits into one
//! `RateLimitRequest` (one descriptor per limit) and hands the shell a [`GlobalCall`]; the
//! shell dispatches it (`proxy_dispatch_grpc_call`) and gives the reply to
//! [`GlobalLimiter::conclude`]. Both are pure functions of their inputs and the per-VM
//! [`GlobalState`] (the circuit breaker and the fallback tokens).
//!
//! When the service fails (error, timeout, garbage, or the breaker is open) the service's
//! `failure_mode` answers: `deny` (503, the default: a security limit fails closed), `allow`
//! (fail open, counted) or `local_fallback` (this proxy's own shared bucket at
//! `fallback_fraction` of the limit's rate). After `breaker.failures` consecutive failures the
//! breaker opens for `breaker.open_ms`: requests take the failure mode at once instead of
//! waiting for a timeout each; then one request probes (half-open) and its answer closes or
//! reopens the breaker. Each transition is logged once, never per request. The breaker is per
//! VM (worker): each worker learns of an outage by its own failures.

use crate::decision::{DenyReason, HeaderEdit, RateLimited, Refusal};
use crate::error::ConfigError;
use crate::expr::{Activation, Expr, ExprSource};
use crate::mode::Mode;
use crate::ports::{Counters, Log, LogLevel, SharedStore};
use crate::ratelimit::{
    KeyErrorAction, LimitConfig, LocalTokens, RateLimitConfig, RateLimiter, RateVerdict,
};
use crate::rls::{self, Code, Descriptor, DescriptorStatus};
use serde::Deserialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In this proxy's shared data, exact across its workers.
    #[default]
    Local,
    /// By the rate-limit service of `rate_limits.service`, across every proxy that asks it.
    Global,
}

/// `rate_limits.service`: the rate-limit service every `scope: global` limit asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The Envoy cluster of the service (HTTP/2).
    pub cluster: String,
    /// The RLS `domain` of every request.
    pub domain: String,
    /// How long a request waits for the service's answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// `local_fallback` only: this proxy's share of each limit's rate while the service fails.
    #[serde(default)]
    pub fallback_fraction: Option<f64>,
    #[serde(default)]
    pub breaker: BreakerConfig,
}

fn default_timeout_ms() -> u64 {
    20
}

/// What a request gets when the service cannot answer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// 503 `ratelimit_unavailable`: fail closed.
    #[default]
    Deny,
    /// Admit, counted as `portcullis_global_ratelimit_total{result="fail_open"}`.
    Allow,
    /// Count in this proxy's shared bucket at `fallback_fraction` of the limit's rate.
    LocalFallback,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// How long it stays open before one request probes the service.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_ms: 5000,
        }
    }
}

/// One entry of a global limit's descriptor: a fixed key, a CEL value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntryConfig {
    pub key: String,
    pub value: ExprSource,
}

/// 1 while this VM's breaker is open or half-open.
const BREAKER_GAUGE: &str = crate::metrics::GLOBAL_RATELIMIT_BREAKER_OPEN.plain();

/// The service-level counters: `portcullis_global_ratelimit_total{result}` (crate::metrics).
mod counter {
    pub use crate::metrics::{
        GLOBAL_BREAKER_OPEN as BREAKER_OPEN, GLOBAL_ERROR as ERROR,
        GLOBAL_FAIL_CLOSED as FAIL_CLOSED, GLOBAL_FAIL_OPEN as FAIL_OPEN,
        GLOBAL_FALLBACK_ADMITTED as FALLBACK_ADMITTED, GLOBAL_FALLBACK_LIMITED as FALLBACK_LIMITED,
        GLOBAL_OK as OK, GLOBAL_OVER_LIMIT as OVER_LIMIT,
        GLOBAL_SHADOW_OVER_LIMIT as SHADOW_OVER_LIMIT, GLOBAL_TIMEOUT as TIMEOUT,
    };
}

#[derive(Debug)]
struct Service {
    cluster: String,
    /// What `proxy_dispatch_grpc_call` is given for the cluster ([`rls::grpc_service_for_cluster`]).
    upstream: String,
    domain: String,
    timeout_ms: u64,
    failure_mode: FailureMode,
    breaker_failures: u32,
    breaker_open_nanos: u64,
}

#[derive(Debug)]
struct GlobalLimit {
    name: String,
    when: Option<Expr>,
    entries: Vec<(String, Expr)>,
    hits_addend: Option<Expr>,
    requests: u32,
    period_s: u32,
    mode: Mode,
    on_key_error: KeyErrorAction,
    limited: String,
    shadow_limited: String,
    key_errors: String,
}

/// The compiled global limits and their service.
#[derive(Debug, Default)]
pub struct GlobalLimiter {
    service: Option<Service>,
    limits: Vec<GlobalLimit>,
    /// `local_fallback`: one local limit per global limit, at the same position.
    fallback: Option<RateLimiter>,
    headers_on_allow: bool,
}

/// One call to the service for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalCall {
    /// The cluster, for logs and tests.
    pub cluster: String,
    /// The `upstream` argument of `proxy_dispatch_grpc_call`.
    pub upstream: String,
    pub timeout_ms: u64,
    /// The `RateLimitRequest`, encoded.
    pub message: Vec<u8>,
    /// The limit of each descriptor, in order, with the descriptor's values joined (the
    /// fallback bucket's key).
    applied: Vec<(usize, String)>,
}

/// What the service answered, as the shell saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A reply message (gRPC status OK).
    Message(&'a [u8]),
    /// The call failed: `timeout` when it took the whole timeout (Envoy reports its timeout
    /// as UNAVAILABLE, like a refused connection), else any other failure (unavailable,
    /// reset, dispatch refused).
    Failed { timeout: bool },
}

/// What the global stage adds to an admitted request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GlobalAdmit {
    pub request_headers: Vec<HeaderEdit>,
    pub response_headers: Vec<(String, String)>,
}

/// The global stage's next step for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum GlobalStep {
    /// No global limit applies.
    Skip,
    /// Ask the service.
    Call(GlobalCall),
    /// Decided without the service (the breaker is open).
    Decided(Result<GlobalAdmit, Refusal>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum BreakerState {
    #[default]
    Closed,
    /// Skip the service until then (ns since the epoch).
    Open { until: u64 },
    /// One probe is out; others take the failure mode until it answers or this passes.
    HalfOpen { probe_deadline: u64 },
}

/// Per-VM state of the global stage.
#[derive(Debug, Default)]
pub struct GlobalState {
    breaker: BreakerState,
    consecutive_failures: u32,
    /// Tokens of `local_fallback` buckets this worker holds.
    fallback_tokens: LocalTokens,
}

impl GlobalState {
    /// Whether the breaker is open or half-open (for tests and the shell's gauges).
    pub fn breaker_open(&self) -> bool {
        self.breaker != BreakerState::Closed
    }
}

/// What the global stage reads and writes besides its arguments.
pub struct GlobalEnv<'a> {
    pub now: SystemTime,
    pub store: &'a dyn SharedStore,
    pub state: &'a mut GlobalState,
    pub counters: &'a mut dyn Counters,
    pub log: &'a mut dyn Log,
}

fn nanos(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why the service gave no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Error,
    Timeout,
}

impl GlobalLimiter {
    /// Compiles the `scope: global` limits of `config` (the local ones are
    /// [`RateLimiter::compile`]'s).
    pub fn compile(config: &RateLimitConfig) -> Result<GlobalLimiter, ConfigError> {
        let globals: Vec<(usize, &LimitConfig)> = config
            .limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.scope == Scope::Global)
            .collect();
        let service = match (&config.service, globals.first()) {
            (None, None) => return Ok(GlobalLimiter::default()),
            (None, Some((i, _))) => {
                return Err(ConfigError::new(
                    format!("rate_limits.limits[{i}].scope"),
                    "a global limit needs `rate_limits.service`",
                ))
            }
            // A service no limit asks yet is checked, and unused (a configuration whose
            // global limits were removed keeps working).
            (Some(service), _) => compile_service(service)?,
        };
        let mut limits = Vec::with_capacity(globals.len());
        let mut fallback_limits = Vec::new();
        for (i, limit) in globals {
            let field = |name: &str| format!("rate_limits.limits[{i}].{name}");
            if limit.descriptors.is_empty() {
                return Err(ConfigError::new(
                    field("descriptors"),
                    "a global limit needs at least one descriptor entry",
                ));
            }
            let mut entries = Vec::with_capacity(limit.descriptors.len());
            for (j, entry) in limit.descriptors.iter().enumerate() {
                if entry.key.is_empty() {
                    return Err(ConfigError::new(
                        field(&format!("descriptors[{j}].key")),
                        "must not be empty",
                    ));
                }
                let value = Expr::compile(&entry.value).map_err(|e| {
                    ConfigError::from_expr(field(&format!("descriptors[{j}].value")), &e)
                })?;
                entries.push((entry.key.clone(), value));
            }
            let compile = |source: &Option<ExprSource>, name: &str| {
                source
                    .as_ref()
                    .map(|s| Expr::compile(s).map_err(|e| ConfigError::from_expr(field(name), &e)))
                    .transpose()
            };
            let c = |result: &str| crate::metrics::RATELIMIT.with(&[&limit.name, result]);
            limits.push(GlobalLimit {
                name: limit.name.clone(),
                when: compile(&limit.when, "when")?,
                entries,
                hits_addend: compile(&limit.hits_addend, "hits_addend")?,
                requests: limit.requests,
                period_s: limit.period_s,
                mode: limit.mode,
                on_key_error: limit.on_key_error,
                limited: c("limited"),
                shadow_limited: c("shadow_limited"),
                key_errors: c("key_error"),
            });
            if let Some(fraction) = config.service.as_ref().and_then(|s| s.fallback_fraction) {
                let share = |n: u32| ((f64::from(n) * fraction).floor() as u32).max(1);
                fallback_limits.push(LimitConfig {
                    requests: share(limit.requests),
                    burst: Some(share(limit.burst.unwrap_or(limit.requests))),
                    key: Some(ExprSource::Inline("''".into())),
                    scope: Scope::Local,
                    descriptors: Vec::new(),
                    hits_addend: None,
                    when: None,
                    ..limit.clone()
                });
            }
        }
        let fallback = match service.failure_mode {
            FailureMode::LocalFallback => Some(
                RateLimiter::compile(&RateLimitConfig {
                    limits: fallback_limits,
                    service: None,
                    ..config.clone()
                })
                .map_err(|e| {
                    ConfigError::new("rate_limits.service.fallback_fraction", e.message)
                })?,
            ),
            _ => None,
        };
        Ok(GlobalLimiter {
            service: Some(service),
            limits,
            fallback,
            headers_on_allow: config.headers_on_allow,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Every compiled expression: guards, descriptor values, hit counts.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.limits.iter().flat_map(|l| {
            l.when
                .iter()
                .chain(l.entries.iter().map(|(_, e)| e))
                .chain(l.hits_addend.iter())
        })
    }

    /// The request's descriptors, and whether to ask the service or answer for it (the
    /// breaker is open).
    pub fn prepare(&self, activation: &Activation<'_>, env: &mut GlobalEnv<'_>) -> GlobalStep {
        let Some(service) = &self.service else {
            return GlobalStep::Skip;
        };
        let mut applied = Vec::new();
        let mut descriptors = Vec::new();
        for (index, limit) in self.limits.iter().enumerate() {
            if let Some(when) = &limit.when {
                // A guard that fails to evaluate applies the limit: never fewer limits on error.
                if let Ok(false) = when.eval_bool(activation) {
                    continue;
                }
            }
            let Some(descriptor) = self.descriptor(limit, activation, env.counters) else {
                continue;
            };
            let key = descriptor
                .entries
                .iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("\u{1f}");
            applied.push((index, key));
            descriptors.push(descriptor);
        }
        if applied.is_empty() {
            return GlobalStep::Skip;
        }
        let now = nanos(env.now);
        match env.state.breaker {
            BreakerState::Closed => {}
            BreakerState::Open { until }
            | BreakerState::HalfOpen {
                probe_deadline: until,
            } if now < until => {
                env.counters.increment(counter::BREAKER_OPEN, 1);
                return GlobalStep::Decided(self.on_failure(&applied, env));
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                // This request probes; the others wait for its answer (or its deadline).
                let wait = service
                    .timeout_ms
                    .saturating_add(1000)
                    .saturating_mul(1_000_000);
                env.state.breaker = BreakerState::HalfOpen {
                    probe_deadline: now.saturating_add(wait),
                };
                env.log.log(
                    LogLevel::Info,
                    "portcullis: rate-limit service breaker half-open: probing",
                );
            }
        }
        GlobalStep::Call(GlobalCall {
            cluster: service.cluster.clone(),
            upstream: service.upstream.clone(),
            timeout_ms: service.timeout_ms,
            message: rls::encode_request(&service.domain, &descriptors),
            applied,
        })
    }

    /// The descriptor of one limit, or `None` if it does not apply (a value failed and the
    /// limit says `on_key_error: skip`).
    fn descriptor(
        &self,
        limit: &GlobalLimit,
        activation: &Activation<'_>,
        counters: &mut dyn Counters,
    ) -> Option<Descriptor> {
        let mut entries = Vec::with_capacity(limit.entries.len());
        for (key, value) in &limit.entries {
            let value = match value.eval_string(activation) {
                Ok(value) => value,
                Err(_) => {
                    counters.increment(&limit.key_errors, 1);
                    match limit.on_key_error {
                        KeyErrorAction::Skip => return None,
                        KeyErrorAction::UnknownBucket => "<unknown>".to_owned(),
                    }
                }
            };
            entries.push((key.clone(), value));
        }
        let hits_addend = limit.hits_addend.as_ref().map(|expr| {
            let hits = match expr.eval(activation) {
                Ok(cel::Value::Int(i)) => u64::try_from(i).ok(),
                Ok(cel::Value::UInt(u)) => Some(u),
                Ok(cel::Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            // A cost that cannot be read counts as one request: never free.
            hits.unwrap_or_else(|| {
                counters.increment(&limit.key_errors, 1);
                1
            })
        });
        Some(Descriptor {
            entries,
            hits_addend,
        })
    }

    /// The answer for a request whose call got `reply`.
    pub fn conclude(
        &self,
        call: &GlobalCall,
        reply: Reply<'_>,
        env: &mut GlobalEnv<'_>,
    ) -> Result<GlobalAdmit, Refusal> {
        let response = match reply {
            Reply::Message(bytes) => rls::decode_response(bytes).ok(),
            Reply::Failed { .. } => None,
        };
        let response = match response {
            Some(r) if r.overall_code != Code::Unknown => r,
            _ => {
                let failure = match reply {
                    Reply::Failed { timeout: true } => Failure::Timeout,
                    _ => Failure::Error,
                };
                self.breaker_failure(failure, env);
                return self.on_failure(&call.applied, env);
            }
        };
        self.breaker_success(env);
        let status_of = |position: usize| response.statuses.get(position);
        // The descriptor that refuses: the first over-limit one of an enforcing limit. A reply
        // that is over the limit without per-descriptor statuses is about every descriptor.
        let mut refusing = None;
        if response.overall_code == Code::OverLimit {
            for (position, (index, _)) in call.applied.iter().enumerate() {
                let Some(limit) = self.limits.get(*index) else {
                    continue;
                };
                let over = status_of(position).is_none_or(|s| s.code == Code::OverLimit);
                if !over {
                    continue;
                }
                match limit.mode {
                    Mode::Shadow => {
                        env.counters.increment(&limit.shadow_limited, 1);
                        env.counters.increment(counter::SHADOW_OVER_LIMIT, 1);
                    }
                    Mode::Enforce => {
                        refusing = refusing.or(Some((limit, status_of(position))));
                    }
                }
            }
        }
        if let Some((limit, status)) = refusing {
            env.counters.increment(counter::OVER_LIMIT, 1);
            env.counters.increment(&limit.limited, 1);
            let mut refusal = over_limit(limit, status);
            if let DenyReason::RateLimited(limited) = &mut refusal.reason {
                limited
                    .headers
                    .extend(response.response_headers_to_add.iter().cloned());
            }
            return Err(refusal);
        }
        env.counters.increment(counter::OK, 1);
        let mut response_headers = Vec::new();
        if self.headers_on_allow {
            for (position, (index, _)) in call.applied.iter().enumerate() {
                if let (Some(limit), Some(status)) = (self.limits.get(*index), status_of(position))
                {
                    if limit.mode == Mode::Enforce {
                        response_headers.extend(rate_limit_headers(limit, Some(status)));
                    }
                }
            }
        }
        response_headers.extend(response.response_headers_to_add);
        Ok(GlobalAdmit {
            request_headers: response
                .request_headers_to_add
                .into_iter()
                .map(|(name, value)| HeaderEdit::Set(name, value))
                .collect(),
            response_headers,
        })
    }

    fn breaker_success(&self, env: &mut GlobalEnv<'_>) {
        let state = &mut *env.state;
        state.consecutive_failures = 0;
        if state.breaker != BreakerState::Closed {
            state.breaker = BreakerState::Closed;
            env.counters.set_gauge(BREAKER_GAUGE, 0);
            env.log.log(
                LogLevel::Info,
                "portcullis: rate-limit service breaker closed: the service answers again",
            );
        }
    }

    fn breaker_failure(&self, failure: Failure, env: &mut GlobalEnv<'_>) {
        let Some(service) = &self.service else {
            return;
        };
        let counter = match failure {
            Failure::Timeout => counter::TIMEOUT,
            Failure::Error => counter::ERROR,
        };
        env.counters.increment(counter, 1);
        let state = &mut *env.state;
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let until = nanos(env.now).saturating_add(service.breaker_open_nanos);
        let cause = if failure == Failure::Timeout {
            "timeout"
        } else {
            "error"
        };
        match state.breaker {
            BreakerState::HalfOpen { .. } => {
                state.breaker = BreakerState::Open { until };
                env.log.log(
                    LogLevel::Warn,
                    &format!(
                        "portcullis: rate-limit service breaker open again: the probe failed ({cause}), cluster `{}`",
                        service.cluster
                    ),
                );
            }
            BreakerState::Closed if state.consecutive_failures >= service.breaker_failures => {
                state.breaker = BreakerState::Open { until };
                env.counters.set_gauge(BREAKER_GAUGE, 1);
                env.log.log(
                    LogLevel::Warn,
                    &format!(
                        "portcullis: rate-limit service breaker open after {} consecutive failures (last: {cause}), cluster `{}`; failure_mode {:?}",
                        state.consecutive_failures, service.cluster, service.failure_mode
                    ),
                );
            }
            _ => {}
        }
    }

    /// The failure mode's answer for these descriptors. Shadow limits never refuse.
    fn on_failure(
        &self,
        applied: &[(usize, String)],
        env: &mut GlobalEnv<'_>,
    ) -> Result<GlobalAdmit, Refusal> {
        let Some(service) = &self.service else {
            return Ok(GlobalAdmit::default());
        };
        let enforcing: Vec<&(usize, String)> = applied
            .iter()
            .filter(|(index, _)| {
                self.limits
                    .get(*index)
                    .is_some_and(|l| l.mode == Mode::Enforce)
            })
            .collect();
        let Some(first) = enforcing.first().and_then(|(i, _)| self.limits.get(*i)) else {
            return Ok(GlobalAdmit::default());
        };
        match service.failure_mode {
            FailureMode::Deny => {
                env.counters.increment(counter::FAIL_CLOSED, 1);
                Err(Refusal::new(
                    DenyReason::RateLimitServiceUnavailable,
                    Some(first.name.clone()),
                ))
            }
            FailureMode::Allow => {
                env.counters.increment(counter::FAIL_OPEN, 1);
                Ok(GlobalAdmit::default())
            }
            FailureMode::LocalFallback => {
                let Some(fallback) = &self.fallback else {
                    return Err(Refusal::new(
                        DenyReason::RateLimitServiceUnavailable,
                        Some(first.name.clone()),
                    ));
                };
                let keys: Vec<(usize, &str)> = enforcing
                    .iter()
                    .map(|(index, key)| (*index, key.as_str()))
                    .collect();
                match fallback.check_keys(
                    &keys,
                    env.store,
                    &mut env.state.fallback_tokens,
                    env.now,
                    env.counters,
                ) {
                    RateVerdict::Admit { response_headers } => {
                        env.counters.increment(counter::FALLBACK_ADMITTED, 1);
                        Ok(GlobalAdmit {
                            request_headers: Vec::new(),
                            response_headers,
                        })
                    }
                    RateVerdict::Limited(refusal) => {
                        env.counters.increment(counter::FALLBACK_LIMITED, 1);
                        Err(refusal)
                    }
                }
            }
        }
    }
}

fn compile_service(service: &ServiceConfig) -> Result<Service, ConfigError> {
    let field = |name: &str| format!("rate_limits.service.{name}");
    if service.cluster.is_empty() {
        return Err(ConfigError::new(field("cluster"), "must not be empty"));
    }
    let Some(upstream) = rls::grpc_service_for_cluster(&service.cluster) else {
        return Err(ConfigError::new(
            field("cluster"),
            "must be shorter than 120 bytes",
        ));
    };
    if service.domain.is_empty() {
        return Err(ConfigError::new(field("domain"), "must not be empty"));
    }
    if !(1..=60_000).contains(&service.timeout_ms) {
        return Err(ConfigError::new(
            field("timeout_ms"),
            "must be between 1 and 60000",
        ));
    }
    if service.breaker.failures == 0 {
        return Err(ConfigError::new(
            field("breaker.failures"),
            "must be at least 1",
        ));
    }
    if !(1..=3_600_000).contains(&service.breaker.open_ms) {
        return Err(ConfigError::new(
            field("breaker.open_ms"),
            "must be between 1 and 3600000",
        ));
    }
    match (service.failure_mode, service.fallback_fraction) {
        (FailureMode::LocalFallback, Some(f)) if f > 0.0 && f <= 1.0 => {}
        (FailureMode::LocalFallback, Some(_)) => {
            return Err(ConfigError::new(
                field("fallback_fraction"),
                "must be greater than 0 and at most 1",
            ))
        }
        (FailureMode::LocalFallback, None) => {
            return Err(ConfigError::new(
                field("fallback_fraction"),
                "`failure_mode: local_fallback` needs a fraction of the global rate",
            ))
        }
        (_, Some(_)) => {
            return Err(ConfigError::new(
                field("fallback_fraction"),
                "only for `failure_mode: local_fallback`",
            ))
        }
        (_, None) => {}
    }
    Ok(Service {
        cluster: service.cluster.clone(),
        upstream,
        domain: service.domain.clone(),
        timeout_ms: service.timeout_ms,
        failure_mode: service.failure_mode,
        breaker_failures: service.breaker.failures,
        breaker_open_nanos: service.breaker.open_ms.saturating_mul(1_000_000),
    })
}

/// `RateLimit-Policy` and `RateLimit` from a descriptor's status (the configured rate where
/// the service says nothing).
fn rate_limit_headers(
    limit: &GlobalLimit,
    status: Option<&DescriptorStatus>,
) -> Vec<(String, String)> {
    let (quota, window, remaining, reset) = figures(limit, status);
    vec![
        (
            "ratelimit-policy".into(),
            format!("\"{}\";q={quota};w={window}", limit.name),
        ),
        (
            "ratelimit".into(),
            format!("\"{}\";r={remaining};t={reset}", limit.name),
        ),
    ]
}

/// (quota, window s, remaining, reset s) of a status.
fn figures(limit: &GlobalLimit, status: Option<&DescriptorStatus>) -> (u32, u64, u32, u64) {
    let current = status.and_then(|s| s.current_limit.as_ref());
    let quota = current.map_or(limit.requests, |c| c.requests_per_unit);
    let window = current
        .map(|c| c.unit_s)
        .filter(|w| *w > 0)
        .unwrap_or(u64::from(limit.period_s));
    let remaining = status.map_or(0, |s| s.limit_remaining);
    let reset = status.and_then(|s| s.reset_s).unwrap_or(window);
    (quota, window, remaining, reset)
}

fn over_limit(limit: &GlobalLimit, status: Option<&DescriptorStatus>) -> Refusal {
    let (quota, window, _, reset) = figures(limit, status);
    let limited = RateLimited {
        limit: limit.name.clone(),
        requests: quota,
        period_s: u32::try_from(window).unwrap_or(u32::MAX),
        retry_after_s: reset.max(1),
        headers: rate_limit_headers(limit, status),
    };
    Refusal::new(DenyReason::RateLimited(limited), Some(limit.name.clone()))
}
