//! The checks, one function per area: manifest settings, the filter's own validation,
//! authorization, authentication, rate limits and expressions.

use super::cel_scan;
use super::inputs::{lookup, Container, Input};
use super::rules::{self, Rule};
use super::{Finding, Location};
use base64::Engine;
use serde_json::Value;

/// Attributes Envoy knows but not when request headers are decided: a policy reading them
/// would be rejected by the filter; the lint says why.
const LATER_ATTRIBUTE_PREFIXES: &[&str] = &["response.", "upstream.", "upstream_"];
const LATER_ATTRIBUTES: &[&str] = &[
    "request.size",
    "request.total_size",
    "request.duration",
    "connection.termination_details",
];

/// Attributes a client sets at will.
const CLIENT_CHOSEN: &[&str] = &[
    "request.headers",
    "request.query_params",
    "request.query",
    "request.useragent",
    "request.referer",
    "request.id",
    "request.path",
    "request.url_path",
];

/// Path fragments that mark a route as meant to be public.
const PUBLIC_MARKERS: &[&str] = &[
    "public",
    "health",
    "ready",
    "live",
    "status",
    "metrics",
    ".well-known",
    "static",
    "assets",
    "favicon",
    "login",
    "logout",
    "oauth",
    "callback",
    "docs",
    "openapi",
];

/// The longest clock skew the lint accepts without a warning.
const MAX_SKEW_S: u64 = 300;

struct Report<'i> {
    input: &'i Input,
    out: Vec<Finding>,
}

impl Report<'_> {
    fn push(&mut self, rule: &'static Rule, message: String, field: String, at: Option<Location>) {
        self.out.push(Finding {
            rule,
            message,
            field,
            location: at.or_else(|| self.input.locate_document_field("")),
            suppressed: None,
        });
    }

    /// A finding about a field of the plugin configuration.
    fn config(&mut self, rule: &'static Rule, field: &str, message: String) {
        let at = self.input.locate_config_field(field);
        self.push(rule, message, self.input.config_field(field), at);
    }

    /// A finding about text inside the CEL expression at `field`.
    fn cel(&mut self, rule: &'static Rule, field: &str, r: &cel_scan::Reference, message: String) {
        let at = self
            .input
            .locate_cel(field, r.offset, &r.name)
            .or_else(|| self.input.locate_config_field(field));
        self.push(rule, message, self.input.config_field(field), at);
    }

    /// A finding about a manifest field.
    fn document(&mut self, rule: &'static Rule, field: &str, message: String) {
        let at = self.input.locate_document_field(field);
        self.push(rule, message, field.to_owned(), at);
    }
}

pub fn check(input: &Input) -> Vec<Finding> {
    let mut report = Report {
        input,
        out: Vec::new(),
    };
    manifest(&mut report);
    if let Some((field, message)) = &input.unreadable {
        report.config(&rules::CONFIG_REJECTED, field, message.clone());
        return report.out;
    }
    if let Some(config) = &input.config {
        filter_validation(&mut report, config);
        policy(&mut report, config);
        jwt(&mut report, config);
        rate_limits(&mut report, config);
        expressions(&mut report, config);
    }
    report.out
}

/// `failStrategy: FAIL_OPEN` / `failOpen: true` / `fail_open: true`.
fn manifest(r: &mut Report<'_>) {
    let doc = &r.input.document;
    match r.input.container {
        Container::WasmPlugin => {
            if doc.pointer("/spec/failStrategy").and_then(Value::as_str) == Some("FAIL_OPEN") {
                r.document(
                    &rules::FAIL_OPEN,
                    "spec.failStrategy",
                    "WasmPlugin `failStrategy: FAIL_OPEN`".into(),
                );
            }
        }
        Container::ExtensionPolicy => {
            let wasm_field = r.input.prefix_text.trim_end_matches(".config").to_owned();
            if lookup(doc, &format!("{wasm_field}.failOpen")).and_then(Value::as_bool) == Some(true)
            {
                r.document(
                    &rules::FAIL_OPEN,
                    &format!("{wasm_field}.failOpen"),
                    "EnvoyExtensionPolicy `failOpen: true`".into(),
                );
            }
        }
        Container::EnvoyBootstrap => {
            let filter = r
                .input
                .prefix_text
                .trim_end_matches(".config.configuration.value")
                .to_owned();
            let field = format!("{filter}.config.fail_open");
            if lookup(doc, &field).and_then(Value::as_bool) == Some(true) {
                r.document(
                    &rules::FAIL_OPEN,
                    &field,
                    "Wasm filter `fail_open: true`".into(),
                );
            }
        }
        Container::Plain => {}
    }
}

