//! The decision pipeline: check the request → authenticate → authorize → rate-limit → decide.
//!
//! Each stage is a function returning `Result<T, Stop>` ([`crate::decision::Stop`]). The last,
//! global rate limits, may stop with [`Stop::GlobalPending`]: the shell asks the rate-limit
//! service and hands the reply to [`resume`].
//!
//! A pure function of the request, the compiled configuration and the environment (clock,
//! shared store, host crypto, counters). It never touches proxy-wasm directly.

use crate::config::Config;
use crate::decision::{
    Decision, Deny, DenyReason, GlobalPending, HeaderEdit, Outcome, Refusal, Stop,
};
use crate::expr::Activation;
use crate::global::{GlobalAdmit, GlobalEnv, GlobalState, GlobalStep, Reply};
use crate::jwt::{AuthnEnv, AuthnOutcome, RemoteKeys, TokenCache, VerifiedToken};
use crate::metrics;
use crate::policy::Verdict;
use crate::ports::{Counters, HostCrypto, Log, SharedStore};
use crate::ratelimit::{LocalTokens, RateVerdict};
use crate::request::RequestView;
use std::sync::Arc;
use std::time::SystemTime;

/// The outside world, as the pipeline sees it for one request.
pub struct Env<'a> {
    pub now: SystemTime,
    pub store: &'a dyn SharedStore,
    pub crypto: &'a dyn HostCrypto,
    /// Remote key sets; unknown kids leave refetch requests here for the shell.
    pub remote_keys: &'a mut RemoteKeys,
    pub token_cache: &'a mut TokenCache,
    /// Rate-limit tokens this worker holds (batches taken from shared buckets).
    pub local_tokens: &'a mut LocalTokens,
    pub counters: &'a mut dyn Counters,
    pub log: &'a mut dyn Log,
    /// The global limits' circuit breaker and fallback tokens (per VM).
    pub global: &'a mut GlobalState,
}

impl Env<'_> {
    fn global_env(&mut self) -> GlobalEnv<'_> {
        GlobalEnv {
            now: self.now,
            store: self.store,
            state: &mut *self.global,
            counters: &mut *self.counters,
            log: &mut *self.log,
        }
    }
}

/// Decides one request.
pub fn decide(config: &Config, request: &RequestView, env: &mut Env<'_>) -> Outcome {
    match run(config, request, env) {
        Ok(decision) => Outcome::Decided(decision),
        Err(stop) => stop.into(),
    }
}

/// The stages in order; each returns `Result<T, Stop>` and the first `Stop` ends the request.
fn run(config: &Config, request: &RequestView, env: &mut Env<'_>) -> Result<Decision, Stop> {
    config.request_check.check(request, env.counters)?;
    let Authenticated {
        token,
        mut request_headers,
    } = authenticate(config, request, env)?;
    let activation = Activation::new(request).with_jwt(token.as_deref().map(|t| &t.attributes));
    // What the logs may say about the token (subject as configured, listed claims): only
    // computed when something is logged.
    let logged = config.responses.filter_state || config.decision_log.enabled();
    let token_facts = || {
        token.as_deref().filter(|_| logged).map(|t| {
            config
                .decision_log
                .token_facts(&t.provider, &t.attributes.claims)
        })
    };
    let rule = authorize(config, &activation, env)
        .map_err(|stop| stop.with_token(token_facts().map(Box::new)))?;
    let mut response_headers = rate_limit(config, &activation, env)
        .map_err(|stop| stop.with_token(token_facts().map(Box::new)))?;
    // Global limits last: a request refused by anything local never costs a callout.
    let call = match config.global.prepare(&activation, &mut env.global_env()) {
        GlobalStep::Skip => None,
        GlobalStep::Call(call) => Some(call),
        GlobalStep::Decided(Ok(admit)) => {
            request_headers.extend(admit.request_headers);
            response_headers.extend(admit.response_headers);
            None
        }
        GlobalStep::Decided(Err(refusal)) => {
            return Err(Stop::Deny(refusal).with_token(token_facts().map(Box::new)));
        }
    };
    let token_facts = token_facts();

    if let Some(header) = &config.responses.decision_header {
        let value = match &rule {
            Some(rule) => format!("allow; rule={rule}"),
            None => "allow; default".to_owned(),
        };
        request_headers.push(HeaderEdit::Set(header.clone(), value));
    }
    let mut filter_state = Vec::new();
    if config.responses.filter_state {
        filter_state.push(("portcullis.decision", "allow".to_owned()));
        filter_state.push((
            "portcullis.rule",
            rule.clone().unwrap_or_else(|| "default".into()),
        ));
        if let Some(token) = &token_facts {
            filter_state.push(("portcullis.jwt_provider", token.provider.clone()));
            if let Some(subject) = &token.subject {
                filter_state.push(("portcullis.jwt_sub", subject.clone()));
            }
        }
    }
    let pending_token = call.as_ref().and(token_facts.clone()).map(Box::new);
    let allow = Decision::Allow {
        rule,
        request_headers,
        response_headers,
        filter_state,
        token: token_facts,
    };
    if let Some(call) = call {
        return Err(Stop::GlobalPending(Box::new(GlobalPending {
            call,
            allow,
            token: pending_token,
        })));
    }
    env.counters.increment(metrics::DECISIONS_ALLOW, 1);
    Ok(allow)
}

