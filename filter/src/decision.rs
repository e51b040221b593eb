//! What the core decides, as types. The shell turns these into proxy-wasm actions.

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
    /// The verified token's `sub`, when a policy or a limit refused an authenticated request:
    /// for the access log (filter state), never for the body.
    pub subject: Option<String>,
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
}
