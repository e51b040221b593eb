//! What the core decides, as types. The shell turns these into proxy-wasm actions.
//!
//! Every stage of the pipeline returns `Result<T, Stop>`: a [`Stop`] ends the request early,
//! either refused ([`Refusal`], whose [`DenyReason`] says why) or waiting for something the
//! shell must fetch. [`Refusal::answer`] is the README's outcome table as one `match`: the
//! status, headers, body fields and access-log facts of every refusal live there and only
//! there.

use crate::decision_log::TokenFacts;
use crate::global::GlobalCall;
use crate::jwt::claims::sanitize;
use crate::jwt::invalid::Invalid;
use serde::Serialize;

/// The final word on one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let the request through, after applying `request_headers` edits.
    Allow {
        /// The rule that allowed it (`None` when allowed by the default action).
        rule: Option<String>,
        request_headers: Vec<HeaderEdit>,
        /// Headers to add to the response (e.g. RateLimit headers on admitted requests).
        response_headers: Vec<(String, String)>,
        /// Facts for Envoy's access logs (filter state `wasm.<name>`), if configured.
        filter_state: Vec<(&'static str, String)>,
        /// What the decision log may say about the verified token, if logging is configured.
        token: Option<TokenFacts>,
    },
    /// Answer locally; the request never reaches the upstream.
    Deny(Deny),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deny {
    pub status: u16,
    /// Machine-readable error code for the JSON body, e.g. `invalid_token`, `forbidden`, `rate_limited`.
    pub error: &'static str,
    /// Human-readable reason. Never contains a token or a secret.
    pub reason: String,
    /// The rule or limit that decided, if any (may be hidden from the body by configuration).
    pub rule: Option<String>,
    pub headers: Vec<(String, String)>,
    /// What may be logged about the verified token (its subject as configured, listed
    /// claims), when a policy or a limit refused an authenticated request: for the access log
    /// and the decision log, never for the body. Boxed: refusals travel in `Err`.
    pub token: Option<Box<TokenFacts>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Set(String, String),
    Remove(String),
}

#[derive(Serialize)]
struct DenyBody<'a> {
    error: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
}

impl Deny {
    /// What the access log names as the deciding rule: the rule or limit, `default` for a
    /// policy's default action, `-` when no rule was involved (authentication, bad request).
    pub fn log_rule(&self) -> &str {
        match (&self.rule, self.error) {
            (Some(rule), _) => rule,
            (None, "forbidden") => "default",
            (None, _) => "-",
        }
    }

    /// The access-log facts of a refusal (filter state `wasm.<name>`), when configured.
    pub fn filter_state(&self) -> Vec<(&'static str, String)> {
        let mut facts = vec![
            ("portcullis.decision", "deny".to_owned()),
            ("portcullis.rule", self.log_rule().to_owned()),
            ("portcullis.error", self.error.to_owned()),
        ];
        if let Some(token) = &self.token {
            facts.push(("portcullis.jwt_provider", token.provider.clone()));
            if let Some(subject) = &token.subject {
                facts.push(("portcullis.jwt_sub", subject.clone()));
            }
        }
        facts
    }

    /// The JSON body of the local response.
    pub fn body(&self, hide_rule: bool) -> String {
        let body = DenyBody {
            error: self.error,
            reason: &self.reason,
            rule: if hide_rule {
                None
            } else {
                self.rule.as_deref()
            },
        };
        // Serialising plain strings cannot fail; keep a constant fallback anyway.
        serde_json::to_string(&body).unwrap_or_else(|_| String::from("{\"error\":\"internal\"}"))
    }
}

/// The answer of the pipeline: decided, or waiting for something the shell must fetch first.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Decided(Decision),
    /// Signing keys of these providers are not available yet: pause the request, fetch, retry.
    KeysPending {
        providers: Vec<String>,
    },
    /// Ask the rate-limit service ([`GlobalPending::call`]), then [`crate::pipeline::resume`].
    GlobalPending(Box<GlobalPending>),
}

/// A request that passed every local stage and waits for the rate-limit service's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalPending {
    pub call: GlobalCall,
    /// The decision if the service admits (the global stage adds its headers).
    pub allow: Decision,
    /// What may be logged of the verified token, for the logs of a refusal.
    pub token: Option<Box<TokenFacts>>,
}

/// Why a stage ended the request before it was allowed. A stage that must wait for something
/// the shell fetches (keys today; a callout tomorrow) is one more variant here and one more
/// arm in `From<Stop> for Outcome`; a new refusal is one more [`DenyReason`] and one more arm
/// in [`Refusal::answer`].
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// Refused: answer locally.
    Deny(Refusal),
    /// Signing keys of these providers are not available yet: pause the request, fetch, retry.
    KeysPending(Vec<String>),
    /// Ask the rate-limit service, then resume.
    GlobalPending(Box<GlobalPending>),
}

impl Stop {
    /// Attaches what may be logged of the verified token to a refusal, for the logs.
    pub fn with_token(self, token: Option<Box<TokenFacts>>) -> Stop {
        match self {
            Stop::Deny(refusal) => Stop::Deny(Refusal { token, ..refusal }),
            pending => pending,
        }
    }
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Stop {
        Stop::Deny(refusal)
    }
}