/// The filter's own compiler: what it rejects, Envoy refuses.
fn filter_validation(r: &mut Report<'_>, config: &Value) {
    let Ok(bytes) = serde_json::to_vec(config) else {
        return;
    };
    if let Err(e) = portcullis_filter::config::Config::from_json(&bytes) {
        let message = crate::locate::strip_json_position(&e.message).to_owned();
        r.config(&rules::CONFIG_REJECTED, &e.field, message);
    }
}

fn rules_of(config: &Value) -> Vec<(usize, &Value)> {
    config
        .pointer("/policy/rules")
        .and_then(Value::as_array)
        .map(|rules| rules.iter().enumerate().collect())
        .unwrap_or_default()
}

fn name_of(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or("?")
}

/// An expression's text: a string, or `{file, source}` once inlined.
fn source_of(v: &Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("source").and_then(Value::as_str))
}

fn policy(r: &mut Report<'_>, config: &Value) {
    if config
        .pointer("/policy/default_action")
        .and_then(Value::as_str)
        == Some("allow")
    {
        r.config(
            &rules::DEFAULT_ALLOW,
            "policy.default_action",
            "authorization defaults to allow".into(),
        );
    }
    if config.pointer("/policy/mode").and_then(Value::as_str) == Some("shadow") {
        r.config(
            &rules::POLICY_SHADOW,
            "policy.mode",
            "the whole policy is in shadow mode: nothing is enforced".into(),
        );
    }
    // (normalized when, normalized condition, action) of enforced rules so far; and whether
    // an enforced allow rule without a `when` allows everything.
    let mut earlier: Vec<(String, String, &str, String)> = Vec::new();
    let mut allows_everything: Option<String> = None;
    for (i, rule) in rules_of(config) {
        let name = name_of(rule);
        let field = format!("policy.rules[{i}]");
        let shadow = rule.get("mode").and_then(Value::as_str) == Some("shadow");
        if shadow {
            r.config(
                &rules::RULE_SHADOW,
                &format!("{field}.mode"),
                format!("rule `{name}` is in shadow mode: it never decides"),
            );
        }
        let (action, condition) = match (rule.get("allow"), rule.get("deny")) {
            (Some(c), _) => ("allow", c),
            (None, Some(c)) => ("deny", c),
            (None, None) => continue,
        };
        let condition_text = source_of(condition)
            .map(cel_scan::normalized)
            .unwrap_or_default();
        let when_text = rule
            .get("when")
            .and_then(source_of)
            .map(cel_scan::normalized)
            .unwrap_or_else(|| "true".into());
        if condition_text == "false" {
            r.config(
                &rules::NEVER_MATCHES,
                &format!("{field}.{action}"),
                format!("rule `{name}` can never match: its condition is `false`"),
            );
            continue;
        }
        if when_text == "false" {
            r.config(
                &rules::NEVER_MATCHES,
                &format!("{field}.when"),
                format!("rule `{name}` can never apply: its `when` is `false`"),
            );
            continue;
        }
        if shadow {
            continue;
        }
        if action == "allow" {
            if let Some(first) = &allows_everything {
                r.config(
                    &rules::SHADOWED_RULE,
                    &field,
                    format!(
                        "rule `{name}` is never reached: the earlier allow rule `{first}` \
                         allows every request"
                    ),
                );
                continue;
            }
        }
        if let Some((.., first)) = earlier
            .iter()
            .find(|(w, c, a, _)| *w == when_text && *c == condition_text && *a == action)
        {
            r.config(
                &rules::SHADOWED_RULE,
                &field,
                format!("rule `{name}` repeats the earlier rule `{first}`: it never decides"),
            );
            continue;
        }
        if action == "allow" && when_text == "true" && condition_text == "true" {
            allows_everything = Some(name.to_owned());
        }
        earlier.push((when_text, condition_text, action, name.to_owned()));
    }
}

/// Every `allow_missing*` inside a requirement.
fn allows_missing(requirement: &Value) -> Option<&'static str> {
    match requirement {
        Value::Object(map) => {
            if map.contains_key("allow_missing_or_failed") {
                return Some("allow_missing_or_failed");
            }
            if map.contains_key("allow_missing") {
                return Some("allow_missing");
            }
            map.values().find_map(allows_missing)
        }
        Value::Array(items) => items.iter().find_map(allows_missing),
        _ => None,
    }
}

