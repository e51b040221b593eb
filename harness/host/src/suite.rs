//! Declarative test suites for any proxy-wasm filter (`portcullis run SUITE.yaml`): a
//! `.wasm`, its plugin configuration (any bytes), scripted or forwarded upstreams and
//! callouts, requests, and what must come out — the proxy-wasm test framework's job,
//! written as data. See docs/harness.md, "Suites for any filter".

use crate::report::CaseResult;
use crate::{
    GrpcReply, Host, HttpReply, HttpRequest, LogLevel, UpstreamResponse, Vm, VmOptions, WasmModule,
};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A suite file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The plugin, relative to the suite file (`--wasm` overrides it).
    pub wasm: Option<PathBuf>,
    /// The plugin configuration (`proxy_on_configure`): inline text, or a file.
    #[serde(default)]
    pub configuration: Option<Bytes>,
    /// `vm_config.configuration` (`proxy_on_vm_start`).
    #[serde(default)]
    pub vm_configuration: Option<Bytes>,
    #[serde(default)]
    pub plugin_name: String,
    #[serde(default)]
    pub root_id: String,
    #[serde(default)]
    pub vm_id: String,
    /// The host's log level (Envoy's default: info).
    #[serde(default)]
    pub log_level: Option<String>,
    /// The virtual clock at the start of each case (unix seconds).
    pub time: Option<u64>,
    /// Upstream clusters the plugin's callouts reach, by cluster name.
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    /// What the main upstream answers (per case overridable).
    #[serde(default)]
    pub upstream: Option<Upstream>,
    pub cases: Vec<SuiteCase>,
}

/// Bytes given inline (`"text"`, `{inline: "text"}`, `{base64: "..."}`) or from a file
/// (`{file: path}`, relative to the suite).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Bytes {
    Text(String),
    Inline {
        inline: String,
    },
    Base64 {
        base64: String,
    },
    File {
        file: PathBuf,
    },
    /// Any YAML value: written out as JSON (a configuration written in the suite itself).
    Json(serde_json::Value),
}

impl Bytes {
    pub fn resolve(&self, dir: &Path) -> Result<Vec<u8>, String> {
        match self {
            Bytes::Text(s) | Bytes::Inline { inline: s } => Ok(s.as_bytes().to_vec()),
            Bytes::Base64 { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map_err(|e| format!("bad base64: {e}")),
            Bytes::File { file } => {
                let p = dir.join(file);
                std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            }
            Bytes::Json(v) => Ok(v.to_string().into_bytes()),
        }
    }
}

/// A cluster: how its HTTP callouts and gRPC methods answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Every HTTP callout to the cluster.
    pub http: Option<HttpAnswer>,
    /// gRPC methods (`package.Service/Method`, or `*`) and their answers.
    #[serde(default)]
    pub grpc: BTreeMap<String, GrpcAnswer>,
}

/// An HTTP answer: scripted (`status`, `headers`, `body`, `delay_ms`), or `forward` to a real
/// server, or one of Envoy's failures (`timeout`, `connect_failure`, `reset`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAnswer {
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    #[serde(default)]
    pub delay_ms: u64,
    pub forward: Option<SocketAddr>,
    #[serde(default)]
    pub timeout: bool,
    #[serde(default)]
    pub connect_failure: bool,
    #[serde(default)]
    pub reset: bool,
}

/// A gRPC answer: `status` (0 = OK) with `message` (the response message's bytes: text, or
/// `message_base64`) and `status_message`, or `forward` to a real gRPC server, or `timeout`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcAnswer {
    #[serde(default)]
    pub status: u32,
    #[serde(default)]
    pub status_message: String,
    pub message: Option<String>,
    pub message_base64: Option<String>,
    #[serde(default)]
    pub delay_ms: u64,
    pub forward: Option<SocketAddr>,
    #[serde(default)]
    pub timeout: bool,
}