impl From<Stop> for Outcome {
    fn from(stop: Stop) -> Outcome {
        match stop {
            Stop::Deny(refusal) => Outcome::Decided(Decision::Deny(refusal.answer())),
            Stop::KeysPending(providers) => Outcome::KeysPending { providers },
            Stop::GlobalPending(pending) => Outcome::GlobalPending(pending),
        }
    }
}

/// A refused request: why, and which rule or limit decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: DenyReason,
    /// The rule, requirement rule or limit that decided, if any.
    pub rule: Option<String>,
    /// What may be logged of the verified token, for the logs only.
    pub token: Option<Box<TokenFacts>>,
}

/// Why a request is refused: one variant per row of the README's outcome table.
#[derive(Debug, Clone, PartialEq)]
pub enum DenyReason {
    /// The request itself is malformed or ambiguous (path, repeated header or parameter).
    InvalidRequest(String),
    /// Authentication is required and no token was sent.
    MissingToken,
    /// More than one token was sent where one is expected.
    MultipleTokens,
    /// The token was refused, by cause.
    InvalidToken(Invalid),
    /// No signing keys to verify with; `status` is `jwt.keys_unavailable_status` (401 or 503).
    KeysUnavailable { status: u16 },
    /// A policy denied (`reason` names the rule, never a value).
    Forbidden(String),
    /// A rate limit is exhausted.
    RateLimited(RateLimited),
    /// The shared rate-limit state stayed contended; refuse rather than admit unmetered.
    Busy,
    /// The rate-limit service of a global limit did not answer and its `failure_mode` is
    /// `deny` (fail closed).
    RateLimitServiceUnavailable,
    /// The filter has no valid configuration.
    NotConfigured,
}

/// The facts of an exhausted limit that its answer reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimited {
    pub limit: String,
    pub requests: u32,
    pub period_s: u32,
    pub retry_after_s: u64,
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    pub headers: Vec<(String, String)>,
}

/// Realm of every `WWW-Authenticate` challenge.
const REALM: &str = "portcullis";

/// `Retry-After` of a 503 `keys_unavailable`, in seconds: the first fetch retry is due within
/// a second or two (docs/jwt.md, backoff).
pub const KEYS_RETRY_AFTER_S: u32 = 2;

/// The `invalid_request` reason of two tokens, also its `error_description`.
const MULTIPLE_TOKENS: &str = "more than one token in the request";

fn challenge(extra: Option<(&str, &str)>) -> (String, String) {
    let value = match extra {
        None => format!("Bearer realm=\"{REALM}\""),
        Some((error, description)) => format!(
            "Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\"{description}\""
        ),
    };
    ("www-authenticate".to_owned(), value)
}

impl Refusal {
    pub fn new(reason: DenyReason, rule: Option<String>) -> Refusal {
        Refusal {
            reason,
            rule,
            token: None,
        }
    }

    /// The outcome table: status, machine-readable error, reason and headers of each refusal.
    /// Every answer of authentication is a 401 (as in Envoy's jwt_authn), also for two tokens,
    /// where RFC 6750 3.1 suggests 400.
    pub fn answer(self) -> Deny {
        let (status, error, reason, headers) = match self.reason {
            DenyReason::InvalidRequest(reason) => (400, "invalid_request", reason, Vec::new()),
            DenyReason::MissingToken => (
                401,
                "missing_token",
                "a bearer token is required".to_owned(),
                vec![challenge(None)],
            ),
            DenyReason::MultipleTokens => (
                401,
                "invalid_request",
                MULTIPLE_TOKENS.to_owned(),
                vec![challenge(Some(("invalid_request", MULTIPLE_TOKENS)))],
            ),
            DenyReason::InvalidToken(invalid) => {
                let description = sanitize(&invalid.detail);
                let header = challenge(Some(("invalid_token", &description)));
                (401, "invalid_token", description, vec![header])
            }
            DenyReason::KeysUnavailable { status } => {
                let header = if status == 401 {
                    challenge(None)
                } else {
                    ("retry-after".to_owned(), KEYS_RETRY_AFTER_S.to_string())
                };
                (
                    status,
                    "keys_unavailable",
                    "signing keys unavailable".to_owned(),
                    vec![header],
                )
            }
            DenyReason::Forbidden(reason) => (403, "forbidden", reason, Vec::new()),
            DenyReason::RateLimited(limited) => {
                let mut headers =
                    vec![("retry-after".to_owned(), limited.retry_after_s.to_string())];
                headers.extend(limited.headers);
                let reason = format!(
                    "rate limit `{}` exceeded: {} requests per {} s",
                    limited.limit, limited.requests, limited.period_s
                );
                (429, "rate_limited", reason, headers)
            }
            DenyReason::Busy => (
                429,
                "rate_limited",
                "rate limit state is busy; retry".to_owned(),
                vec![("retry-after".to_owned(), "1".to_owned())],
            ),
            DenyReason::RateLimitServiceUnavailable => (
                503,
                "ratelimit_unavailable",
                "the rate-limit service is unavailable".to_owned(),
                vec![("retry-after".to_owned(), "1".to_owned())],
            ),
            DenyReason::NotConfigured => (
                503,
                "not_configured",
                "the policy filter has no valid configuration".to_owned(),
                Vec::new(),
            ),
        };
        Deny {
            status,
            error,
            reason,
            rule: self.rule,
            headers,
            token: self.token,
        }
    }
}
