//! Authorization rules in CEL.
//!
//! A policy is a list of named rules. Each rule has an optional `when` (does the rule apply
//! to this request?), exactly one condition, `allow` or `deny`, and a mode (`enforce` or
//! `shadow`). Evaluation follows Istio's order:
//!
//! 1. If an applicable **enforced deny** rule's condition is true, the request is denied;
//!    the first such rule (in order) decides.
//! 2. Otherwise, if an applicable **enforced allow** rule's condition is true, the request
//!    is allowed; the first such rule decides.
//! 3. Otherwise the policy's `default_action` decides (deny unless configured).
//!
//! Shadow rules are always evaluated and counted (`portcullis.rule.<name>.shadow_denied` /
//! `.shadow_allowed`) but never decide. A policy in shadow mode computes its verdict, counts
//! `portcullis.policy.shadow_denied` when it would have denied, and allows.
//!
//! Runtime errors fail closed: an error in `when` makes the rule applicable, an error in a
//! `deny` condition denies, an error in an `allow` condition does not allow. Each error is
//! counted in `portcullis.rule.<name>.errors`; reasons name the rule, never a value.
//!
//! A request only visits the rules whose `when` may be true for it ([`crate::guard_index`]):
//! a rule skipped there is one whose `when` is false, which has no effect on the verdict,
//! the counters or the log, so large policies cost about what small ones do.

use crate::attributes::Attribute;
use crate::error::{valid_name, ConfigError};
use crate::expr::{Activation, Expr, ExprSource};
use crate::guard_index::{Candidates, GuardIndex};
use crate::metrics;
pub use crate::mode::Mode;
use crate::ports::{Counters, Log, LogLevel};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    #[default]
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub when: Option<ExprSource>,
    #[serde(default)]
    pub allow: Option<ExprSource>,
    #[serde(default)]
    pub deny: Option<ExprSource>,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What happens when no rule allows or denies.
    #[serde(default)]
    pub default_action: Action,
    #[serde(default)]
    pub mode: Mode,
}

/// The policy's verdict for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow {
        rule: Option<String>,
    },
    Deny {
        rule: Option<String>,
        reason: String,
    },
}

/// Counter names of one rule, built once.
#[derive(Debug)]
struct RuleCounters {
    allowed: String,
    denied: String,
    shadow_allowed: String,
    shadow_denied: String,
    errors: String,
}

impl RuleCounters {
    fn new(name: &str) -> RuleCounters {
        let c = |what: &str| metrics::RULE_DECISIONS.with(&[name, what]);
        RuleCounters {
            allowed: c("allow"),
            denied: c("deny"),
            shadow_allowed: c("shadow_allow"),
            shadow_denied: c("shadow_deny"),
            errors: c("error"),
        }
    }
}

#[derive(Debug)]
struct Rule {
    name: String,
    /// Shared with every rule whose expression has the same text (compiled once).
    when: Option<Arc<Expr>>,
    condition: Arc<Expr>,
    action: Action,
    mode: Mode,
    counters: RuleCounters,
}

/// What one rule says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The rule doesn't apply, or its condition is false.
    NoMatch,
    /// The condition is true.
    Match,
    /// Evaluation failed (already counted); deny rules treat it as a match.
    Error,
}

impl Rule {
    fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.when
            .as_deref()
            .into_iter()
            .chain(std::iter::once(&*self.condition))
    }

    fn outcome(
        &self,
        activation: &Activation<'_>,
        counters: &mut dyn Counters,
        log: &mut dyn Log,
    ) -> Outcome {
        let mut errored = false;
        if let Some(when) = &self.when {
            match when.eval_bool(activation) {
                Ok(true) => {}
                Ok(false) => return Outcome::NoMatch,
                // fail closed: an unknown `when` makes the rule apply
                Err(_) => errored = true,
            }
        }
        let outcome = match self.condition.eval_bool(activation) {
            Ok(true) if errored => Outcome::Error,
            Ok(true) => Outcome::Match,
            Ok(false) => Outcome::NoMatch,
            Err(_) => Outcome::Error,
        };
        if errored || outcome == Outcome::Error {
            counters.increment(&self.counters.errors, 1);
            // The error's text may quote values (claims, headers): log the rule, not the text.
            log.log(
                LogLevel::Info,
                &format!(
                    "portcullis: rule `{}`: evaluation error ({})",
                    self.name,
                    match self.action {
                        Action::Deny => "deny rule applies: fail closed",
                        Action::Allow => "allow rule does not allow",
                    }
                ),
            );
        }
        outcome
    }
}

