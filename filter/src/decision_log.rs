//! The decision log: one JSON record per decided request, for a SIEM.
//!
//! The record holds what only the filter knows — the decision, the deciding rule, shadow
//! verdicts, the authentication provider, result and reason, rate-limit outcomes, and the
//! token's subject and listed claims as configured — and goes to Envoy's filter state
//! (`wasm.portcullis.decision_log`, for an access log's `json_format`) and/or the proxy log.
//! Envoy's access log adds what Envoy knows (time, request id, client address, route,
//! status); docs/operations.md maps every field onto the Elastic Common Schema.
//!
//! **Personal data.** Token, secrets, header values and claim values never enter a record
//! unless configured: the subject is omitted by default, or pseudonymised with a keyed
//! HMAC-SHA256 (`subject: hmac`, a secret of at least 32 bytes), or logged in clear
//! (`subject: clear`); other claims only when listed in `claims`. The same subject setting
//! governs the `jwt_sub` filter state of `responses.filter_state`.
//!
//! The rest of the record is read off the request's counter increments ([`Recording`]):
//! every fact the log needs is already counted, with its labels, by [`crate::metrics`].

use crate::decision::Decision;
use crate::error::{valid_name, ConfigError};
use crate::metrics::{self, Family};
use crate::ports::Counters;
use hmac::{KeyInit, Mac};
use serde::Deserialize;

/// `decision_log` in the plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// Where records go: `filter_state` (`wasm.portcullis.decision_log`) and/or `log` (the
    /// proxy log, info level).
    #[serde(default = "default_sinks")]
    pub to: Vec<Sink>,
    /// How the token's `sub` is logged (records and the `jwt_sub` filter state).
    #[serde(default)]
    pub subject: SubjectMode,
    /// The HMAC key for `subject: hmac`: at least 32 bytes.
    #[serde(default)]
    pub subject_hmac_key: Option<String>,
    /// Claims logged in clear, by name.
    #[serde(default)]
    pub claims: Vec<String>,
}

fn default_sinks() -> Vec<Sink> {
    vec![Sink::FilterState]
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    FilterState,
    Log,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubjectMode {
    #[default]
    Omit,
    Hmac,
    Clear,
}

/// The shortest HMAC key accepted (the SHA-256 output size, RFC 2104 §3).
pub const MIN_HMAC_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, Default)]
enum Subject {
    #[default]
    Omit,
    Clear,
    /// Keyed once at configure time; each subject hashes with a clone.
    Hmac(hmac::Hmac<rsa::sha2::Sha256>),
}

/// The compiled setting: by default no records and no subject.
#[derive(Debug, Clone, Default)]
pub struct DecisionLog {
    to_filter_state: bool,
    to_log: bool,
    subject: Subject,
    claims: Vec<String>,
}

/// What a record (and the access-log filter state) may say about the verified token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenFacts {
    pub provider: String,
    /// The subject as configured: `None` when omitted.
    pub subject: Option<String>,
    /// The listed claims the token has, each value as JSON text.
    pub claims: Vec<(String, String)>,
}