/// Whether a requirement's `when` plainly selects public routes: every path literal it
/// compares with names a public-looking place, and there is at least one.
fn obviously_public(when: &str) -> bool {
    let paths: Vec<String> = cel_scan::string_literals(when)
        .into_iter()
        .filter(|s| s.starts_with('/'))
        .collect();
    !paths.is_empty()
        && paths.iter().all(|p| {
            let p = p.to_ascii_lowercase();
            PUBLIC_MARKERS.iter().any(|m| p.contains(m))
        })
}

fn jwt(r: &mut Report<'_>, config: &Value) {
    let requirements = config
        .pointer("/jwt/requirements")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, req) in requirements.iter().enumerate() {
        let Some(kind) = req.get("require").and_then(allows_missing) else {
            continue;
        };
        let when = req.get("when").and_then(source_of).unwrap_or("");
        if !obviously_public(when) {
            r.config(
                &rules::ALLOW_MISSING_NOT_PUBLIC,
                &format!("jwt.requirements[{i}].require"),
                format!(
                    "requirement `{}` uses `{kind}` on routes that are not obviously public",
                    name_of(req)
                ),
            );
        }
    }
    if let Some(kind) = config
        .pointer("/jwt/default_requirement")
        .and_then(allows_missing)
    {
        r.config(
            &rules::ALLOW_MISSING_NOT_PUBLIC,
            "jwt.default_requirement",
            format!("the default requirement uses `{kind}`: every other route accepts requests without a token"),
        );
    }
    let providers = config
        .pointer("/jwt/providers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, p) in providers.iter().enumerate() {
        let name = name_of(p);
        let field = format!("jwt.providers[{i}]");
        let audiences = p.get("audiences").and_then(Value::as_array);
        if audiences.is_none_or(|a| a.is_empty()) {
            r.config(
                &rules::NO_AUDIENCES,
                &field,
                format!("provider `{name}` has no `audiences`"),
            );
        }
        if let Some(skew) = p.get("clock_skew_s").and_then(Value::as_u64) {
            if skew > MAX_SKEW_S {
                r.config(
                    &rules::LONG_CLOCK_SKEW,
                    &format!("{field}.clock_skew_s"),
                    format!("provider `{name}` allows {skew} s of clock skew (more than {MAX_SKEW_S} s)"),
                );
            }
        }
        if p.get("max_lifetime_s").is_none_or(Value::is_null) {
            r.config(
                &rules::NO_MAX_LIFETIME,
                &field,
                format!("provider `{name}` sets no `max_lifetime_s`"),
            );
        }
        let keys = p
            .pointer("/jwks/inline/keys")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, key) in keys.iter().enumerate() {
            if key.get("kty").and_then(Value::as_str) != Some("oct") {
                continue;
            }
            let alg = key.get("alg").and_then(Value::as_str).unwrap_or("HS256");
            let needed = match alg {
                "HS384" => 48,
                "HS512" => 64,
                _ => 32,
            };
            let bytes = key
                .get("k")
                .and_then(Value::as_str)
                .and_then(|k| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(k.trim_end_matches('='))
                        .ok()
                })
                .map_or(0, |k| k.len());
            if bytes < needed {
                r.config(
                    &rules::SHORT_HMAC_KEY,
                    &format!("{field}.jwks.inline.keys[{j}]"),
                    format!(
                        "provider `{name}`: {alg} key `{}` has {bytes} bytes, {needed} needed",
                        key.get("kid").and_then(Value::as_str).unwrap_or("?")
                    ),
                );
            }
        }
        for source in ["remote", "oidc"] {
            let Some(cluster) = p
                .pointer(&format!("/jwks/{source}/cluster"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            if let Some(reason) = plaintext_cluster(cluster, r.input.clusters.as_ref()) {
                r.config(
                    &rules::JWKS_WITHOUT_TLS,
                    &format!("{field}.jwks.{source}.cluster"),
                    format!("provider `{name}` fetches keys over cluster `{cluster}`, {reason}"),
                );
            }
        }
    }
}

