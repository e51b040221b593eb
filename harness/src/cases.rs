//! Decision test cases (`*.test.yaml`) and the request shape shared by `test`, `eval` and
//! `replay`, run through the real `.wasm`.

use crate::bundle::{self, DECISION_HEADER};
use crate::locate;
use crate::suite::{self, Cluster};
use crate::token::SigningKeys;
use crate::{Exchange, Host, HttpRequest, TlsInfo, Vm, VmError, VmOptions, WasmModule};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A request as tests, `eval` and `replay` describe it.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// "ip:port" of the client.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub destination: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    #[serde(default)]
    pub body: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    pub mtls: bool,
    #[serde(default)]
    pub requested_server_name: Option<String>,
    #[serde(default)]
    pub uri_san_peer_certificate: Option<String>,
    #[serde(default)]
    pub dns_san_peer_certificate: Option<String>,
    #[serde(default)]
    pub subject_peer_certificate: Option<String>,
    #[serde(default)]
    pub tls_version: Option<String>,
}

/// A token: signed by the harness from `claims`, or `raw`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    #[serde(default)]
    pub claims: Option<Value>,
    #[serde(default)]
    pub kid: Option<String>,
    /// Extra JOSE header fields.
    #[serde(default)]
    pub header: Option<Value>,
    #[serde(default)]
    pub raw: Option<String>,
    /// Where to put it (default `authorization: Bearer`).
    #[serde(default)]
    pub in_header: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub status: Option<u16>,
    /// The rule that decided; `null`/absent in the file means "not checked". Use `default`
    /// for "allowed by the default action" and `none` for "no rule (authn, default deny)".
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The deny body's `error`.
    #[serde(default)]
    pub error: Option<String>,
    /// A substring of the deny body's `reason`.
    #[serde(default)]
    pub reason: Option<String>,
    /// Headers the upstream must have received.
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub request: RequestSpec,
    #[serde(default)]
    pub token: Option<TokenSpec>,
    /// Virtual clock (unix seconds).
    #[serde(default)]
    pub time: Option<u64>,
    /// Send the request this many times (same VM); `expect` applies to the last.
    #[serde(default)]
    pub repeat: Option<u32>,
    /// Callout clusters for this case only, over the file's `clusters` (same names replace).
    #[serde(default, skip_serializing)]
    pub clusters: BTreeMap<String, Cluster>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub config: String,
    #[serde(default)]
    pub signing_keys: Option<String>,
    /// Clusters the filter calls out to (e.g. the rate-limit service of global limits), with
    /// scripted or forwarded answers, as in a `portcullis run` suite.
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    #[serde(default)]
    pub cases: Vec<Case>,
}

impl Expect {
    /// Whether the expectation checks anything: `expect: {}` would pass whatever happened.
    pub fn asserts_something(&self) -> bool {
        self.status.is_some()
            || self.rule.is_some()
            || self.error.is_some()
            || self.reason.is_some()
            || !self.headers.is_empty()
            || !self.upstream_headers.is_empty()
    }
}

/// A test file read case by case, so that one malformed case fails alone, under its name.
#[derive(Debug, Clone)]
pub struct TestPlan {
    pub config: String,
    pub signing_keys: Option<String>,
    pub clusters: BTreeMap<String, Cluster>,
    pub cases: Vec<PlannedCase>,
}

#[derive(Debug, Clone)]
pub struct PlannedCase {
    /// The case's `name`, or `cases[i]` when it has none.
    pub name: String,
    /// The case, or why it cannot run (`file:line:column: ...`).
    pub case: Result<Case, String>,
}

/// The file-level fields, with the cases left for [`plan_test_file`] to read one by one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    config: String,
    #[serde(default)]
    signing_keys: Option<String>,
    #[serde(default)]
    clusters: BTreeMap<String, Cluster>,
    #[serde(default)]
    cases: Vec<Value>,
}

