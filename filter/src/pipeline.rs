//! The decision pipeline: extract → authenticate → authorize → rate-limit → decide.
//!
//! A pure function of the request, the compiled configuration and the environment (clock,
//! shared store, host crypto, counters). It never touches proxy-wasm directly.

use crate::config::Config;
use crate::decision::{Decision, Deny, HeaderEdit, Outcome};
use crate::expr::Activation;
use crate::jwt::{AuthnEnv, AuthnOutcome, RemoteKeys, TokenCache};
use crate::policy::Verdict;
use crate::ports::{Counters, HostCrypto, Log, SharedStore};
use crate::ratelimit::{LocalTokens, RateVerdict};
use crate::request::RequestView;
use std::time::SystemTime;

/// The outside world, as the pipeline sees it for one request.
pub struct Env<'a> {
    pub now: SystemTime,
    pub store: &'a dyn SharedStore,
    pub crypto: &'a dyn HostCrypto,
    pub remote_keys: &'a RemoteKeys,
    pub token_cache: &'a mut TokenCache,
    /// Rate-limit tokens this worker holds (batches taken from shared buckets).
    pub local_tokens: &'a mut LocalTokens,
    pub counters: &'a mut dyn Counters,
    pub log: &'a mut dyn Log,
}

/// Decides one request.
pub fn decide(config: &Config, request: &RequestView, env: &mut Env<'_>) -> Outcome {
    if let Some(deny) = config.request_check.check(request, env.counters) {
        return Outcome::Decided(Decision::Deny(deny));
    }
    // Extract + authenticate: requirement selection only sees the request, never `jwt`.
    let mut authn_env = AuthnEnv {
        now: env.now,
        crypto: env.crypto,
        remote_keys: env.remote_keys,
        cache: env.token_cache,
        counters: env.counters,
    };
    let authn = config
        .authenticator
        .authenticate(&Activation::new(request), &mut authn_env);
    let (token, mut request_headers) = match authn {
        AuthnOutcome::Pass {
            token,
            request_headers,
        } => (token, request_headers),
        AuthnOutcome::Fail(deny) => return Outcome::Decided(Decision::Deny(deny)),
        AuthnOutcome::KeysPending(providers) => return Outcome::KeysPending { providers },
    };
    let activation = Activation::new(request).with_jwt(token.as_deref().map(|t| &t.attributes));
    let subject = || {
        token
            .as_deref()
            .and_then(|t| string_claim(&t.attributes.claims, "sub"))
    };

    // Authorize.
    let rule = match config.policy.evaluate(&activation, env.counters, env.log) {
        Verdict::Allow { rule } => rule,
        Verdict::Deny { rule, reason } => {
            env.counters.increment("portcullis.denied", 1);
            return Outcome::Decided(Decision::Deny(Deny {
                status: 403,
                error: "forbidden",
                reason,
                rule,
                headers: Vec::new(),
                subject: subject(),
            }));
        }
    };

    // Rate-limit: only requests that would otherwise be allowed consume tokens.
    let response_headers = match config.rate_limiter.check(
        &activation,
        env.store,
        env.local_tokens,
        env.now,
        env.counters,
    ) {
        RateVerdict::Admit { response_headers } => response_headers,
        RateVerdict::Limited(mut deny) => {
            deny.subject = subject();
            return Outcome::Decided(Decision::Deny(deny));
        }
    };

    env.counters.increment("portcullis.allowed", 1);
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
        if let Some(token) = &token {
            filter_state.push(("portcullis.jwt_provider", token.provider.clone()));
            if let Some(sub) = string_claim(&token.attributes.claims, "sub") {
                filter_state.push(("portcullis.jwt_sub", sub));
            }
        }
    }
    Outcome::Decided(Decision::Allow {
        rule,
        request_headers,
        response_headers,
        filter_state,
    })
}

fn string_claim(claims: &cel::Value, name: &str) -> Option<String> {
    let cel::Value::Map(map) = claims else {
        return None;
    };
    match map
        .map
        .get(&cel::objects::Key::String(name.to_owned().into()))
    {
        Some(cel::Value::String(s)) => Some(s.to_string()),
        _ => None,
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
