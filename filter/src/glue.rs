//! The proxy-wasm shell: turns host callbacks into calls of the decision core and typed
//! decisions back into host actions. Nothing here decides anything.

mod abi;

use crate::bytes;
use crate::config::Config;
use crate::decision::{Decision, DenyReason, GlobalPending, HeaderEdit, Outcome, Refusal};
use crate::decision_log::Recording;
use crate::global::{GlobalState, Reply};
use crate::jwt::remote::{FetchRequest, JwksSync};
use crate::jwt::{RemoteKeys, TokenCache};
use crate::metrics;
use crate::pipeline::{self, Env};
use crate::ports::{Counters, Log as _};
use crate::ratelimit::LocalTokens;
use crate::request::{AttributeValue, RequestView};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PortcullisRoot::default()) });
}}

/// Ticks drive the remote JWKS sync and retry requests waiting for keys.
const TICK_PERIOD: Duration = Duration::from_millis(250);

fn log(level: LogLevel, message: &str) {
    abi::log(level as u32, message);
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(abi::now_nanos().unwrap_or(0))
}

/// Microseconds from `since` to now (0 if the clock went back).
fn now_elapsed_micros(since: SystemTime) -> u64 {
    now()
        .duration_since(since)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Per-VM state shared by the root context and its HTTP contexts (one thread per VM).
#[derive(Default)]
struct VmState {
    token_cache: TokenCache,
    /// Rate-limit tokens this VM took in batches from shared buckets.
    local_tokens: LocalTokens,
    remote_keys: RemoteKeys,
    counters: HostCounters,
    /// Requests paused until signing keys arrive: context id → (request, deadline).
    pending: HashMap<u32, (RequestView, SystemTime)>,
    /// Headers to add to a stream's response (e.g. `RateLimit`), by context id.
    response_headers: HashMap<u32, Vec<(String, String)>>,
    /// Remote JWKS: which VM fetches, and what it fetches next.
    jwks_sync: Option<JwksSync>,
    /// Outstanding JWKS callouts: token → provider.
    callouts: HashMap<u32, String>,
    /// The global limits' breaker and fallback tokens.
    global: GlobalState,
    /// Requests waiting for the rate-limit service, by callout token.
    global_calls: HashMap<u32, GlobalWait>,
}

/// A request waiting for the rate-limit service's answer.
#[derive(Debug)]
struct GlobalWait {
    context_id: u32,
    pending: GlobalPending,
    dispatched: SystemTime,
    /// What the decision log needs once the answer decides: the counters the request
    /// incremented so far and its request id.
    events: Vec<String>,
    request_id: Option<String>,
}

impl VmState {
    /// The remote-JWKS machinery, if some provider fetches its keys.
    fn jwks(&mut self) -> Option<(&mut JwksSync, &mut RemoteKeys, &mut HostCounters)> {
        let sync = self.jwks_sync.as_mut()?;
        Some((sync, &mut self.remote_keys, &mut self.counters))
    }
}

#[derive(Default)]
struct PortcullisRoot {
    config: Option<Rc<Config>>,
    state: Rc<RefCell<VmState>>,
}

impl RootContext for PortcullisRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                {
                    let mut state = self.state.borrow_mut();
                    state.token_cache = config.authenticator.new_token_cache();
                    // Batches are per limit position: a new configuration starts without any.
                    state.local_tokens = LocalTokens::default();
                    state.global = GlobalState::default();
                    let sync = config
                        .authenticator
                        .jwks_sync(&vm_owner_id(), random_seed());
                    let has_remote = sync.providers().next().is_some();
                    state.jwks_sync = has_remote.then_some(sync);
                }
                self.config = Some(Rc::new(config));
                self.set_tick_period(TICK_PERIOD);
                // The VM's linear memory (static data, stack and heap high-water mark) once the
                // configuration is built: the per-VM memory figure in docs/benchmarks.md.
                log(
                    LogLevel::Info,
                    &format!(
                        "portcullis: configuration loaded ({} KiB of linear memory)",
                        linear_memory_bytes() / 1024
                    ),
                );
                true
            }
            Err(error) => {
                // Returning false makes Envoy reject the plugin, and with it the listener.
                log(LogLevel::Critical, &error.to_string());
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let now = now();
        self.sync_jwks(now);
        self.retry_pending();
        if let Some(config) = &self.config {
            if config.rate_limiter.sweep_due(&abi::HostStore, now) {
                let mut state = self.state.borrow_mut();
                config
                    .rate_limiter
                    .sweep(&abi::HostStore, now, &mut state.counters);
            }
        }
        self.state.borrow_mut().counters.flush();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PortcullisHttp {
            context_id,
            config: self.config.clone(),
            state: self.state.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for PortcullisRoot {
    /// The answer to a rate-limit call dispatched while retrying a request that waited for keys.
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        if let Some(config) = self.config.clone() {
            finish_global(&config, &self.state, token, status_code, response_size);
        }
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(provider) = self.state.borrow_mut().callouts.remove(&token) else {
            return;
        };
        // Envoy reports a failed callout (timeout, reset, no upstream) with no headers.
        let status = (num_headers > 0)
            .then(|| abi::header_value(abi::HTTP_CALL_RESPONSE_HEADERS, ":status"))
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        let body = abi::http_call_response_body(body_size);
        let now = now();
        self.report_fetch(&provider, status, body.as_deref(), now);
        self.retry_pending();
    }
}

impl PortcullisRoot {
    /// Loads keys other VMs fetched, and dispatches the fetches this VM was elected for.
    fn sync_jwks(&mut self, now: SystemTime) {
        let requests = {
            let mut state = self.state.borrow_mut();
            let Some((sync, remote_keys, counters)) = state.jwks() else {
                return;
            };
            let requests = sync.poll(now, &abi::HostStore, remote_keys);
            // Key age per provider: how long ago the keys in use were fetched (by any VM).
            let now_s = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for spec in sync.providers() {
                if let Some(set) = remote_keys.get(&spec.provider) {
                    let fetched = u64::try_from(set.fetched_at).unwrap_or(0);
                    let gauge = metrics::JWKS_KEY_AGE.with(&[&spec.provider]);
                    counters.set_gauge(&gauge, now_s.saturating_sub(fetched));
                }
            }
            requests
        };
        self.dispatch(requests, now);
    }

    fn dispatch(&mut self, requests: Vec<FetchRequest>, now: SystemTime) {
        for request in requests {
            let headers = vec![
                (":method", "GET"),
                (":path", request.path.as_str()),
                (":authority", request.authority.as_str()),
            ];
            let timeout = Duration::from_millis(request.timeout_ms);
            // Through the SDK: its dispatcher must register the callout's token to route the
            // response back (it traps on a token it does not know).
            match self.dispatch_http_call(&request.cluster, headers, None, vec![], timeout) {
                Ok(token) => {
                    self.state
                        .borrow_mut()
                        .callouts
                        .insert(token, request.provider);
                }
                Err(status) => {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "portcullis: cannot fetch JWKS of provider `{}` from cluster `{}`: {status:?}",
                            request.provider, request.cluster
                        ),
                    );
                    self.report_fetch(&request.provider, None, None, now);
                }
            }
        }
    }

    fn report_fetch(
        &mut self,
        provider: &str,
        status: Option<u16>,
        body: Option<&[u8]>,
        now: SystemTime,
    ) {
        let next = match self.state.borrow_mut().jwks() {
            Some((sync, remote_keys, counters)) => sync.on_response(
                provider,
                status,
                body,
                now,
                &abi::HostStore,
                remote_keys,
                counters,
            ),
            None => Vec::new(),
        };
        self.log_jwks_notices();
        self.dispatch(next, now);
    }

    fn log_jwks_notices(&mut self) {
        let notices = match self.state.borrow_mut().jwks_sync.as_mut() {
            Some(sync) => sync.take_notices(),
            None => return,
        };
        for (level, message) in notices {
            HostLog.log(level, &message);
        }
    }

    /// Re-decides the requests paused for keys; answers those past their deadline (503 with
    /// `Retry-After`; the JWKS sync logged why, once, when the provider's fetch started failing).
    fn retry_pending(&mut self) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let now = now();
        let pending: Vec<(u32, RequestView, SystemTime)> = {
            let state = self.state.borrow();
            state
                .pending
                .iter()
                .map(|(id, (view, deadline))| (*id, view.clone(), *deadline))
                .collect()
        };
        for (context_id, view, deadline) in pending {
            if !abi::set_effective_context(context_id) {
                self.state.borrow_mut().pending.remove(&context_id);
                continue;
            }
            let (outcome, events) = run_pipeline(&config, &self.state, &view, now);
            match outcome {
                Outcome::Decided(decision) => {
                    self.state.borrow_mut().pending.remove(&context_id);
                    log_decision(&config, &decision, &events, view.header("x-request-id"));
                    if apply(&config, &self.state, context_id, &decision) {
                        abi::continue_request();
                    }
                }
                Outcome::GlobalPending(global) => {
                    self.state.borrow_mut().pending.remove(&context_id);
                    // Dispatched from the root: the answer comes to the root's callback.
                    let wait = GlobalWait {
                        context_id,
                        pending: *global,
                        dispatched: now,
                        events,
                        request_id: view.header("x-request-id").map(str::to_owned),
                    };
                    if dispatch_global(&*self, &config, &self.state, wait) {
                        abi::continue_request();
                    }
                }
                Outcome::KeysPending { .. } if now >= deadline => {
                    let mut state = self.state.borrow_mut();
                    state.pending.remove(&context_id);
                    state
                        .counters
                        .increment(metrics::JWT_PENDING_TIMEOUTS.plain(), 1);
                    drop(state);
                    let deny = Decision::Deny(config.authenticator.keys_unavailable().answer());
                    log_decision(&config, &deny, &events, view.header("x-request-id"));
                    apply(&config, &self.state, context_id, &deny);
                }
                Outcome::KeysPending { .. } => {}
            }
        }
    }
}