/// Reads a test file. Errors in the file as a whole (YAML syntax, an unknown top-level field,
/// no cases) are `Err`; an error in one case is that case's `Err`. Both name
/// `file:line:column`, and a case's error its name and index.
pub fn plan_test_file(path: &Path) -> Result<TestPlan, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let document = bundle::parse_document(&text).map_err(|e| format!("{}:{e}", path.display()))?;
    let header: Header = locate::deserialize_at(path, &text, &document, "", &document)?;
    if header.cases.is_empty() {
        return Err(locate::field_error(
            path,
            &text,
            &document,
            "cases",
            "no cases: a test file must have at least one",
        ));
    }
    let cases = header
        .cases
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let field = format!("cases[{i}]");
            let name = raw
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| field.clone(), str::to_owned);
            let case = locate::deserialize_at::<Case>(path, &text, &document, &field, raw)
                .and_then(|case| {
                    if case.expect.asserts_something() {
                        Ok(case)
                    } else {
                        let at = if raw.get("expect").is_some() {
                            format!("{field}.expect")
                        } else {
                            field.clone()
                        };
                        Err(locate::field_error(
                            path,
                            &text,
                            &document,
                            &at,
                            "the case asserts nothing: `expect` needs at least one of status, \
                             rule, error, reason, headers, upstream_headers",
                        ))
                    }
                });
            PlannedCase { name, case }
        })
        .collect();
    Ok(TestPlan {
        config: header.config,
        signing_keys: header.signing_keys,
        clusters: header.clusters,
        cases,
    })
}

/// Reads a test file, all or nothing: the first error of any case is the error.
pub fn load_test_file(path: &Path) -> Result<TestFile, String> {
    let plan = plan_test_file(path)?;
    let cases = plan
        .cases
        .into_iter()
        .map(|c| c.case)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TestFile {
        config: plan.config,
        signing_keys: plan.signing_keys,
        clusters: plan.clusters,
        cases,
    })
}

/// What one request came to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub status: u16,
    /// `allow`, `deny` (any local response) or `stuck`.
    pub decision: String,
    /// The deciding rule: a name, `default` (allowed by default action), or `None`.
    pub rule: Option<String>,
    /// The deny body's `error`, if any.
    pub error: Option<String>,
    pub reason: Option<String>,
}

impl Verdict {
    pub fn from_exchange(ex: &Exchange) -> Verdict {
        if let Some(local) = &ex.local_response {
            let body = local.body_json().unwrap_or(Value::Null);
            let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
            return Verdict {
                status: local.status as u16,
                decision: "deny".into(),
                rule: s("rule"),
                error: s("error"),
                reason: s("reason"),
            };
        }
        if ex.stuck {
            return Verdict {
                status: 0,
                decision: "stuck".into(),
                rule: None,
                error: None,
                reason: None,
            };
        }
        let rule = ex.upstream_header(DECISION_HEADER).and_then(|v| {
            if v.contains("default") {
                Some("default".to_owned())
            } else {
                v.split("rule=").nth(1).map(|r| r.trim().to_owned())
            }
        });
        Verdict {
            status: ex.status,
            decision: "allow".into(),
            rule,
            error: None,
            reason: None,
        }
    }
}