impl DecisionLog {
    pub fn compile(config: Option<&DecisionLogConfig>) -> Result<DecisionLog, ConfigError> {
        let Some(config) = config else {
            return Ok(DecisionLog::default());
        };
        if config.to.is_empty() {
            return Err(ConfigError::new(
                "decision_log.to",
                "give `filter_state` and/or `log`",
            ));
        }
        let subject = match (config.subject, &config.subject_hmac_key) {
            (SubjectMode::Hmac, Some(key)) if key.len() >= MIN_HMAC_KEY_BYTES => {
                // HMAC takes a key of any length: this never fails.
                let mac = hmac::Hmac::<rsa::sha2::Sha256>::new_from_slice(key.as_bytes()).map_err(
                    |_| ConfigError::new("decision_log.subject_hmac_key", "unusable key"),
                )?;
                Subject::Hmac(mac)
            }
            (SubjectMode::Hmac, Some(_)) => {
                return Err(ConfigError::new(
                    "decision_log.subject_hmac_key",
                    format!("must be at least {MIN_HMAC_KEY_BYTES} bytes"),
                ))
            }
            (SubjectMode::Hmac, None) => {
                return Err(ConfigError::new(
                    "decision_log.subject_hmac_key",
                    "required with `subject: hmac`",
                ))
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    "decision_log.subject_hmac_key",
                    "only used with `subject: hmac`",
                ))
            }
            (SubjectMode::Omit, None) => Subject::Omit,
            (SubjectMode::Clear, None) => Subject::Clear,
        };
        for (i, claim) in config.claims.iter().enumerate() {
            if !valid_name(claim) || config.claims.iter().take(i).any(|c| c == claim) {
                return Err(ConfigError::new(
                    format!("decision_log.claims[{i}]"),
                    "a claim name (letters, digits, `-`, `_`), listed once",
                ));
            }
            if claim == "sub" {
                return Err(ConfigError::new(
                    format!("decision_log.claims[{i}]"),
                    "`sub` is governed by `decision_log.subject`",
                ));
            }
        }
        Ok(DecisionLog {
            to_filter_state: config.to.contains(&Sink::FilterState),
            to_log: config.to.contains(&Sink::Log),
            subject,
            claims: config.claims.clone(),
        })
    }

    /// Whether records are produced at all.
    pub fn enabled(&self) -> bool {
        self.to_filter_state || self.to_log
    }

    pub fn to_filter_state(&self) -> bool {
        self.to_filter_state
    }

    pub fn to_log(&self) -> bool {
        self.to_log
    }

    /// The subject as it may be logged.
    pub fn subject(&self, sub: &str) -> Option<String> {
        match &self.subject {
            Subject::Omit => None,
            Subject::Clear => Some(sub.to_owned()),
            Subject::Hmac(keyed) => {
                let mut mac = keyed.clone();
                mac.update(sub.as_bytes());
                Some(hex(&mac.finalize().into_bytes()))
            }
        }
    }

    /// What may be logged about a verified token.
    pub fn token_facts(&self, provider: &str, claims: &cel::Value) -> TokenFacts {
        let cel::Value::Map(map) = claims else {
            return TokenFacts {
                provider: provider.to_owned(),
                ..TokenFacts::default()
            };
        };
        let claim = |name: &str| {
            map.map
                .get(&cel::objects::Key::String(name.to_owned().into()))
        };
        let subject = match claim("sub") {
            Some(cel::Value::String(s)) => self.subject(s),
            _ => None,
        };
        let claims = self
            .claims
            .iter()
            .filter_map(|name| claim(name).map(|v| (name.clone(), to_json(v))))
            .collect();
        TokenFacts {
            provider: provider.to_owned(),
            subject,
            claims,
        }
    }

    /// The record of one decided request: JSON, one line. `events` are the names of the
    /// counters the request incremented ([`Recording`]). Written by hand rather than through
    /// `serde_json::Value`: the generic map code cost ~50 KB of `.wasm`.
    pub fn record(
        &self,
        decision: &Decision,
        events: &[String],
        request_id: Option<&str>,
    ) -> String {
        let mut out = JsonObject::default();
        let token = match decision {
            Decision::Allow { rule, token, .. } => {
                out.string("decision", "allow");
                out.string("rule", rule.as_deref().unwrap_or("default"));
                token.as_ref()
            }
            Decision::Deny(deny) => {
                out.string("decision", "deny");
                out.raw("status", &deny.status.to_string());
                out.string("error", deny.error);
                out.string("rule", deny.log_rule());
                deny.token.as_deref()
            }
        };
        if let Some(id) = request_id {
            out.string("request_id", id);
        }
        let mut shadow = Vec::new();
        let mut limits = Vec::new();
        for event in events {
            if let Some(labels) = labels_of(&metrics::JWT, event) {
                let mut authn = JsonObject::default();
                for (label, value) in labels {
                    authn.string(label, value);
                }
                out.raw("authn", &authn.finish());
            } else if let Some(labels) = labels_of(&metrics::RULE_DECISIONS, event) {
                if let [("rule", rule), ("decision", verdict)] = labels.as_slice() {
                    if let Some(verdict) = verdict.strip_prefix("shadow_") {
                        let mut o = JsonObject::default();
                        o.string("rule", rule);
                        o.string("verdict", verdict);
                        shadow.push(o.finish());
                    }
                }
            } else if let Some(labels) = labels_of(&metrics::RATELIMIT, event) {
                if let [("limit", limit), ("result", result)] = labels.as_slice() {
                    let mut o = JsonObject::default();
                    o.string("limit", limit);
                    o.string("result", result);
                    limits.push(o.finish());
                }
            } else if let Some(labels) = labels_of(&metrics::REQUESTS_REJECTED, event) {
                if let [("reason", reason)] = labels.as_slice() {
                    out.string("rejected", reason);
                }
            }
        }
        if !shadow.is_empty() {
            out.raw("shadow", &format!("[{}]", shadow.join(",")));
        }
        if !limits.is_empty() {
            out.raw("ratelimit", &format!("[{}]", limits.join(",")));
        }
        if let Some(token) = token {
            if let Some(subject) = &token.subject {
                out.string("subject", subject);
            }
            if !token.claims.is_empty() {
                let mut claims = JsonObject::default();
                for (name, value) in &token.claims {
                    claims.raw(name, value);
                }
                out.raw("claims", &claims.finish());
            }
        }
        out.finish()
    }
}

