//! Test results and their reports: `cargo test`-like text, JSON, and JUnit XML for CI
//! systems. Shared by `portcullis run` (suites) and `portcullis test` (policy cases).

use serde::Serialize;
use std::fmt::Write;

/// One case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The file the case is in.
    pub file: String,
    pub name: String,
    pub passed: bool,
    /// One line per mismatch (empty when passed).
    pub failures: Vec<String>,
    /// Wall-clock seconds the case took.
    pub seconds: f64,
}

impl CaseResult {
    pub fn passed(file: &str, name: &str, seconds: f64) -> CaseResult {
        CaseResult {
            file: file.to_owned(),
            name: name.to_owned(),
            passed: true,
            failures: Vec::new(),
            seconds,
        }
    }
    pub fn failed(file: &str, name: &str, failures: Vec<String>, seconds: f64) -> CaseResult {
        CaseResult {
            file: file.to_owned(),
            name: name.to_owned(),
            passed: false,
            failures,
            seconds,
        }
    }
}

/// `test FILE::CASE ... ok|FAILED` lines, a `failures:` section, and the final
/// `N passed, N failed` line.
pub fn text(results: &[CaseResult]) -> String {
    let mut out = String::new();
    for r in results {
        let verdict = if r.passed { "ok" } else { "FAILED" };
        let _ = writeln!(out, "test {}::{} ... {verdict}", r.file, r.name);
    }
    let failed: Vec<&CaseResult> = results.iter().filter(|r| !r.passed).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\nfailures:");
        for r in &failed {
            let _ = writeln!(out, "\n---- {}::{} ----", r.file, r.name);
            for f in &r.failures {
                let _ = writeln!(out, "  {f}");
            }
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    );
    out
}

/// `{results: [...], passed, failed}`.
pub fn json(results: &[CaseResult]) -> serde_json::Value {
    let failed = results.iter().filter(|r| !r.passed).count();
    serde_json::json!({
        "results": results,
        "passed": results.len() - failed,
        "failed": failed,
    })
}

/// JUnit XML: one `<testsuite>` per file, one `<testcase>` per case, a `<failure>` with the
/// mismatches for each failed one.
pub fn junit(suite_name: &str, results: &[CaseResult]) -> String {
    let mut files: Vec<&str> = Vec::new();
    for r in results {
        if !files.contains(&r.file.as_str()) {
            files.push(&r.file);
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    let total: f64 = results.iter().map(|r| r.seconds).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failed}\" time=\"{total:.3}\">",
        xml(suite_name),
        results.len()
    );
    for file in files {
        let cases: Vec<&CaseResult> = results.iter().filter(|r| r.file == file).collect();
        let f = cases.iter().filter(|r| !r.passed).count();
        let t: f64 = cases.iter().map(|r| r.seconds).sum();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" errors=\"0\" time=\"{t:.3}\">",
            xml(file),
            cases.len()
        );
        for c in cases {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                xml(file),
                xml(&c.name),
                c.seconds
            );
            if c.passed {
                out.push_str("/>\n");
            } else {
                let first = c.failures.first().map(String::as_str).unwrap_or("failed");
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml(first),
                    xml(&c.failures.join("\n"))
                );
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Escapes text for XML attributes and content.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {
                let _ = write!(out, "&#{};", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_counts_and_escapes() {
        let results = vec![
            CaseResult::passed("a.yaml", "ok <case>", 0.5),
            CaseResult::failed(
                "a.yaml",
                "bad",
                vec!["status: expected 1, got \"2\"".into()],
                0.25,
            ),
            CaseResult::passed("b.yaml", "other", 0.0),
        ];
        let x = junit("portcullis", &results);
        assert!(x.contains("<testsuites name=\"portcullis\" tests=\"3\" failures=\"1\""));
        assert!(x.contains("<testsuite name=\"a.yaml\" tests=\"2\" failures=\"1\""));
        assert!(x.contains("name=\"ok &lt;case&gt;\""));
        assert!(x.contains("<failure message=\"status: expected 1, got &quot;2&quot;\">"));
        assert!(x.contains("<testsuite name=\"b.yaml\" tests=\"1\" failures=\"0\""));
        assert_eq!(x.matches("<testcase ").count(), 3);
    }

    #[test]
    fn text_ends_with_the_counts() {
        let results = vec![
            CaseResult::passed("f", "one", 0.0),
            CaseResult::failed("f", "two", vec!["why".into()], 0.0),
        ];
        let t = text(&results);
        assert!(t.contains("test f::two ... FAILED"));
        assert!(t.contains("  why"));
        assert!(t.trim_end().ends_with("1 passed, 1 failed"));
    }
}
