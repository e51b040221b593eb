//! The report: cargo-style text, JSON, or SARIF 2.1.0 (what code-scanning tools read).

use super::{Finding, Format, Severity, RULES};
use serde_json::{json, Value};

pub fn render(findings: &[Finding], format: Format) -> String {
    match format {
        Format::Text => text(findings),
        Format::Json => {
            serde_json::to_string_pretty(&Value::Array(findings.iter().map(finding_json).collect()))
                .unwrap_or_default()
                + "\n"
        }
        Format::Sarif => serde_json::to_string_pretty(&sarif(findings)).unwrap_or_default() + "\n",
    }
}

fn position(f: &Finding) -> Option<String> {
    f.location
        .as_ref()
        .map(|l| format!("{}:{}:{}", l.file.display(), l.line, l.column))
}

/// ```text
/// warning[PC003]: rule `legacy-clients` is in shadow mode: it never decides
///   --> policies/portcullis.yaml:37:7
///    = field: policy.rules[2].mode
///    = why: a rule in shadow mode never decides; …
/// ```
fn text(findings: &[Finding]) -> String {
    let mut out = String::new();
    let mut counts = [0usize; 3];
    let mut suppressed = 0;
    for f in findings {
        if f.suppressed.is_some() {
            suppressed += 1;
            continue;
        }
        counts[f.severity() as usize] += 1;
        out.push_str(&format!(
            "{}[{}]: {}\n",
            f.severity().as_str(),
            f.rule.id,
            f.message
        ));
        if let Some(at) = position(f) {
            out.push_str(&format!("  --> {at}\n"));
        }
        if !f.field.is_empty() {
            out.push_str(&format!("   = field: {}\n", f.field));
        }
        out.push_str(&format!("   = why: {}\n\n", f.rule.why));
    }
    let [notes, warnings, errors] = counts;
    out.push_str(&format!(
        "lint: {errors} error(s), {warnings} warning(s), {notes} note(s), {suppressed} suppressed\n"
    ));
    out
}

fn finding_json(f: &Finding) -> Value {
    let mut v = json!({
        "id": f.rule.id,
        "name": f.rule.name,
        "severity": f.severity().as_str(),
        "message": f.message,
        "field": f.field,
        "why": f.rule.why,
    });
    if let Some(l) = &f.location {
        v["file"] = json!(l.file.display().to_string());
        v["line"] = json!(l.line);
        v["column"] = json!(l.column);
    }
    if let Some(reason) = &f.suppressed {
        v["suppressed"] = json!(reason);
    }
    v
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

fn sarif(findings: &[Finding]) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": {"text": r.name},
                "fullDescription": {"text": r.why},
                "defaultConfiguration": {"level": level(r.severity)},
                "help": {"text": format!("{} (docs/operations.md#lint-findings)", r.why)},
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let mut result = json!({
                "ruleId": f.rule.id,
                "ruleIndex": RULES.iter().position(|r| r.id == f.rule.id),
                "level": level(f.severity()),
                "message": {"text": if f.field.is_empty() { f.message.clone() } else { format!("{} (field `{}`)", f.message, f.field) }},
            });
            if let Some(l) = &f.location {
                result["locations"] = json!([{
                    "physicalLocation": {
                        "artifactLocation": {"uri": l.file.display().to_string().replace('\\', "/")},
                        "region": {"startLine": l.line, "startColumn": l.column},
                    }
                }]);
            }
            if let Some(reason) = &f.suppressed {
                result["suppressions"] = json!([{"kind": "inSource", "justification": reason}]);
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "portcullis lint",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