#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    default_action: Action,
    mode: Mode,
    host_attributes: Vec<Attribute>,
    uses_jwt: bool,
    /// Which rules' guards may hold for a request, so that rules whose `when` is certainly
    /// false are never evaluated (see [`crate::guard_index`]).
    guards: GuardIndex,
}

/// Large policies repeat expressions (`"team-a" in jwt.claims.groups` under many paths) and
/// parsing dominates compiling: each distinct text is compiled once per configuration. A text
/// that does not compile fails at its first use, so the error names the same field as before.
fn compile_shared<'c>(
    compiled: &mut HashMap<&'c str, Arc<Expr>>,
    source: &'c ExprSource,
    field: impl FnOnce() -> String,
) -> Result<Arc<Expr>, ConfigError> {
    if let Some(expr) = compiled.get(source.text()) {
        return Ok(Arc::clone(expr));
    }
    let expr = Expr::compile(source).map_err(|e| ConfigError::from_expr(field(), &e))?;
    let expr = Arc::new(expr);
    compiled.insert(source.text(), Arc::clone(&expr));
    Ok(expr)
}

impl Policy {
    pub fn compile(config: &PolicyConfig) -> Result<Policy, ConfigError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut names = BTreeSet::new();
        let mut compiled = HashMap::new();
        for (i, rc) in config.rules.iter().enumerate() {
            let field = format!("policy.rules[{i}]");
            if !valid_name(&rc.name) {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    format!(
                        "invalid rule name {:?}: use 1 to 64 letters, digits, '-' or '_'",
                        rc.name
                    ),
                ));
            }
            if !names.insert(rc.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    format!("duplicate rule name {:?}", rc.name),
                ));
            }
            let (action, source, key) = match (&rc.allow, &rc.deny) {
                (Some(a), None) => (Action::Allow, a, "allow"),
                (None, Some(d)) => (Action::Deny, d, "deny"),
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "rule {:?} has both `allow` and `deny`: give exactly one",
                            rc.name
                        ),
                    ))
                }
                (None, None) => {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "rule {:?} has neither `allow` nor `deny`: give exactly one",
                            rc.name
                        ),
                    ))
                }
            };
            let when = match &rc.when {
                Some(w) => Some(compile_shared(&mut compiled, w, || {
                    format!("{field}.when")
                })?),
                None => None,
            };
            let condition = compile_shared(&mut compiled, source, || format!("{field}.{key}"))?;
            rules.push(Rule {
                name: rc.name.clone(),
                when,
                condition,
                action,
                mode: rc.mode,
                counters: RuleCounters::new(&rc.name),
            });
        }
        let exprs = || rules.iter().flat_map(Rule::exprs);
        let host_attributes: BTreeSet<Attribute> =
            exprs().flat_map(Expr::host_attributes).collect();
        let uses_jwt = exprs().any(Expr::uses_jwt);
        let guards = GuardIndex::build(rules.iter().map(|r| r.when.as_deref()));
        Ok(Policy {
            host_attributes: host_attributes.into_iter().collect(),
            uses_jwt,
            guards,
            rules,
            default_action: config.default_action,
            mode: config.mode,
        })
    }

    pub fn host_attributes(&self) -> Vec<Attribute> {
        self.host_attributes.clone()
    }

    /// Every compiled expression: guards and conditions.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.rules.iter().flat_map(Rule::exprs)
    }

    /// Whether any rule reads `jwt.*`.
    pub fn uses_jwt(&self) -> bool {
        self.uses_jwt
    }

    pub fn evaluate(
        &self,
        activation: &Activation<'_>,
        counters: &mut dyn Counters,
        log: &mut dyn Log,
    ) -> Verdict {
        let candidates = self.guards.candidates(activation);
        self.evaluate_candidates(&candidates, activation, counters, log)
    }

    /// [`Policy::evaluate`] over the given rules only: the rules left out must be ones whose
    /// `when` is false for this request.
    fn evaluate_candidates(
        &self,
        candidates: &Candidates,
        activation: &Activation<'_>,
        counters: &mut dyn Counters,
        log: &mut dyn Log,
    ) -> Verdict {
        let verdict = self.decide(candidates, activation, counters, log);
        match (self.mode, verdict) {
            (Mode::Enforce, verdict) => verdict,
            (Mode::Shadow, Verdict::Deny { rule, .. }) => {
                counters.increment(metrics::POLICY_SHADOW_DENIALS.plain(), 1);
                log.log(
                    LogLevel::Info,
                    &format!(
                        "portcullis: shadow policy would deny (rule {})",
                        rule.as_deref().unwrap_or("default")
                    ),
                );
                Verdict::Allow { rule: None }
            }
            (Mode::Shadow, allow) => allow,
        }
    }

    fn decide(
        &self,
        candidates: &Candidates,
        activation: &Activation<'_>,
        counters: &mut dyn Counters,
        log: &mut dyn Log,
    ) -> Verdict {
        let mut denied: Option<Verdict> = None;
        // (1) deny rules. Once an enforced deny decided, only shadow rules are still run.
        let rules = || candidates.iter().filter_map(|i| self.rules.get(i));
        for rule in rules().filter(|r| r.action == Action::Deny) {
            if denied.is_some() && rule.mode == Mode::Enforce {
                continue;
            }
            let outcome = rule.outcome(activation, counters, log);
            if outcome == Outcome::NoMatch {
                continue;
            }
            match rule.mode {
                Mode::Shadow => {
                    counters.increment(&rule.counters.shadow_denied, 1);
                    log.log(
                        LogLevel::Info,
                        &format!("portcullis: shadow rule `{}` would deny", rule.name),
                    );
                }
                Mode::Enforce => {
                    counters.increment(&rule.counters.denied, 1);
                    let reason = if outcome == Outcome::Error {
                        format!("rule {}: evaluation error", rule.name)
                    } else {
                        format!("denied by rule {}", rule.name)
                    };
                    denied = Some(Verdict::Deny {
                        rule: Some(rule.name.clone()),
                        reason,
                    });
                }
            }
        }
        if let Some(verdict) = denied {
            return verdict;
        }
        // (2) allow rules: the first enforced match decides; shadow rules are all run.
        let mut allowed: Option<&Rule> = None;
        let mut last_error: Option<&Rule> = None;
        for rule in rules().filter(|r| r.action == Action::Allow) {
            if allowed.is_some() && rule.mode == Mode::Enforce {
                continue;
            }
            match (rule.outcome(activation, counters, log), rule.mode) {
                (Outcome::Match, Mode::Shadow) => {
                    counters.increment(&rule.counters.shadow_allowed, 1)
                }
                (Outcome::Match, Mode::Enforce) => {
                    counters.increment(&rule.counters.allowed, 1);
                    allowed = Some(rule);
                }
                (Outcome::Error, Mode::Enforce) => last_error = last_error.or(Some(rule)),
                _ => {}
            }
        }
        if let Some(rule) = allowed {
            return Verdict::Allow {
                rule: Some(rule.name.clone()),
            };
        }
        // (3) the default action.
        match self.default_action {
            Action::Allow => Verdict::Allow { rule: None },
            Action::Deny => match last_error {
                // An allow rule that could not be evaluated is the likely culprit: say so.
                Some(rule) => Verdict::Deny {
                    rule: Some(rule.name.clone()),
                    reason: format!("rule {}: evaluation error", rule.name),
                },
                None => Verdict::Deny {
                    rule: None,
                    reason: "no rule allowed the request".into(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::JwtAttributes;
    use crate::ports::memory::MemoryCounters;
    use crate::ports::NoLog;
    use crate::request::{AttributeValue, HostAttribute, RequestView};
    use serde_json::json;

    fn policy(config: serde_json::Value) -> Result<Policy, ConfigError> {
        let config: PolicyConfig = serde_json::from_value(config).unwrap();
        Policy::compile(&config)
    }

    fn token(groups: &[&str]) -> JwtAttributes {
        JwtAttributes::from_json(
            "local",
            &json!({"alg": "ES256"}),
            &json!({"sub": "alice", "groups": groups, "tenant": "acme", "scope": "read write"}),
        )
    }

    fn run(
        p: &Policy,
        req: &RequestView,
        jwt: Option<&JwtAttributes>,
    ) -> (Verdict, MemoryCounters) {
        let mut counters = MemoryCounters::default();
        let act = Activation::new(req).with_jwt(jwt);
        (p.evaluate(&act, &mut counters, &mut NoLog), counters)
    }

    fn sample() -> Policy {
        policy(json!({
            "rules": [
                {"name": "public", "allow": "request.url_path.startsWith('/public/')"},
                {"name": "admin-pages",
                 "when": "request.url_path.startsWith('/admin')",
                 "allow": "'admin' in jwt.claims.groups"},
                {"name": "block-delete", "deny": "request.method == 'DELETE'"},
                {"name": "readers", "allow": "'read' in jwt.claims.scope.split(' ')"},
            ]
        }))
        .unwrap()
    }

    #[test]
    fn deny_rules_come_first_then_allow_in_order_then_default() {
        let p = sample();
        let admin = token(&["admin"]);
        let (v, c) = run(&p, &RequestView::new("GET", "/admin/x", &[]), Some(&admin));
        assert_eq!(
            v,
            Verdict::Allow {
                rule: Some("admin-pages".into())
            }
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.admin-pages.decision.allow"),
            1
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.readers.decision.allow"),
            0
        );

        // The deny rule is listed after the allow rules, but wins.
        let (v, c) = run(
            &p,
            &RequestView::new("DELETE", "/public/a", &[]),
            Some(&admin),
        );
        assert_eq!(
            v,
            Verdict::Deny {
                rule: Some("block-delete".into()),
                reason: "denied by rule block-delete".into()
            }
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.block-delete.decision.deny"),
            1
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.public.decision.allow"),
            0
        );

        // `when` false: the rule doesn't apply; the next allow rule decides.
        let user = token(&["dev"]);
        let (v, _) = run(&p, &RequestView::new("GET", "/data", &[]), Some(&user));
        assert_eq!(
            v,
            Verdict::Allow {
                rule: Some("readers".into())
            }
        );

        // Nothing allows: default deny.
        let p2 = policy(json!({"rules": [{"name": "a", "allow": "false"}]})).unwrap();
        let (v, _) = run(&p2, &RequestView::new("GET", "/", &[]), None);
        assert_eq!(
            v,
            Verdict::Deny {
                rule: None,
                reason: "no rule allowed the request".into()
            }
        );
        let p3 = policy(json!({"rules": [], "default_action": "allow"})).unwrap();
        let (v, _) = run(&p3, &RequestView::new("GET", "/", &[]), None);
        assert_eq!(v, Verdict::Allow { rule: None });
    }

    #[test]
    fn errors_fail_closed_and_are_counted() {
        let p = policy(json!({
            "rules": [
                {"name": "needs-tenant", "allow": "jwt.claims.tenant == 'acme'"},
                {"name": "deny-bad", "deny": "jwt.claims.missing == 'x'"},
            ],
            "default_action": "allow"
        }))
        .unwrap();
        let t = token(&[]);
        let (v, c) = run(&p, &RequestView::new("GET", "/", &[]), Some(&t));
        assert_eq!(
            v,
            Verdict::Deny {
                rule: Some("deny-bad".into()),
                reason: "rule deny-bad: evaluation error".into()
            }
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.deny-bad.decision.error"),
            1
        );

        // An allow condition that errors does not allow.
        let p = policy(json!({"rules": [
            {"name": "a", "allow": "jwt.claims.groups.size() > 0"},
        ]}))
        .unwrap();
        let (v, c) = run(&p, &RequestView::new("GET", "/", &[]), None);
        assert_eq!(
            v,
            Verdict::Deny {
                rule: Some("a".into()),
                reason: "rule a: evaluation error".into()
            }
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.a.decision.error"),
            1
        );

        // An error in `when` makes the rule apply: a deny rule then denies.
        let p = policy(json!({"rules": [
            {"name": "w", "when": "request.headers['x-env'] == 'prod'", "deny": "true"},
            {"name": "all", "allow": "true"},
        ]}))
        .unwrap();
        let (v, c) = run(&p, &RequestView::new("GET", "/", &[]), None);
        assert!(
            matches!(v, Verdict::Deny { rule: Some(ref r), .. } if r == "w"),
            "{v:?}"
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.w.decision.error"),
            1
        );
        let (v, _) = run(&p, &RequestView::new("GET", "/", &[("x-env", "dev")]), None);
        assert_eq!(
            v,
            Verdict::Allow {
                rule: Some("all".into())
            }
        );
    }

    #[test]
    fn reasons_never_contain_values() {
        let p = policy(json!({"rules": [
            {"name": "r", "deny": "request.headers['authorization'] + 1 == 2"},
        ]}))
        .unwrap();
        let (v, _) = run(
            &p,
            &RequestView::new("GET", "/", &[("authorization", "Bearer secret")]),
            None,
        );
        let Verdict::Deny { reason, .. } = v else {
            panic!()
        };
        assert!(!reason.contains("secret"));
    }

    #[test]
    fn shadow_rules_are_counted_but_never_decide() {
        let p = policy(json!({"rules": [
            {"name": "would-deny", "deny": "request.method == 'GET'", "mode": "shadow"},
            {"name": "would-allow", "allow": "true", "mode": "shadow"},
            {"name": "allow-get", "allow": "request.method == 'GET'"},
        ]}))
        .unwrap();
        let (v, c) = run(&p, &RequestView::new("GET", "/", &[]), None);
        assert_eq!(
            v,
            Verdict::Allow {
                rule: Some("allow-get".into())
            }
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.would-deny.decision.shadow_deny"),
            1
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.would-allow.decision.shadow_allow"),
            1
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.would-deny.decision.deny"),
            0
        );

        let (v, c) = run(&p, &RequestView::new("POST", "/", &[]), None);
        assert_eq!(
            v,
            Verdict::Deny {
                rule: None,
                reason: "no rule allowed the request".into()
            },
            "a shadow allow does not allow"
        );
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.would-allow.decision.shadow_allow"),
            1
        );
    }

    #[test]
    fn shadow_policy_allows_and_counts() {
        let p = policy(json!({
            "mode": "shadow",
            "rules": [{"name": "no-post", "deny": "request.method == 'POST'"}],
            "default_action": "allow"
        }))
        .unwrap();
        let (v, c) = run(&p, &RequestView::new("POST", "/", &[]), None);
        assert_eq!(v, Verdict::Allow { rule: None });
        assert_eq!(c.get("portcullis_policy_shadow_denials_total"), 1);
        assert_eq!(
            c.get("portcullis_rule_decisions_total.rule.no-post.decision.deny"),
            1
        );
        let (v, c) = run(&p, &RequestView::new("GET", "/", &[]), None);
        assert_eq!(v, Verdict::Allow { rule: None });
        assert_eq!(c.get("portcullis_policy_shadow_denials_total"), 0);
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = policy(json!({"rules": [
            {"name": "a", "allow": "true"},
            {"name": "b", "allow": "true", "deny": "false"},
        ]}))
        .unwrap_err();
        assert_eq!(e.field, "policy.rules[1]");
        let e = policy(json!({"rules": [{"name": "a"}]})).unwrap_err();
        assert_eq!(e.field, "policy.rules[0]");
        let e = policy(json!({"rules": [
            {"name": "a", "allow": "true"}, {"name": "a", "deny": "true"},
        ]}))
        .unwrap_err();
        assert_eq!(e.field, "policy.rules[1].name");
        assert!(e.message.contains("duplicate"));
        let e = policy(json!({"rules": [{"name": "bad name", "allow": "true"}]})).unwrap_err();
        assert_eq!(e.field, "policy.rules[0].name");
        let e = policy(json!({"rules": [
            {"name": "a", "allow": "true"}, {"name": "b", "allow": "true"},
            {"name": "c", "allow": "true"},
            {"name": "d", "allow": {"file": "d.cel", "source": "// d\nrequest.methd == 'GET'"}},
        ]}))
        .unwrap_err();
        assert_eq!(e.field, "policy.rules[3].allow");
        assert!(e.message.contains("d.cel:2:9"), "{}", e.message);
        let e =
            policy(json!({"rules": [{"name": "a", "when": "nope", "allow": "true"}]})).unwrap_err();
        assert_eq!(e.field, "policy.rules[0].when");
    }

    #[test]
    fn identical_expressions_are_compiled_once() {
        let p = policy(json!({"rules": [
            {"name": "a", "when": "request.method == 'GET'", "allow": "'x' in jwt.claims.groups"},
            {"name": "b", "when": "request.method == 'PUT'", "allow": "'x' in jwt.claims.groups"},
            {"name": "c", "when": "request.method == 'PUT'", "deny": "request.method == 'GET'"},
        ]}))
        .unwrap();
        let [a, b, c] = [0, 1, 2].map(|i| &p.rules[i]);
        assert!(Arc::ptr_eq(&a.condition, &b.condition));
        assert!(Arc::ptr_eq(a.when.as_ref().unwrap(), &c.condition));
        assert!(Arc::ptr_eq(
            b.when.as_ref().unwrap(),
            c.when.as_ref().unwrap()
        ));
        assert!(!Arc::ptr_eq(&a.condition, &c.condition));
        // A text that does not compile is reported where it first appears.
        let e = policy(json!({"rules": [
            {"name": "a", "allow": "true"},
            {"name": "b", "when": "request.pth == '/'", "allow": "true"},
            {"name": "c", "allow": "request.pth == '/'"},
        ]}))
        .unwrap_err();
        assert_eq!(e.field, "policy.rules[1].when");
    }

    #[test]
    fn collects_host_attributes_and_jwt_use() {
        let p = policy(json!({"rules": [
            {"name": "internal", "allow": "cidr('10.0.0.0/8').containsIP(ip(source.address))"},
            {"name": "mtls", "when": "connection.mtls", "allow": "jwt.claims.sub != ''"},
        ]}))
        .unwrap();
        assert_eq!(
            p.host_attributes(),
            vec![HostAttribute::SourceAddress, HostAttribute::ConnectionMtls]
        );
        assert!(p.uses_jwt());
        assert!(!sample().host_attributes().iter().any(|_| true));

        let req = RequestView::new("GET", "/", &[]).with_attribute(
            HostAttribute::SourceAddress,
            AttributeValue::String("10.9.8.7:1234".into()),
        );
        let (v, _) = run(&p, &req, None);
        assert_eq!(
            v,
            Verdict::Allow {
                rule: Some("internal".into())
            }
        );
    }

    /// Rough per-request cost of a 10-rule policy (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn ten_rule_policy_timing() {
        let p = policy(json!({"rules": [
            {"name": "block-delete", "deny": "request.method == 'DELETE'"},
            {"name": "block-trace", "deny": "request.method == 'TRACE'"},
            {"name": "tenant", "deny": "'x-tenant' in request.headers && request.headers['x-tenant'] != jwt.claims.tenant"},
            {"name": "internal", "when": "request.url_path.startsWith('/internal/')",
             "deny": "!cidr('10.0.0.0/8').containsIP(ip(source.address))"},
            {"name": "public", "allow": "request.url_path.startsWith('/public/')"},
            {"name": "health", "allow": "request.url_path == '/healthz'"},
            {"name": "admin", "when": "request.url_path.startsWith('/admin')", "allow": "'admin' in jwt.claims.groups"},
            {"name": "writes", "when": "request.method in ['POST', 'PUT', 'PATCH']", "allow": "'write' in jwt.claims.scope.split(' ')"},
            {"name": "mtls", "when": "request.url_path.startsWith('/mtls/')", "allow": "connection.mtls"},
            {"name": "reads", "allow": "request.method == 'GET' && 'read' in jwt.claims.scope.split(' ')"},
        ]}))
        .unwrap();
        let req = RequestView::new(
            "GET",
            "/api/items?page=2",
            &[
                ("x-tenant", "acme"),
                ("user-agent", "bench"),
                ("accept", "*/*"),
            ],
        )
        .with_attribute(
            HostAttribute::SourceAddress,
            AttributeValue::String("10.1.2.3:5555".into()),
        );
        let t = token(&["dev"]);
        let n = 20_000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            let mut counters = crate::ports::NoCounters;
            let act = Activation::new(&req).with_jwt(Some(&t));
            let v = p.evaluate(&act, &mut counters, &mut NoLog);
            assert_eq!(
                v,
                Verdict::Allow {
                    rule: Some("reads".into())
                }
            );
        }
        let per = start.elapsed() / n;
        println!("10-rule policy: {per:?} per request");
    }

    mod indexed_equals_linear {
        use super::*;
        use crate::guard_index::strategies::{guard, request};
        use crate::ports::memory::MemoryLog;
        use proptest::prelude::*;

        fn condition() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "true",
                "false",
                "request.method == 'GET'",
                "jwt.claims.tenant == 'acme'",
                "request.headers['x'] == 'y'",
                "request.url_path.startsWith('/a')",
            ])
            .prop_map(str::to_owned)
        }

        fn rule() -> impl Strategy<Value = serde_json::Value> {
            (
                prop::option::weighted(0.8, guard()),
                condition(),
                any::<bool>(),
                prop::bool::weighted(0.2),
            )
                .prop_map(|(when, condition, deny, shadow)| {
                    let mut rule = json!({"mode": if shadow { "shadow" } else { "enforce" }});
                    rule[if deny { "deny" } else { "allow" }] = json!(condition);
                    if let Some(when) = when {
                        rule["when"] = json!(when);
                    }
                    rule
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Decision, deciding rule, every counter and every log line are the same with
            /// the guard index as with every rule evaluated in order.
            #[test]
            fn same_verdict_counters_and_logs(
                rules in prop::collection::vec(rule(), 1..12),
                default_allow in any::<bool>(),
                shadow_policy in prop::bool::weighted(0.2),
                requests in prop::collection::vec(request(), 1..8),
            ) {
                let rules: Vec<serde_json::Value> = rules
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut r)| { r["name"] = json!(format!("r{i}")); r })
                    .collect();
                let p = policy(json!({
                    "rules": rules,
                    "default_action": if default_allow { "allow" } else { "deny" },
                    "mode": if shadow_policy { "shadow" } else { "enforce" },
                }))
                .unwrap();
                for (req, jwt) in &requests {
                    let act = Activation::new(req).with_jwt(jwt.as_ref());
                    let (mut indexed_counters, mut indexed_log) =
                        (MemoryCounters::default(), MemoryLog::default());
                    let indexed = p.evaluate(&act, &mut indexed_counters, &mut indexed_log);
                    let (mut linear_counters, mut linear_log) =
                        (MemoryCounters::default(), MemoryLog::default());
                    let act = Activation::new(req).with_jwt(jwt.as_ref());
                    let linear = p.evaluate_candidates(
                        &Candidates::All(p.rules.len()),
                        &act,
                        &mut linear_counters,
                        &mut linear_log,
                    );
                    prop_assert_eq!(&indexed, &linear, "{:?}", req);
                    prop_assert_eq!(&indexed_counters.values, &linear_counters.values);
                    prop_assert_eq!(&indexed_log.lines, &linear_log.lines);
                }
            }
        }
    }

    /// The example policy files compile, and take the native fast path.
    #[test]
    fn example_policy_files() {
        let files = [
            ("admin.cel", include_str!("../../policies/admin.cel")),
            ("tenant.cel", include_str!("../../policies/tenant.cel")),
            ("public.cel", include_str!("../../policies/public.cel")),
            ("internal.cel", include_str!("../../policies/internal.cel")),
            (
                "write-scope.cel",
                include_str!("../../policies/write-scope.cel"),
            ),
            ("mtls.cel", include_str!("../../policies/mtls.cel")),
        ];
        for (file, source) in files {
            let e = Expr::compile(&ExprSource::File {
                file: file.into(),
                source: source.into(),
            })
            .unwrap_or_else(|e| panic!("{e}"));
            assert!(e.has_fast_path(), "{file}");
        }
    }
}