/// A name for this VM in the JWKS fetch lease (unique per VM with overwhelming probability).
fn vm_owner_id() -> String {
    format!("vm{:016x}", random_seed())
}

/// Randomness from the host (WASI `random_get` seeds std's `RandomState`).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

struct PortcullisHttp {
    context_id: u32,
    config: Option<Rc<Config>>,
    state: Rc<RefCell<VmState>>,
}

impl Drop for PortcullisHttp {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            state.pending.remove(&self.context_id);
            state.response_headers.remove(&self.context_id);
            // A late answer finds nothing to resume.
            let context_id = self.context_id;
            state
                .global_calls
                .retain(|_, wait| wait.context_id != context_id);
        }
    }
}

impl Context for PortcullisHttp {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        if let Some(config) = self.config.clone() {
            finish_global(&config, &self.state, token, status_code, response_size);
        }
    }
}

impl HttpContext for PortcullisHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            // No configuration means on_configure failed; Envoy does not route to us then,
            // but never let a request through unchecked.
            let deny = Refusal::new(DenyReason::NotConfigured, None).answer();
            let body = deny.body(false);
            let headers = [("content-type".to_owned(), "application/json".to_owned())];
            abi::send_local_response(u32::from(deny.status), &headers, &body);
            return Action::Pause;
        };
        let now = now();
        let view = request_view(&config);
        let (outcome, events) = run_pipeline(&config, &self.state, &view, now);
        let action = match outcome {
            Outcome::Decided(decision) => {
                log_decision(&config, &decision, &events, view.header("x-request-id"));
                if apply(&config, &self.state, self.context_id, &decision) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            Outcome::GlobalPending(global) => {
                let config = Rc::clone(&config);
                let wait = GlobalWait {
                    context_id: self.context_id,
                    pending: *global,
                    dispatched: now,
                    events,
                    request_id: view.header("x-request-id").map(str::to_owned),
                };
                if dispatch_global(&*self, &config, &self.state, wait) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            Outcome::KeysPending { .. } => {
                let deadline = now
                    .checked_add(Duration::from_millis(
                        config.authenticator.pending_deadline_ms(),
                    ))
                    .unwrap_or(now);
                self.state
                    .borrow_mut()
                    .pending
                    .insert(self.context_id, (view, deadline));
                Action::Pause
            }
        };
        // The decision-time histogram: reading the clock again and recording are two host
        // calls that return nothing to the module (~0.5 µs together, docs/operations.md).
        let micros = now_elapsed_micros(now);
        self.state
            .borrow_mut()
            .counters
            .record(metrics::DECISION_DURATION.plain(), micros);
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self
            .state
            .borrow_mut()
            .response_headers
            .remove(&self.context_id)
            .unwrap_or_default();
        for (name, value) in headers {
            abi::add_header(abi::RESPONSE_HEADERS, &name, &value);
        }
        Action::Continue
    }
}

