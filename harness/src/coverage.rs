//! `portcullis test --coverage`: which policy rules decided no case, and which rules'
//! `when` guards the cases never made true (or never false).
//!
//! A rule is covered when some case's decision names it. A rule's guard is probed by
//! running every case again against a variant of the configuration whose only rule is
//! `{name, when: <the guard>, allow: true}` with `default_action: deny`: the case then
//! reaches the upstream through that rule exactly when the guard holds for it (after
//! authentication, which the variant keeps). The percentage counts rules decided plus
//! guards seen both true and false, over rules plus guards.

use crate::cases::{Case, Runner, Verdict};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Default, Clone)]
struct RuleCoverage {
    decided: usize,
    guard: Option<String>,
    guard_true: usize,
    guard_false: usize,
}

/// Coverage over all the configurations a run tested, by configuration file.
#[derive(Debug, Default)]
pub struct Coverage {
    configs: BTreeMap<String, Vec<(String, RuleCoverage)>>,
}

fn rules_of(config: &Value) -> Vec<(String, Option<String>)> {
    config
        .pointer("/policy/rules")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let name = r
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("rules[{i}]"));
                    let guard = r.get("when").and_then(Value::as_str).map(str::to_owned);
                    (name, guard)
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Coverage {
    fn entry(&mut self, config_path: &Path, config: &Value) -> &mut Vec<(String, RuleCoverage)> {
        self.configs
            .entry(config_path.display().to_string())
            .or_insert_with(|| {
                rules_of(config)
                    .into_iter()
                    .map(|(name, guard)| {
                        (
                            name,
                            RuleCoverage {
                                guard,
                                ..RuleCoverage::default()
                            },
                        )
                    })
                    .collect()
            })
    }

    /// Counts the rule that decided one case.
    pub fn record(&mut self, config_path: &Path, config: &Value, verdict: Option<&Verdict>) {
        let entry = self.entry(config_path, config);
        if let Some(rule) = verdict.and_then(|v| v.rule.as_deref()) {
            for (name, c) in entry.iter_mut() {
                if name == rule {
                    c.decided += 1;
                }
            }
        }
    }

    /// Runs `cases` against one single-rule variant per guarded rule, to see for which
    /// cases each guard holds.
    pub fn probe_guards(&mut self, config_path: &Path, runner: &Runner, cases: &[&Case]) {
        let config = &runner.config;
        let rules = rules_of(config);
        for (name, guard) in rules {
            let Some(guard) = guard else { continue };
            let mut variant = config.clone();
            variant["policy"]["rules"] = json!([{"name": name, "when": guard, "allow": "true"}]);
            variant["policy"]["default_action"] = json!("deny");
            // Limits would turn repeated cases into 429s that hide the guard.
            if let Some(obj) = variant.as_object_mut() {
                obj.remove("rate_limits");
            }
            let (mut held, mut failed) = (0, 0);
            for case in cases {
                match runner.run_case_with(case, &variant) {
                    Ok((v, _, _)) if v.rule.as_deref() == Some(name.as_str()) => held += 1,
                    Ok((v, _, _)) if v.decision != "stuck" && v.status == 403 => failed += 1,
                    _ => {}
                }
            }
            let entry = self.entry(config_path, config);
            if let Some((_, c)) = entry.iter_mut().find(|(n, _)| *n == name) {
                c.guard_true += held;
                c.guard_false += failed;
            }
        }
    }

    /// (covered, total) items.
    fn counts(&self) -> (usize, usize) {
        let mut covered = 0;
        let mut total = 0;
        for rules in self.configs.values() {
            for (_, c) in rules {
                total += 1;
                covered += usize::from(c.decided > 0);
                if c.guard.is_some() {
                    total += 1;
                    covered += usize::from(c.guard_true > 0 && c.guard_false > 0);
                }
            }
        }
        (covered, total)
    }

    /// Covered items as a percentage (100 when there is nothing to cover).
    pub fn percent(&self) -> f64 {
        let (covered, total) = self.counts();
        if total == 0 {
            100.0
        } else {
            covered as f64 * 100.0 / total as f64
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let (covered, total) = self.counts();
        let _ = writeln!(
            out,
            "coverage: {covered}/{total} rules and guards ({:.1}%)",
            self.percent()
        );
        for (config, rules) in &self.configs {
            for (name, c) in rules {
                if c.decided == 0 {
                    let _ = writeln!(out, "  {config}: rule `{name}` decided no case");
                }
                if c.guard.is_some() {
                    if c.guard_true == 0 {
                        let _ =
                            writeln!(out, "  {config}: the `when` of `{name}` held for no case");
                    } else if c.guard_false == 0 {
                        let _ = writeln!(
                            out,
                            "  {config}: the `when` of `{name}` held for every case (never false)"
                        );
                    }
                }
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let (covered, total) = self.counts();
        let mut uncovered = Vec::new();
        for (config, rules) in &self.configs {
            for (name, c) in rules {
                uncovered.push(json!({
                    "config": config, "rule": name, "decided": c.decided,
                    "when": c.guard, "when_true": c.guard_true, "when_false": c.guard_false,
                }));
            }
        }
        json!({"covered": covered, "total": total, "percent": self.percent(), "rules": uncovered})
    }
}