/// Finishes a request that waited for the rate-limit service: `reply` is what the shell got.
pub fn resume(
    config: &Config,
    pending: GlobalPending,
    reply: Reply<'_>,
    env: &mut Env<'_>,
) -> Decision {
    let GlobalPending {
        call,
        mut allow,
        token,
    } = pending;
    match config.global.conclude(&call, reply, &mut env.global_env()) {
        Ok(GlobalAdmit {
            request_headers: added_request,
            response_headers: added_response,
        }) => {
            if let Decision::Allow {
                request_headers,
                response_headers,
                ..
            } = &mut allow
            {
                request_headers.extend(added_request);
                response_headers.extend(added_response);
            }
            env.counters.increment(metrics::DECISIONS_ALLOW, 1);
            allow
        }
        Err(refusal) => Decision::Deny(Refusal { token, ..refusal }.answer()),
    }
}

/// What authentication hands on: the verified token, if any, and the header edits for the
/// upstream (stripped tokens, claim headers).
struct Authenticated {
    token: Option<Arc<VerifiedToken>>,
    request_headers: Vec<HeaderEdit>,
}

/// Extract + authenticate: requirement selection only sees the request, never `jwt`.
fn authenticate(
    config: &Config,
    request: &RequestView,
    env: &mut Env<'_>,
) -> Result<Authenticated, Stop> {
    let mut authn_env = AuthnEnv {
        now: env.now,
        crypto: env.crypto,
        remote_keys: &mut *env.remote_keys,
        cache: env.token_cache,
        counters: env.counters,
    };
    match config
        .authenticator
        .authenticate(&Activation::new(request), &mut authn_env)
    {
        AuthnOutcome::Pass {
            token,
            request_headers,
        } => Ok(Authenticated {
            token,
            request_headers,
        }),
        AuthnOutcome::Fail(refusal) => Err(Stop::Deny(refusal)),
        AuthnOutcome::KeysPending(providers) => Err(Stop::KeysPending(providers)),
    }
}

/// The policy: the rule that allowed, or `None` for the default action.
fn authorize(
    config: &Config,
    activation: &Activation<'_>,
    env: &mut Env<'_>,
) -> Result<Option<String>, Stop> {
    match config.policy.evaluate(activation, env.counters, env.log) {
        Verdict::Allow { rule } => Ok(rule),
        Verdict::Deny { rule, reason } => {
            env.counters.increment(metrics::DECISIONS_DENY, 1);
            Err(Refusal::new(DenyReason::Forbidden(reason), rule).into())
        }
    }
}

/// Rate limits: only requests that would otherwise be allowed consume tokens. Returns the
/// response headers of an admitted request.
fn rate_limit(
    config: &Config,
    activation: &Activation<'_>,
    env: &mut Env<'_>,
) -> Result<Vec<(String, String)>, Stop> {
    match config.rate_limiter.check(
        activation,
        env.store,
        env.local_tokens,
        env.now,
        env.counters,
    ) {
        RateVerdict::Admit { response_headers } => Ok(response_headers),
        RateVerdict::Limited(refusal) => Err(refusal.into()),
    }
}

/// Adds the configured deny header and serialises a deny for the shell.
pub fn render_deny(config: &Config, deny: &Deny) -> (u16, Vec<(String, String)>, String) {
    let mut headers = deny.headers.clone();
    headers.push(("content-type".into(), "application/json".into()));
    if let Some((name, value)) = &config.responses.deny_header {
        headers.push((name.clone(), value.clone()));
    }
    (
        deny.status,
        headers,
        deny.body(config.responses.hide_rule_name),
    )
}