/// Reads the request's headers and exactly the host attributes the configuration needs.
fn request_view(config: &Config) -> RequestView {
    let headers = abi::headers(abi::REQUEST_HEADERS);
    let attributes = config
        .host_attributes
        .iter()
        .filter_map(|attribute| {
            let bytes = abi::get_property(&attribute.property_path())?;
            Some((
                *attribute,
                AttributeValue::decode(attribute.kind(), &bytes)?,
            ))
        })
        .collect();
    RequestView {
        headers,
        attributes,
    }
}

/// Asks the rate-limit service for a request (on the current context). `true` if the request
/// was decided at once and may proceed (the dispatch failed and the failure mode admits).
fn dispatch_global(
    context: &dyn Context,
    config: &Config,
    state: &Rc<RefCell<VmState>>,
    wait: GlobalWait,
) -> bool {
    let call = &wait.pending.call;
    let timeout = Duration::from_millis(call.timeout_ms);
    // Through the SDK, which registers the token so the answer is routed back to this context.
    match context.dispatch_grpc_call(
        &call.upstream,
        crate::rls::SERVICE,
        crate::rls::METHOD,
        Vec::new(),
        Some(&call.message),
        timeout,
    ) {
        Ok(token) => {
            state.borrow_mut().global_calls.insert(token, wait);
            false
        }
        Err(_) => {
            let context_id = wait.context_id;
            let decision = resume_global(config, state, wait, Reply::Failed { timeout: false });
            apply(config, state, context_id, &decision)
        }
    }
}