/// Why a cluster is known to be plaintext: an Istio outbound cluster on a plaintext port, or
/// a bootstrap cluster without a TLS transport socket. `None` when it is TLS or unknown.
fn plaintext_cluster(
    cluster: &str,
    clusters: Option<&std::collections::BTreeMap<String, bool>>,
) -> Option<String> {
    if let Some(tls) = clusters.and_then(|c| c.get(cluster)) {
        return (!tls).then(|| "which has no TLS transport socket".to_owned());
    }
    let mut parts = cluster.split('|');
    if parts.next() == Some("outbound") {
        let port = parts.next().and_then(|p| p.parse::<u16>().ok())?;
        if matches!(port, 80 | 8080 | 8000) {
            return Some(format!("an Istio cluster on plaintext port {port}"));
        }
    }
    None
}

fn references_jwt(source: &str) -> bool {
    cel_scan::references(source)
        .iter()
        .any(|r| r.name == "jwt" || r.name.starts_with("jwt."))
}

fn rate_limits(r: &mut Report<'_>, config: &Value) {
    // Traffic can be unauthenticated when there is no provider, or a requirement or the
    // default lets requests without a token through.
    let requirements_allow_missing = config
        .pointer("/jwt/requirements")
        .and_then(Value::as_array)
        .is_some_and(|reqs| {
            reqs.iter()
                .any(|q| q.get("require").and_then(allows_missing).is_some())
        });
    let default_allows_missing = config
        .pointer("/jwt/default_requirement")
        .and_then(allows_missing)
        .is_some();
    let no_providers = config
        .pointer("/jwt/providers")
        .and_then(Value::as_array)
        .is_none_or(|p| p.is_empty());
    if !(requirements_allow_missing || default_allows_missing || no_providers) {
        return;
    }
    let limits = config
        .pointer("/rate_limits/limits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, limit) in limits.iter().enumerate() {
        let field = format!("rate_limits.limits[{i}].key");
        let key = limit.get("key").and_then(source_of).unwrap_or("");
        let when = limit.get("when").and_then(source_of).unwrap_or("");
        if references_jwt(key) || references_jwt(when) {
            continue;
        }
        let chosen = cel_scan::references(key)
            .into_iter()
            .find(|x| CLIENT_CHOSEN.iter().any(|c| x.name == *c));
        if let Some(reference) = chosen {
            r.cel(
                &rules::CLIENT_CHOSEN_KEY,
                &field,
                &reference,
                format!(
                    "limit `{}` is keyed on `{}`, which the client chooses, and applies to \
                     unauthenticated traffic",
                    name_of(limit),
                    reference.name
                ),
            );
        }
    }
}

/// Every expression of the configuration: `(field, source)`, and whether `jwt` is available.
fn expressions_of(config: &Value) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let mut add = |field: String, v: Option<&Value>, jwt: bool| {
        if let Some(source) = v.and_then(source_of) {
            out.push((field, source.to_owned(), jwt));
        }
    };
    for (i, rule) in rules_of(config) {
        for part in ["when", "allow", "deny"] {
            add(format!("policy.rules[{i}].{part}"), rule.get(part), true);
        }
    }
    if let Some(reqs) = config
        .pointer("/jwt/requirements")
        .and_then(Value::as_array)
    {
        for (i, q) in reqs.iter().enumerate() {
            add(format!("jwt.requirements[{i}].when"), q.get("when"), false);
        }
    }
    if let Some(limits) = config
        .pointer("/rate_limits/limits")
        .and_then(Value::as_array)
    {
        for (i, l) in limits.iter().enumerate() {
            for part in ["when", "key"] {
                add(format!("rate_limits.limits[{i}].{part}"), l.get(part), true);
            }
        }
    }
    out
}

fn expressions(r: &mut Report<'_>, config: &Value) {
    for (field, source, jwt_available) in expressions_of(config) {
        for reference in cel_scan::references(&source) {
            let later = LATER_ATTRIBUTE_PREFIXES
                .iter()
                .any(|p| reference.name.starts_with(p))
                || LATER_ATTRIBUTES
                    .iter()
                    .any(|a| reference.name == *a || reference.name.starts_with(&format!("{a}.")));
            let jwt_too_early =
                !jwt_available && (reference.name == "jwt" || reference.name.starts_with("jwt."));
            if later || jwt_too_early {
                let when = if jwt_too_early {
                    "only after authentication, and this expression selects the authentication"
                } else {
                    "only after the decision"
                };
                let message = format!("`{}` is known {when}", reference.name);
                r.cel(&rules::NOT_AT_REQUEST_TIME, &field, &reference, message);
            }
        }
    }
}
