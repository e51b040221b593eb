//! Inline suppressions: `# portcullis-lint: allow PC003 -- why` (or `//` in `.cel` files) on
//! the finding's line or the line above. Several ids may be listed (`allow PC003, PC009`). A
//! suppression must give a reason (PC015) and must match a finding (PC016).

use super::rules;
use super::{Finding, Location};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MARKER: &str = "portcullis-lint:";

#[derive(Debug)]
struct Directive {
    line: usize,
    column: usize,
    ids: Vec<String>,
    reason: String,
    /// Whether the directive is the only thing on its line (then it covers the next line).
    own_line: bool,
    used: bool,
}

fn parse(text: &str) -> Vec<Directive> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(at) = line.find(MARKER) else {
            continue;
        };
        let before = line.get(..at).unwrap_or("").trim_end();
        let comment_start = before.ends_with('#') || before.ends_with("//");
        if !comment_start {
            continue;
        }
        let rest = line.get(at + MARKER.len()..).unwrap_or("").trim();
        let Some(rest) = rest.strip_prefix("allow") else {
            continue;
        };
        let (ids, reason) = match rest.split_once("--") {
            Some((ids, reason)) => (ids, reason.trim()),
            None => (rest, ""),
        };
        let code_before = before.trim_end_matches('#').trim_end_matches("//").trim();
        out.push(Directive {
            line: n + 1,
            column: at + 1,
            ids: ids
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            reason: reason.to_owned(),
            own_line: code_before.is_empty(),
            used: false,
        });
    }
    out
}

/// Marks suppressed findings and adds PC015/PC016 findings about the directives of the
/// linted file and of every file a finding points into.
pub fn apply(findings: &mut Vec<Finding>, linted: &Path) {
    let mut files: BTreeMap<PathBuf, Vec<Directive>> = BTreeMap::new();
    let mut wanted: Vec<PathBuf> = vec![linted.to_path_buf()];
    wanted.extend(
        findings
            .iter()
            .filter_map(|f| f.location.as_ref().map(|l| l.file.clone())),
    );
    for file in wanted {
        files
            .entry(file)
            .or_insert_with_key(|file| parse(&std::fs::read_to_string(file).unwrap_or_default()));
    }
    for finding in findings.iter_mut() {
        let Some(at) = &finding.location else {
            continue;
        };
        let Some(directives) = files.get_mut(&at.file) else {
            continue;
        };
        let id = finding.rule.id;
        let matching = directives.iter_mut().find(|d| {
            (d.line == at.line || (d.own_line && d.line + 1 == at.line))
                && d.ids.iter().any(|i| i == id)
                && !d.reason.is_empty()
        });
        if let Some(d) = matching {
            d.used = true;
            finding.suppressed = Some(d.reason.clone());
        }
    }
    for (file, directives) in files {
        for d in directives {
            let location = Some(Location {
                file: file.clone(),
                line: d.line,
                column: d.column,
            });
            if d.reason.is_empty() {
                findings.push(Finding {
                    rule: &rules::SUPPRESSION_WITHOUT_REASON,
                    message: format!("suppression of {} gives no reason", d.ids.join(", ")),
                    field: String::new(),
                    location,
                    suppressed: None,
                });
            } else if !d.used {
                findings.push(Finding {
                    rule: &rules::UNUSED_SUPPRESSION,
                    message: format!("suppression of {} matches no finding", d.ids.join(", ")),
                    field: String::new(),
                    location,
                    suppressed: None,
                });
            }
        }
    }
}