/// The rate-limit service answered (or failed): decide and carry it out.
fn finish_global(
    config: &Config,
    state: &Rc<RefCell<VmState>>,
    token: u32,
    status_code: u32,
    response_size: usize,
) {
    let Some(wait) = state.borrow_mut().global_calls.remove(&token) else {
        return;
    };
    let body = (status_code == 0)
        .then(|| abi::grpc_call_response_body(response_size))
        .flatten()
        .unwrap_or_default();
    // Envoy reports its own timeout of a call as UNAVAILABLE (the 504 of its HTTP client),
    // like a refused connection: a failure that took the whole timeout is the timeout.
    // Envoy's timers run off its event loop's cached clock, so by the wall clock a timeout can
    // fire a few milliseconds early: three quarters of the timeout count as the whole.
    let waited = now().duration_since(wait.dispatched).unwrap_or_default();
    let timeout = Duration::from_millis(wait.pending.call.timeout_ms);
    let reply = match status_code {
        0 => Reply::Message(&body),
        _ => Reply::Failed {
            timeout: waited.saturating_mul(4) >= timeout.saturating_mul(3),
        },
    };
    let context_id = wait.context_id;
    let decision = resume_global(config, state, wait, reply);
    if !abi::set_effective_context(context_id) {
        return;
    }
    if apply(config, state, context_id, &decision) {
        abi::continue_request();
    }
}

/// Decides a request with the rate-limit service's reply and writes its decision log record.
fn resume_global(
    config: &Config,
    state: &Rc<RefCell<VmState>>,
    wait: GlobalWait,
    reply: Reply<'_>,
) -> Decision {
    let GlobalWait {
        pending,
        mut events,
        request_id,
        ..
    } = wait;
    let (decision, mut more) = with_env(config, state, now(), |env| {
        pipeline::resume(config, pending, reply, env)
    });
    events.append(&mut more);
    log_decision(config, &decision, &events, request_id.as_deref());
    decision
}

/// Runs the pipeline.
fn run_pipeline(
    config: &Config,
    state: &Rc<RefCell<VmState>>,
    view: &RequestView,
    now: SystemTime,
) -> (Outcome, Vec<String>) {
    with_env(config, state, now, |env| {
        pipeline::decide(config, view, env)
    })
}