/// The main upstream: scripted, or `forward` to a real server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    pub body: Option<String>,
    #[serde(default)]
    pub trailers: BTreeMap<String, String>,
    pub forward: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteCase {
    pub name: String,
    #[serde(default)]
    pub request: RequestSpec,
    /// Overrides the suite's upstream for this case.
    pub upstream: Option<Upstream>,
    /// Overrides (by name) the suite's clusters for this case.
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    /// The virtual clock for this case (unix seconds).
    pub time: Option<u64>,
    /// Send the request this many times on the same VM; the last one is checked.
    pub repeat: Option<u32>,
    /// Virtual time to let pass after the request (ticks, late callouts), in ms.
    #[serde(default)]
    pub advance_ms: u64,
    pub expect: Expectation,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "slash")]
    pub path: String,
    pub authority: Option<String>,
    /// Headers in order (a map, or a list of `[name, value]` pairs for repeated names).
    #[serde(default)]
    pub headers: HeaderList,
    pub body: Option<String>,
    pub body_base64: Option<String>,
    #[serde(default)]
    pub trailers: HeaderList,
    pub source: Option<String>,
    pub destination: Option<String>,
    /// Extra stream properties (dotted path → string value).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            method: get(),
            path: slash(),
            authority: None,
            headers: HeaderList::default(),
            body: None,
            body_base64: None,
            trailers: HeaderList::default(),
            source: None,
            destination: None,
            properties: BTreeMap::new(),
        }
    }
}