/// A JSON object written member by member.
#[derive(Default)]
struct JsonObject {
    text: String,
}

impl JsonObject {
    fn raw(&mut self, key: &str, json: &str) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        quote(&mut self.text, key);
        self.text.push(':');
        self.text.push_str(json);
    }

    fn string(&mut self, key: &str, value: &str) {
        let mut quoted = String::with_capacity(value.len() + 2);
        quote(&mut quoted, value);
        self.raw(key, &quoted);
    }

    fn finish(mut self) -> String {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        self.text
    }
}

/// Appends `s` as a JSON string.
fn quote(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The labels of a flat metric name of `family`, in order; `None` for another family.
fn labels_of<'n>(family: &Family, name: &'n str) -> Option<Vec<(&'static str, &'n str)>> {
    let rest = name.strip_prefix(family.name)?;
    if !rest.is_empty() && !rest.starts_with('.') {
        return None; // a longer family name with this one as prefix
    }
    let mut parts = rest.split('.').skip(1);
    let mut out = Vec::new();
    for label in family.labels {
        let (Some(l), Some(v)) = (parts.next(), parts.next()) else {
            break;
        };
        if l != *label {
            return None;
        }
        out.push((*label, v));
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A claim's value as JSON text.
fn to_json(value: &cel::Value) -> String {
    let mut out = String::new();
    match value {
        cel::Value::String(s) => quote(&mut out, s),
        cel::Value::Int(i) => out = i.to_string(),
        cel::Value::UInt(u) => out = u.to_string(),
        cel::Value::Float(f) if f.is_finite() => out = f.to_string(),
        cel::Value::Bool(b) => out = b.to_string(),
        cel::Value::List(items) => {
            let items: Vec<String> = items.iter().map(to_json).collect();
            out = format!("[{}]", items.join(","));
        }
        cel::Value::Map(map) => {
            let mut o = JsonObject::default();
            for (k, v) in map.map.iter() {
                if let cel::objects::Key::String(k) = k {
                    o.raw(k, &to_json(v));
                }
            }
            out = o.finish();
        }
        _ => out.push_str("null"),
    }
    out
}

/// Counters that also remember, for the decision log, the names this request incremented.
pub struct Recording<'a> {
    pub inner: &'a mut dyn Counters,
    pub events: Vec<String>,
}

impl Counters for Recording<'_> {
    fn increment(&mut self, name: &str, by: i64) {
        self.inner.increment(name, by);
        self.events.push(name.to_owned());
    }

    fn set_gauge(&mut self, name: &str, value: u64) {
        self.inner.set_gauge(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{DenyReason, Refusal};
    use serde_json::{json, Value};

    fn log(config: serde_json::Value) -> Result<DecisionLog, ConfigError> {
        let c: DecisionLogConfig = serde_json::from_value(config).unwrap();
        DecisionLog::compile(Some(&c))
    }

    #[test]
    fn configuration_is_checked_naming_the_field() {
        let e = log(json!({"subject": "hmac"})).unwrap_err();
        assert_eq!(e.field, "decision_log.subject_hmac_key");
        let e = log(json!({"subject": "hmac", "subject_hmac_key": "short"})).unwrap_err();
        assert!(e.message.contains("32 bytes"), "{e}");
        let e = log(json!({"subject_hmac_key": "k".repeat(32)})).unwrap_err();
        assert_eq!(e.field, "decision_log.subject_hmac_key");
        let e = log(json!({"claims": ["tenant", "tenant"]})).unwrap_err();
        assert_eq!(e.field, "decision_log.claims[1]");
        let e = log(json!({"claims": ["sub"]})).unwrap_err();
        assert_eq!(e.field, "decision_log.claims[0]");
        let e = log(json!({"to": []})).unwrap_err();
        assert_eq!(e.field, "decision_log.to");
        assert!(!DecisionLog::compile(None).unwrap().enabled());
    }

    #[test]
    fn the_subject_is_omitted_pseudonymised_or_clear() {
        assert_eq!(log(json!({})).unwrap().subject("alice"), None);
        assert_eq!(
            log(json!({"subject": "clear"})).unwrap().subject("alice"),
            Some("alice".into())
        );
        let key = "a-decision-log-key-of-32-bytes!!";
        let hmac = log(json!({"subject": "hmac", "subject_hmac_key": key}))
            .unwrap()
            .subject("alice")
            .unwrap();
        // HMAC-SHA256(key, "alice"), computed independently (Python's hmac module).
        assert_eq!(
            hmac,
            "ea57531affb2cfe693fbd7c5be642603158d49043cea2b28f583aaa46b1e3dd2"
        );
    }

    #[test]
    fn records_carry_the_decision_authn_shadow_and_limits_but_only_listed_claims() {
        let log = log(json!({"subject": "clear", "claims": ["tenant"]})).unwrap();
        let claims = cel::Value::from(std::collections::HashMap::from([
            ("sub".to_owned(), cel::Value::from("alice")),
            ("tenant".to_owned(), cel::Value::from("acme")),
            ("email".to_owned(), cel::Value::from("alice@example.com")),
        ]));
        let token = log.token_facts("local", &claims);
        let mut refusal = Refusal::new(
            DenyReason::Forbidden("denied by rule r".into()),
            Some("r".into()),
        );
        refusal.token = Some(Box::new(token));
        let decision = Decision::Deny(refusal.answer());
        let events = vec![
            metrics::JWT.with(&["local", "ok"]),
            metrics::RULE_DECISIONS.with(&["legacy", "shadow_deny"]),
            metrics::RULE_DECISIONS.with(&["r", "deny"]),
            metrics::RATELIMIT.with(&["per-user", "admitted"]),
            metrics::DECISIONS_DENY.to_owned(),
        ];
        let record: Value =
            serde_json::from_str(&log.record(&decision, &events, Some("req-1"))).unwrap();
        assert_eq!(
            record,
            json!({
                "decision": "deny", "status": 403, "error": "forbidden", "rule": "r",
                "request_id": "req-1",
                "authn": {"provider": "local", "result": "ok"},
                "shadow": [{"rule": "legacy", "verdict": "deny"}],
                "ratelimit": [{"limit": "per-user", "result": "admitted"}],
                "subject": "alice",
                "claims": {"tenant": "acme"},
            })
        );
    }

    #[test]
    fn labels_are_read_back_from_flat_names() {
        let name = metrics::JWT.with(&["p", "invalid"]) + ".reason.expired";
        assert_eq!(
            labels_of(&metrics::JWT, &name),
            Some(vec![
                ("provider", "p"),
                ("result", "invalid"),
                ("reason", "expired")
            ])
        );
        assert_eq!(
            labels_of(&metrics::JWT, "portcullis_jwt_cache_total.provider.p"),
            None
        );
        assert_eq!(labels_of(&metrics::RATELIMIT, &name), None);
    }

    proptest::proptest! {
        #[test]
        fn records_are_json_whatever_the_strings(id in ".*", tenant in ".*", sub in ".*") {
            let log = log(json!({"subject": "clear", "claims": ["tenant"]})).unwrap();
            let claims = cel::Value::from(std::collections::HashMap::from([
                ("sub".to_owned(), cel::Value::from(sub.as_str())),
                ("tenant".to_owned(), cel::Value::from(tenant.as_str())),
            ]));
            let decision = Decision::Allow {
                rule: None,
                request_headers: Vec::new(),
                response_headers: Vec::new(),
                filter_state: Vec::new(),
                token: Some(log.token_facts("p", &claims)),
            };
            let record: Value = serde_json::from_str(&log.record(&decision, &[], Some(&id))).unwrap();
            proptest::prop_assert_eq!(&record["request_id"], &json!(id));
            proptest::prop_assert_eq!(&record["subject"], &json!(sub));
            proptest::prop_assert_eq!(&record["claims"]["tenant"], &json!(tenant));
        }
    }
}
