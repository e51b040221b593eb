//! `portcullis lint`: a configuration review you can run in CI.
//!
//! Reads a Portcullis configuration (YAML/JSON, `.cel` and JWKS files relative to it), an
//! Istio `WasmPlugin` or Envoy Gateway `EnvoyExtensionPolicy` manifest that embeds one, or an
//! Envoy bootstrap that loads the filter, and reports risky settings. Every finding has a
//! stable id ([`rules::RULES`]), a severity, the field path, the file position (for CEL, of
//! the expression text itself) and why it matters. Output: cargo-style text, JSON or SARIF
//! 2.1.0 ([`output`]). A finding is suppressed by a comment on its line or the line above,
//! with a reason: `# portcullis-lint: allow PC003 -- rolled out in shadow first` (`//` in
//! `.cel` files). The entry point is [`run`] with typed [`Options`], so any CLI can call it.

pub mod cel_scan;
mod checks;
mod inputs;
pub mod output;
pub mod rules;
mod suppress;

use std::path::PathBuf;

pub use rules::{Rule, RULES};

/// How serious a finding is: errors fail the lint, warnings fail it with `--deny-warnings`,
/// notes never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Note,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// A position in a file, 1-based (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static Rule,
    /// What is wrong here, naming the rule, provider or limit.
    pub message: String,
    /// The field path in the plugin configuration (`policy.rules[2].mode`), or in the
    /// manifest for manifest findings (`spec.failStrategy`).
    pub field: String,
    pub location: Option<Location>,
    /// The reason given by a suppression comment, if one suppresses this finding.
    pub suppressed: Option<String>,
}

impl Finding {
    pub fn severity(&self) -> Severity {
        self.rule.severity
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    Sarif,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "sarif" => Ok(Format::Sarif),
            other => Err(format!("unknown format `{other}` (text, json, sarif)")),
        }
    }
}

/// What to lint and how to report it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Configuration files, manifests or Envoy bootstraps.
    pub paths: Vec<PathBuf>,
    pub format: Format,
    /// Warnings fail the lint too.
    pub deny_warnings: bool,
}

/// Every finding of every path (suppressed ones included, marked), in file order.
pub fn lint_paths(paths: &[PathBuf]) -> Result<Vec<Finding>, String> {
    let mut findings = Vec::new();
    for path in paths {
        findings.extend(lint_file(path)?);
    }
    Ok(findings)
}

/// The findings of one file.
pub fn lint_file(path: &std::path::Path) -> Result<Vec<Finding>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut findings = Vec::new();
    for input in inputs::read(path, &text)? {
        findings.extend(checks::check(&input));
    }
    suppress::apply(&mut findings, path);
    findings.sort_by(|a, b| {
        let key = |f: &Finding| {
            f.location
                .as_ref()
                .map(|l| (l.file.clone(), l.line, l.column))
        };
        key(a).cmp(&key(b)).then(a.rule.id.cmp(b.rule.id))
    });
    Ok(findings)
}

/// Whether these findings fail the lint.
pub fn fails(findings: &[Finding], deny_warnings: bool) -> bool {
    findings.iter().any(|f| {
        f.suppressed.is_none()
            && (f.severity() == Severity::Error
                || (deny_warnings && f.severity() == Severity::Warning))
    })
}

/// Lints, prints the report to stdout and returns the process exit status: 0 clean, 1 when
/// an error (or, with `deny_warnings`, a warning) is not suppressed, 2 when a file cannot be
/// read or parsed.
pub fn run(options: &Options) -> u8 {
    match lint_paths(&options.paths) {
        Ok(findings) => {
            print!("{}", output::render(&findings, options.format));
            u8::from(fails(&findings, options.deny_warnings))
        }
        Err(e) => {
            eprintln!("portcullis lint: {e}");
            2
        }
    }
}