fn get() -> String {
    "GET".into()
}
fn slash() -> String {
    "/".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum HeaderList {
    #[default]
    None,
    Map(BTreeMap<String, String>),
    Pairs(Vec<(String, String)>),
}

impl HeaderList {
    fn pairs(&self) -> Vec<(String, String)> {
        match self {
            HeaderList::None => Vec::new(),
            HeaderList::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            HeaderList::Pairs(p) => p.clone(),
        }
    }
}

/// What must come out. Omitted fields are not checked; at least one must be given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The status the client sees.
    pub status: Option<u16>,
    /// Response headers the client sees: a value, or `null` for "absent".
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    pub body: Option<String>,
    pub body_contains: Option<String>,
    /// What the upstream received: `reached` (whether the request got there), `headers`
    /// (a value or `null` for absent), `body`.
    pub upstream: Option<UpstreamExpectation>,
    /// Substrings that must appear, in this order, in the plugin's log lines (from the VM's
    /// start-up to the end of the case).
    #[serde(default)]
    pub logs: Vec<String>,
    /// Substrings no log line may contain.
    #[serde(default)]
    pub logs_absent: Vec<String>,
    /// Metric values after the case (by the name the plugin defined).
    #[serde(default)]
    pub metrics: BTreeMap<String, i64>,
    /// How many HTTP callouts the case made.
    pub http_calls: Option<usize>,
    /// How many gRPC calls the case made.
    pub grpc_calls: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamExpectation {
    pub reached: Option<bool>,
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    pub body: Option<String>,
}

impl Expectation {
    fn asserts_something(&self) -> bool {
        self.status.is_some()
            || !self.headers.is_empty()
            || self.body.is_some()
            || self.body_contains.is_some()
            || self.upstream.is_some()
            || !self.logs.is_empty()
            || !self.logs_absent.is_empty()
            || !self.metrics.is_empty()
            || self.http_calls.is_some()
            || self.grpc_calls.is_some()
    }
}

/// A suite read from disk, ready to run.
#[derive(Debug)]
pub struct LoadedSuite {
    pub path: PathBuf,
    pub suite: Suite,
    pub wasm: PathBuf,
    pub configuration: Vec<u8>,
    pub vm_configuration: Vec<u8>,
}

/// Reads a suite (YAML or JSON). `wasm` overrides the suite's `wasm`.
pub fn load(path: &Path, wasm: Option<&Path>) -> Result<LoadedSuite, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let suite: Suite = serde_yaml::from_str(&text).map_err(|e| match e.location() {
        Some(l) => format!("{}:{}:{}: {e}", path.display(), l.line(), l.column()),
        None => format!("{}: {e}", path.display()),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let wasm = match (wasm, &suite.wasm) {
        (Some(w), _) => w.to_path_buf(),
        (None, Some(w)) => dir.join(w),
        (None, None) => {
            return Err(format!(
                "{}: no `wasm` in the suite and no --wasm given",
                path.display()
            ))
        }
    };
    let configuration = match &suite.configuration {
        Some(b) => b.resolve(dir)?,
        None => Vec::new(),
    };
    let vm_configuration = match &suite.vm_configuration {
        Some(b) => b.resolve(dir)?,
        None => Vec::new(),
    };
    Ok(LoadedSuite {
        path: path.to_path_buf(),
        suite,
        wasm,
        configuration,
        vm_configuration,
    })
}

fn log_level(name: &str) -> Result<LogLevel, String> {
    Ok(match name {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" | "warning" => LogLevel::Warn,
        "error" => LogLevel::Error,
        "critical" => LogLevel::Critical,
        other => return Err(format!("unknown log level `{other}`")),
    })
}

fn http_reply(a: &HttpAnswer) -> HttpReply {
    if let Some(addr) = a.forward {
        return HttpReply::Forward(addr);
    }
    if a.timeout {
        return HttpReply::Never;
    }
    if a.connect_failure {
        return HttpReply::Fail;
    }
    if a.reset {
        return HttpReply::Reset;
    }
    let mut r = HttpReply::status(
        a.status.unwrap_or(200),
        a.body.clone().unwrap_or_default().into_bytes(),
    );
    for (k, v) in &a.headers {
        r = r.with_header(k, v);
    }
    r.after(Duration::from_millis(a.delay_ms))
}

fn grpc_reply(a: &GrpcAnswer) -> Result<GrpcReply, String> {
    if let Some(addr) = a.forward {
        return Ok(GrpcReply::Forward(addr));
    }
    if a.timeout {
        return Ok(GrpcReply::Never);
    }
    let message = match (&a.message, &a.message_base64) {
        (_, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("bad message_base64: {e}"))?,
        (Some(m), None) => m.as_bytes().to_vec(),
        (None, None) => Vec::new(),
    };
    let reply = if a.status == 0 {
        GrpcReply::ok(message)
    } else {
        GrpcReply::error(a.status, &a.status_message)
    };
    Ok(reply.after(Duration::from_millis(a.delay_ms)))
}

/// Declares `clusters` on `host` with their scripted or forwarded answers.
pub fn install(host: &Host, clusters: &BTreeMap<String, Cluster>) -> Result<(), String> {
    for (name, cluster) in clusters {
        host.add_cluster(name);
        if let Some(a) = &cluster.http {
            let reply = http_reply(a);
            host.on_http_call(name, move |_| reply.clone());
        }
        for (method, a) in &cluster.grpc {
            let reply = grpc_reply(a)?;
            host.on_grpc_in(name, method, move |_| reply.clone());
        }
    }
    Ok(())
}

fn build_request(spec: &RequestSpec, upstream: Option<&Upstream>) -> Result<HttpRequest, String> {
    let mut r = HttpRequest::new(&spec.method, &spec.path);
    if let Some(a) = &spec.authority {
        r = r.header(":authority", a);
    }
    for (k, v) in spec.headers.pairs() {
        r = r.header(&k, &v);
    }
    for (k, v) in spec.trailers.pairs() {
        r = r.trailer(&k, &v);
    }
    match (&spec.body, &spec.body_base64) {
        (_, Some(b)) => {
            r = r.body(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| format!("bad body_base64: {e}"))?,
            )
        }
        (Some(b), None) => r = r.body(b.as_bytes().to_vec()),
        (None, None) => {}
    }
    if let Some(s) = &spec.source {
        r = r.source(s);
    }
    if let Some(d) = &spec.destination {
        r = r.destination(d);
    }
    for (k, v) in &spec.properties {
        r = r.property_str(k, v);
    }
    if let Some(u) = upstream {
        let mut up = UpstreamResponse::default();
        if let Some(s) = u.status {
            up.status = s;
        }
        if let Some(h) = &u.headers {
            up.headers = h.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        if let Some(b) = &u.body {
            up.body = b.as_bytes().to_vec();
        }
        up.trailers = u
            .trailers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        up.forward = u.forward;
        r = r.upstream(up);
    }
    Ok(r)
}

/// Runs every case of a suite, each on a fresh proxy (a fresh [`Host`] and one VM).
pub fn run(loaded: &LoadedSuite) -> Vec<CaseResult> {
    let file = loaded.path.display().to_string();
    let module = match WasmModule::load(&loaded.wasm) {
        Ok(m) => m,
        Err(e) => {
            return vec![CaseResult::failed(
                &file,
                "(load)",
                vec![e.to_string()],
                0.0,
            )];
        }
    };
    loaded
        .suite
        .cases
        .iter()
        .map(|case| {
            let started = std::time::Instant::now();
            let failures = match run_case(loaded, &module, case) {
                Ok(f) => f,
                Err(e) => vec![e],
            };
            let secs = started.elapsed().as_secs_f64();
            if failures.is_empty() {
                CaseResult::passed(&file, &case.name, secs)
            } else {
                CaseResult::failed(&file, &case.name, failures, secs)
            }
        })
        .collect()
}

fn run_case(
    loaded: &LoadedSuite,
    module: &WasmModule,
    case: &SuiteCase,
) -> Result<Vec<String>, String> {
    let suite = &loaded.suite;
    if !case.expect.asserts_something() {
        return Err("the case expects nothing (`expect` must check something)".into());
    }
    let host = Host::new();
    if let Some(l) = &suite.log_level {
        host.set_log_level(log_level(l)?);
    }
    if let Some(t) = case.time.or(suite.time) {
        host.set_unix_seconds(t);
    }
    let mut clusters = suite.clusters.clone();
    clusters.extend(case.clusters.clone());
    install(&host, &clusters)?;
    let options = VmOptions::new(loaded.configuration.clone())
        .vm_configuration(loaded.vm_configuration.clone())
        .vm_id(&suite.vm_id)
        .plugin_name(&suite.plugin_name)
        .root_id(&suite.root_id);
    let mut vm = Vm::start(&host, module, options).map_err(|e| e.to_string())?;
    let upstream = case.upstream.as_ref().or(suite.upstream.as_ref());
    let request = build_request(&case.request, upstream)?;
    let grpc_before = host.grpc_calls().len();
    let http_before = host.http_calls().len();
    let mut exchange = None;
    for _ in 0..case.repeat.unwrap_or(1).max(1) {
        exchange = Some(vm.request(&request).map_err(|e| e.to_string())?);
    }
    if case.advance_ms > 0 {
        vm.advance(Duration::from_millis(case.advance_ms))
            .map_err(|e| e.to_string())?;
    }
    let ex = exchange.ok_or("no request was sent")?;
    let logs: Vec<String> = host.logs().into_iter().map(|l| l.message).collect();
    let mut failures = Vec::new();
    let e = &case.expect;
    if let Some(s) = e.status {
        if ex.status != s {
            failures.push(format!("status: expected {s}, got {}", ex.status));
        }
    }
    check_headers(
        "response header",
        &e.headers,
        &ex.response_headers,
        &mut failures,
    );
    let body = String::from_utf8_lossy(&ex.response_body);
    if let Some(b) = &e.body {
        if body != b.as_str() {
            failures.push(format!("body: expected {b:?}, got {body:?}"));
        }
    }
    if let Some(b) = &e.body_contains {
        if !body.contains(b.as_str()) {
            failures.push(format!("body: expected it to contain {b:?}, got {body:?}"));
        }
    }
    if let Some(u) = &e.upstream {
        let reached = ex.upstream_request_headers.is_some();
        if let Some(want) = u.reached {
            if want != reached {
                failures.push(format!("upstream reached: expected {want}, got {reached}"));
            }
        }
        let seen = ex.upstream_request_headers.clone().unwrap_or_default();
        check_headers("upstream header", &u.headers, &seen, &mut failures);
        if let Some(b) = &u.body {
            let got =
                String::from_utf8_lossy(ex.upstream_request_body.as_deref().unwrap_or_default())
                    .into_owned();
            if &got != b {
                failures.push(format!("upstream body: expected {b:?}, got {got:?}"));
            }
        }
    }
    let mut from = 0;
    for want in &e.logs {
        match logs
            .iter()
            .skip(from)
            .position(|l| l.contains(want.as_str()))
        {
            Some(i) => from += i + 1,
            None => failures.push(format!(
                "logs: no line containing {want:?}{} (logged: {logs:?})",
                if from > 0 {
                    " after the previous match"
                } else {
                    ""
                }
            )),
        }
    }
    for absent in &e.logs_absent {
        if let Some(l) = logs.iter().find(|l| l.contains(absent.as_str())) {
            failures.push(format!("logs: {absent:?} must not appear, but: {l:?}"));
        }
    }
    for (name, want) in &e.metrics {
        match host.metric(name) {
            Some(m) if m.value == *want => {}
            Some(m) => failures.push(format!("metric {name}: expected {want}, got {}", m.value)),
            None => failures.push(format!("metric {name}: not defined by the plugin")),
        }
    }
    if let Some(n) = e.http_calls {
        let got = host.http_calls().len() - http_before;
        if got != n {
            failures.push(format!("http_calls: expected {n}, got {got}"));
        }
    }
    if let Some(n) = e.grpc_calls {
        let got = host.grpc_calls().len() - grpc_before;
        if got != n {
            failures.push(format!("grpc_calls: expected {n}, got {got}"));
        }
    }
    Ok(failures)
}

fn check_headers(
    what: &str,
    want: &BTreeMap<String, Option<String>>,
    got: &[(String, String)],
    failures: &mut Vec<String>,
) {
    for (name, value) in want {
        let actual = crate::types::find_header(got, name);
        match (value, actual) {
            (Some(w), Some(a)) if w == a => {}
            (None, None) => {}
            (Some(w), a) => failures.push(format!("{what} {name}: expected {w:?}, got {a:?}")),
            (None, Some(a)) => failures.push(format!("{what} {name}: expected absent, got {a:?}")),
        }
    }
}