/// A loaded configuration ready to run requests: the bundled JSON, the module, signing keys.
pub struct Runner {
    pub config: Value,
    pub module: WasmModule,
    pub keys: Option<SigningKeys>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Callout clusters every case's proxy declares ([`Runner::with_clusters`]).
    clusters: BTreeMap<String, Cluster>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

impl Runner {
    /// Bundles `config_path` (with the decision header turned on) and loads the keys:
    /// `signing_keys` or `keys/private.jwks.json` next to the config (optional).
    pub fn new(
        config_path: &Path,
        signing_keys: Option<&Path>,
        wasm: &Path,
    ) -> Result<Runner, String> {
        let config = bundle::with_decision_header(bundle::bundle(config_path)?);
        let module = WasmModule::load(wasm).map_err(|e| e.to_string())?;
        let keys = match signing_keys {
            Some(p) => Some(SigningKeys::load(p)?),
            None => {
                let p = config_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("keys/private.jwks.json");
                if p.exists() {
                    Some(SigningKeys::load(&p)?)
                } else {
                    None
                }
            }
        };
        let provider = config.pointer("/jwt/providers/0");
        let issuer = provider
            .and_then(|p| p.get("issuer"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let audience = provider
            .and_then(|p| p.get("audiences"))
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Runner {
            config,
            module,
            keys,
            issuer,
            audience,
            clusters: BTreeMap::new(),
        })
    }

    /// Declares `clusters` (scripted or forwarded callout answers) on every case's proxy.
    pub fn with_clusters(mut self, clusters: BTreeMap<String, Cluster>) -> Runner {
        self.clusters = clusters;
        self
    }

    /// A fresh simulated proxy with one VM running the configuration.
    pub fn start(&self) -> Result<(Host, Vm), String> {
        let host = Host::new();
        let vm = self.start_on(&host)?;
        Ok((host, vm))
    }

    pub fn start_on(&self, host: &Host) -> Result<Vm, String> {
        self.start_with(host, &self.config)
    }

    /// A VM running `config` (a variant of this runner's configuration) with its keys.
    pub fn start_with(&self, host: &Host, config: &Value) -> Result<Vm, String> {
        // Named as in the Envoy snippet `portcullis bundle --envoy-snippet` prints.
        let options = VmOptions::new(config.to_string().into_bytes())
            .plugin_name("portcullis")
            .root_id("portcullis");
        Vm::start(host, &self.module, options).map_err(|e| match e {
            VmError::ConfigureFailed { logs } => format!("configure failed: {}", logs.join("; ")),
            other => other.to_string(),
        })
    }

    /// The bearer token for `spec` at virtual time `now` (unix seconds).
    pub fn token(&self, spec: &TokenSpec, now: u64) -> Result<String, String> {
        if let Some(raw) = &spec.raw {
            return Ok(raw.clone());
        }
        let keys = self
            .keys
            .as_ref()
            .ok_or("the case has a token but no signing keys were found")?;
        let mut claims = spec.claims.clone().unwrap_or_else(|| json!({}));
        if let Value::Object(m) = &mut claims {
            if let Some(iss) = &self.issuer {
                m.entry("iss").or_insert_with(|| json!(iss));
            }
            if let Some(aud) = &self.audience {
                m.entry("aud").or_insert_with(|| json!(aud));
            }
            m.entry("iat").or_insert_with(|| json!(now));
            m.entry("exp").or_insert_with(|| json!(now + 3600));
        }
        keys.sign(spec.kid.as_deref(), &claims, spec.header.as_ref())
    }

    /// Builds the host request for a spec (+ token) at virtual time `now`.
    pub fn request(
        &self,
        spec: &RequestSpec,
        token: Option<&TokenSpec>,
        now: u64,
    ) -> Result<HttpRequest, String> {
        let mut req = HttpRequest::new(&spec.method, &spec.path);
        if let Some(a) = &spec.authority {
            req = req.header(":authority", a);
        }
        for (k, v) in &spec.headers {
            req = req.header(k, v);
        }
        if let Some(s) = &spec.source {
            req = req.source(s);
        }
        if let Some(d) = &spec.destination {
            req = req.destination(d);
        }
        if let Some(t) = &spec.tls {
            req = req.tls(&TlsInfo {
                mtls: t.mtls,
                requested_server_name: t.requested_server_name.clone(),
                uri_san_peer_certificate: t.uri_san_peer_certificate.clone(),
                dns_san_peer_certificate: t.dns_san_peer_certificate.clone(),
                subject_peer_certificate: t.subject_peer_certificate.clone(),
                tls_version: t.tls_version.clone(),
            });
        }
        if let Some(b) = &spec.body {
            req = req.body(b.as_bytes().to_vec());
        }
        if let Some(t) = token {
            let jwt = self.token(t, now)?;
            req = match &t.in_header {
                Some(h) => req.header(h, &jwt),
                None => req.bearer(&jwt),
            };
        }
        Ok(req)
    }

    /// Runs one case on a fresh proxy. `Ok(failures)`: empty when it passed.
    pub fn run_case(&self, case: &Case) -> Result<(Verdict, Exchange, Vec<String>), String> {
        self.run_case_with(case, &self.config)
    }

    /// Runs one case against `config` instead of the runner's configuration.
    pub fn run_case_with(
        &self,
        case: &Case,
        config: &Value,
    ) -> Result<(Verdict, Exchange, Vec<String>), String> {
        let host = Host::new();
        suite::install(&host, &self.clusters)?;
        suite::install(&host, &case.clusters)?;
        let mut vm = self.start_with(&host, config)?;
        if let Some(t) = case.time {
            host.set_unix_seconds(t);
        }
        let req = self.request(&case.request, case.token.as_ref(), host.now_unix_seconds())?;
        let mut ex = vm.request(&req).map_err(|e| e.to_string())?;
        for _ in 1..case.repeat.unwrap_or(1) {
            ex = vm.request(&req).map_err(|e| e.to_string())?;
        }
        let verdict = Verdict::from_exchange(&ex);
        let failures = check(&case.expect, &verdict, &ex);
        Ok((verdict, ex, failures))
    }
}

/// Compares an outcome with the expectation; one line per mismatch.
pub fn check(expect: &Expect, v: &Verdict, ex: &Exchange) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = expect.status {
        if s != v.status {
            out.push(format!("status: expected {s}, got {}", v.status));
        }
    }
    if let Some(rule) = &expect.rule {
        let got = v.rule.as_deref().unwrap_or("none");
        if rule != got {
            out.push(format!("rule: expected {rule}, got {got}"));
        }
    }
    if let Some(e) = &expect.error {
        if v.error.as_deref() != Some(e) {
            out.push(format!("error: expected {e}, got {:?}", v.error));
        }
    }
    if let Some(r) = &expect.reason {
        if !v.reason.as_deref().unwrap_or("").contains(r.as_str()) {
            out.push(format!(
                "reason: expected to contain {r:?}, got {:?}",
                v.reason
            ));
        }
    }
    for (k, want) in &expect.headers {
        let got = ex.response_header(k);
        if got != Some(want.as_str()) {
            out.push(format!("header {k}: expected {want:?}, got {got:?}"));
        }
    }
    for (k, want) in &expect.upstream_headers {
        let got = ex.upstream_header(k);
        if got != Some(want.as_str()) {
            out.push(format!(
                "upstream header {k}: expected {want:?}, got {got:?}"
            ));
        }
    }
    out
}

/// The `*.test.yaml` files under the given paths, sorted.
pub fn collect_test_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                let entries =
                    std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
                    {
                        out.push(path);
                    }
                }
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Finds the filter's `.wasm`: `explicit`, else `$PORTCULLIS_WASM`, else
/// `target/wasm32-wasip1/release/portcullis_filter.wasm` searched upward from the current dir.
pub fn find_wasm(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PORTCULLIS_WASM") {
        return Ok(PathBuf::from(p));
    }
    let rel = Path::new("target/wasm32-wasip1/release/portcullis_filter.wasm");
    let mut dir = std::env::current_dir().map_err(|e| e.to_string())?;
    loop {
        let candidate = dir.join(rel);
        if candidate.exists() {
            return Ok(candidate);
        }
        if !dir.pop() {
            break;
        }
    }
    Err(format!(
        "cannot find the filter's .wasm: pass --wasm, set PORTCULLIS_WASM, or build it \
         (cargo build --release --target wasm32-wasip1 -p portcullis-filter) to {}",
        rel.display()
    ))
}