/// Runs `stage` with this VM's environment; with a decision log configured, also returns the
/// names of the counters it incremented (the record is read off them, decision_log.rs).
fn with_env<T>(
    config: &Config,
    state: &Rc<RefCell<VmState>>,
    now: SystemTime,
    stage: impl FnOnce(&mut Env<'_>) -> T,
) -> (T, Vec<String>) {
    let mut state = state.borrow_mut();
    let VmState {
        token_cache,
        local_tokens,
        remote_keys,
        counters,
        global,
        ..
    } = &mut *state;
    let mut recording = Recording {
        inner: counters,
        events: Vec::new(),
    };
    let counters: &mut dyn Counters = if config.decision_log.enabled() {
        &mut recording
    } else {
        recording.inner
    };
    let mut env = Env {
        now,
        store: &abi::HostStore,
        crypto: &abi::HostVerifier,
        remote_keys,
        token_cache,
        local_tokens,
        counters,
        log: &mut HostLog,
        global,
    };
    let out = stage(&mut env);
    (out, recording.events)
}

/// Writes the decision log record of a decided request, where configured.
fn log_decision(config: &Config, decision: &Decision, events: &[String], request_id: Option<&str>) {
    let log = &config.decision_log;
    if !log.enabled() {
        return;
    }
    let record = log.record(decision, events, request_id);
    if log.to_filter_state() {
        let _ = abi::set_property("portcullis.decision_log", &record);
    }
    if log.to_log() {
        HostLog.log(
            crate::ports::LogLevel::Info,
            &format!("portcullis decision {record}"),
        );
    }
}

/// Carries out a decision on the current (effective) HTTP context; `true` if the request
/// may proceed upstream.
fn apply(
    config: &Config,
    state: &Rc<RefCell<VmState>>,
    context_id: u32,
    decision: &Decision,
) -> bool {
    match decision {
        Decision::Allow {
            request_headers,
            response_headers,
            filter_state,
            ..
        } => {
            for (name, value) in filter_state {
                let _ = abi::set_property(name, value);
            }
            for edit in request_headers {
                let _ = match edit {
                    HeaderEdit::Set(name, value) => {
                        abi::replace_header(abi::REQUEST_HEADERS, name, value)
                    }
                    HeaderEdit::Remove(name) => abi::remove_header(abi::REQUEST_HEADERS, name),
                };
            }
            if !response_headers.is_empty() {
                state
                    .borrow_mut()
                    .response_headers
                    .insert(context_id, response_headers.clone());
            }
            true
        }
        Decision::Deny(deny) => {
            if config.responses.filter_state {
                for (name, value) in deny.filter_state() {
                    let _ = abi::set_property(name, &value);
                }
            }
            send_deny(config, deny);
            false
        }
    }
}

fn send_deny(config: &Config, deny: &crate::decision::Deny) {
    let (status, headers, body) = pipeline::render_deny(config, deny);
    abi::send_local_response(u32::from(status), &headers, &body);
}

/// Decision log lines through `proxy_log`.
struct HostLog;

impl crate::ports::Log for HostLog {
    fn log(&mut self, level: crate::ports::LogLevel, message: &str) {
        let level = match level {
            crate::ports::LogLevel::Debug => LogLevel::Debug,
            crate::ports::LogLevel::Info => LogLevel::Info,
            crate::ports::LogLevel::Warn => LogLevel::Warn,
        };
        log(level, message);
    }
}

/// Counters as proxy-wasm metrics, defined on first use. Increments are summed in the VM and
/// flushed on every tick: a host call per counter per request would cost more than the
/// policy itself; stats lag by at most one tick period. The maps hash
/// with Fx, not SipHash: their keys are the configuration's counter names, not input, and a
/// request touches several of them.
#[derive(Default)]
struct HostCounters {
    /// Metric ids by a hash of the name. The name is kept and compared, so a collision can't
    /// merge two counters: a name whose hash is taken goes to `collided`. Keying by the name
    /// itself would cost a byte-by-byte `memcmp` per increment on wasm32 ([`crate::bytes`]).
    ids: FxHashMap<u64, (Box<str>, u32)>,
    collided: FxHashMap<String, u32>,
    /// Unflushed increments, by metric id.
    pending: FxHashMap<u32, i64>,
}

impl HostCounters {
    fn id(&mut self, name: &str, kind: MetricType) -> Option<u32> {
        let hash = FxBuildHasher.hash_one(name);
        let taken = match self.ids.get(&hash) {
            Some((known, id)) if bytes::equal(known.as_bytes(), name.as_bytes()) => {
                return Some(*id)
            }
            Some(_) => true,
            None => false,
        };
        if let Some(id) = self.collided.get(name) {
            return Some(*id);
        }
        let id = abi::define_metric(kind as u32, name)?;
        if taken {
            self.collided.insert(name.to_owned(), id);
        } else {
            self.ids.insert(hash, (name.into(), id));
        }
        Some(id)
    }

    fn flush(&mut self) {
        for (id, by) in self.pending.drain() {
            if by != 0 {
                abi::increment_metric(id, by);
            }
        }
    }
}

impl Counters for HostCounters {
    fn increment(&mut self, name: &str, by: i64) {
        if let Some(id) = self.id(name, MetricType::Counter) {
            *self.pending.entry(id).or_insert(0) += by;
        }
    }

    fn set_gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(name, MetricType::Gauge) {
            abi::record_metric(id, value);
        }
    }
}

impl HostCounters {
    /// One value into a histogram (Envoy keeps the distribution; there is nothing to sum).
    fn record(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(name, MetricType::Histogram) {
            abi::record_metric(id, value);
        }
    }
}

/// The size of this VM's linear memory (it only grows: a high-water mark).
fn linear_memory_bytes() -> usize {
    core::arch::wasm32::memory_size(0).saturating_mul(65536)
}
