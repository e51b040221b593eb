//! One plugin VM (one Envoy worker thread's instance of the plugin) on wasmtime.

use crate::abi::{buffer_type, map_type, status, Action, Headers, LogLevel, MetricKind};
use crate::host::{self, lock, Host, Queue, Shared, WasmModule};
use crate::types::{
    Exchange, GrpcReply, GrpcRequest, HttpCallRequest, HttpReply, HttpRequest, LocalResponse,
    LogEntry, CONNECT_FAILURE_BODY, TIMEOUT_BODY,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::{Caller, Extern, Instance, Linker, Memory, Store, TypedFunc, Val};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::OutputStream;

/// The capacity of the captured stdout/stderr pipes (in effect unlimited).
const STDIO_CAPACITY: usize = usize::MAX / 2;

/// How a VM is configured (Envoy's `vm_config` + plugin config).
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// `vm_config.vm_id`: shared data and queues are namespaced by it.
    pub vm_id: String,
    /// The plugin's `root_id`.
    pub root_id: String,
    /// The plugin's `name` (Envoy's default: empty).
    pub plugin_name: String,
    /// `vm_config.configuration` (handed to `proxy_on_vm_start`).
    pub vm_configuration: Vec<u8>,
    /// The plugin `configuration` (handed to `proxy_on_configure`).
    pub plugin_configuration: Vec<u8>,
    /// Extra plugin-level properties (dotted path → bytes).
    pub properties: Vec<(String, Vec<u8>)>,
    /// Wall-clock limit for one callback into the plugin (a trap past it); default 30 s.
    pub callback_timeout: Option<Duration>,
}

impl VmOptions {
    /// Options with this plugin configuration and defaults for the rest.
    pub fn new(plugin_configuration: impl Into<Vec<u8>>) -> VmOptions {
        VmOptions {
            plugin_configuration: plugin_configuration.into(),
            ..VmOptions::default()
        }
    }
    pub fn vm_id(mut self, vm_id: &str) -> VmOptions {
        self.vm_id = vm_id.to_owned();
        self
    }
    pub fn vm_configuration(mut self, c: impl Into<Vec<u8>>) -> VmOptions {
        self.vm_configuration = c.into();
        self
    }
    pub fn plugin_name(mut self, name: &str) -> VmOptions {
        self.plugin_name = name.to_owned();
        self
    }
    pub fn root_id(mut self, root_id: &str) -> VmOptions {
        self.root_id = root_id.to_owned();
        self
    }
}

/// Which part of a stream the host is in; Envoy's rules for header maps, bodies and
/// properties follow from it (see [`Live`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Before or during the request callbacks.
    #[default]
    Request,
    /// During the response callbacks (the upstream's response or a local reply).
    Response,
    /// `proxy_on_log`: Envoy's access-log phase (maps read-only).
    Log,
    /// After `proxy_on_log`: `proxy_on_done`/`proxy_on_delete`.
    Done,
}

/// Which of a stream's maps and buffers the plugin may touch now. Envoy holds a pointer to
/// each only while its callback runs, or while the plugin keeps that part paused; at other
/// times the host functions answer BadArgument (a map) or find no buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    pub request_headers: bool,
    pub request_body: bool,
    pub request_trailers: bool,
    pub response_headers: bool,
    pub response_body: bool,
    pub response_trailers: bool,
    /// The current (or last) callback was given end_of_stream.
    pub end_of_stream: bool,
}

/// Why loading, starting or calling into a VM failed.
#[derive(Debug, Clone)]
pub enum VmError {
    /// The module could not be read, compiled or instantiated (e.g. an unknown import).
    Load(String),
    /// `proxy_on_vm_start` returned false.
    StartFailed { logs: Vec<String> },
    /// `proxy_on_configure` returned false; `logs` holds what the plugin logged (warn and up).
    ConfigureFailed { logs: Vec<String> },
    /// The VM trapped (e.g. a Rust panic). The VM is unusable until [`Vm::restart`].
    Trap(TrapInfo),
    /// An earlier trap killed this VM.
    Poisoned,
    /// No such stream context.
    NoStream(u32),
}

/// A trap, with what the plugin said before dying.
#[derive(Debug, Clone)]
pub struct TrapInfo {
    /// The export being called, e.g. `proxy_on_request_headers`.
    pub function: String,
    /// The panic message, if the plugin logged one (critical `proxy_log`) or wrote one to stderr.
    pub panic_message: Option<String>,
    /// The trap itself (e.g. `wasm trap: wasm 'unreachable' instruction executed`).
    pub trap: String,
    /// The wasm backtrace, one frame a line, names demangled.
    pub backtrace: String,
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Load(m) => write!(f, "load error: {m}"),
            VmError::StartFailed { logs } => {
                write!(f, "proxy_on_vm_start failed: {}", logs.join("; "))
            }
            VmError::ConfigureFailed { logs } => {
                write!(f, "proxy_on_configure failed: {}", logs.join("; "))
            }
            VmError::Trap(t) => write!(
                f,
                "VM trapped in {}: {}{}\n{}",
                t.function,
                t.trap,
                t.panic_message
                    .as_deref()
                    .map(|m| format!(" (panic: {m})"))
                    .unwrap_or_default(),
                t.backtrace
            ),
            VmError::Poisoned => write!(f, "VM is dead after a trap; restart it"),
            VmError::NoStream(id) => write!(f, "no stream context {id}"),
        }
    }
}

impl std::error::Error for VmError {}

impl VmError {
    /// The configuration error's text, if configure failed.
    pub fn configure_message(&self) -> Option<String> {
        match self {
            VmError::ConfigureFailed { logs } => Some(logs.join("\n")),
            _ => None,
        }
    }
}

/// A stream (HTTP context) as the host sees it.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    pub id: u32,
    pub request_headers: Headers,
    pub request_body: Vec<u8>,
    pub request_trailers: Headers,
    pub response_headers: Headers,
    pub response_body: Vec<u8>,
    pub response_trailers: Headers,
    pub properties: HashMap<String, Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    /// The filter called `continue_stream(HttpRequest)`.
    pub request_resumed: bool,
    pub response_resumed: bool,
    /// `close_stream` was called.
    pub closed: bool,
    pub phase: Phase,
    pub live: Live,
    /// A `send_local_response` was asked for (Envoy keeps the first one).
    pub local_reply_pending: bool,
    /// Virtual time (ns) at which the stream completed (`request.duration`: Envoy knows it
    /// from the access-log phase on).
    pub request_complete_ns: Option<u64>,
    /// Virtual time (ns) the stream started.
    pub start_ns: u64,
    /// Request body bytes received from the client so far.
    pub request_bytes: u64,
    /// Response body bytes sent to the client so far.
    pub response_bytes: u64,
    /// `response.code_details` once known (`via_upstream`, the local reply's details).
    pub response_code_details: Option<String>,
    /// The upstream (`ip:port`) once the request was sent there.
    pub upstream_address: Option<String>,
    /// The request is gRPC (`content-type: application/grpc...`): local replies become
    /// trailers-only gRPC responses.
    pub grpc: bool,
    /// The plugin's last request body callback paused: Envoy buffers what follows.
    pub request_buffering: bool,
    pub response_buffering: bool,
    /// The request body as the upstream received it (what the plugin let through).
    pub upstream_request_body: Vec<u8>,
    /// The response body as the client received it.
    pub client_response_body: Vec<u8>,
    /// A local reply as the client received it (headers incl. `:status`, body).
    pub client_response: Option<(Headers, Vec<u8>)>,
}

impl StreamState {
    /// The request body the plugin holds goes to the upstream.
    fn pass_request_body(&mut self) {
        if self.live.request_body || self.request_buffering {
            self.upstream_request_body.append(&mut self.request_body);
        }
        self.live.request_body = false;
        self.request_buffering = false;
    }
    /// The response body the plugin holds goes to the client.
    fn pass_response_body(&mut self) {
        if self.live.response_body || self.response_buffering {
            let n = self.response_body.len() as u64;
            self.response_bytes += n;
            self.client_response_body.append(&mut self.response_body);
        }
        self.live.response_body = false;
        self.response_buffering = false;
    }
}

/// The largest body chunk the host hands a plugin at once. Envoy's chunks follow the
/// socket reads; 16 KiB is a typical read.
pub const BODY_CHUNK: usize = 16 * 1024;

/// The response Envoy makes of a local reply (`Utility::sendLocalReply`): `:status`, the
/// plugin's headers, and for a body `content-length` and `content-type: text/plain` (unless
/// the plugin set one). For a gRPC request: a trailers-only response (`:status` 200,
/// `content-type: application/grpc`, `grpc-status` — the plugin's, or mapped from the HTTP
/// status — and the body as `grpc-message`), no body.
fn local_reply(l: &LocalResponse, grpc: bool) -> (Headers, Vec<u8>) {
    if grpc {
        let code = if (0..=16).contains(&l.grpc_status) {
            l.grpc_status as u32
        } else {
            http_to_grpc_status(l.status)
        };
        let mut h: Headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/grpc".into()),
            ("grpc-status".into(), code.to_string()),
        ];
        if !l.body.is_empty() {
            h.push((
                "grpc-message".into(),
                String::from_utf8_lossy(&l.body).into_owned(),
            ));
        }
        h.extend(l.headers.iter().cloned());
        return (h, Vec::new());
    }
    let mut h: Headers = vec![(":status".into(), l.status.to_string())];
    h.extend(l.headers.iter().cloned());
    if !l.body.is_empty() {
        h.retain(|(k, _)| k != "content-length");
        h.push(("content-length".into(), l.body.len().to_string()));
        if crate::types::find_header(&h, "content-type").is_none() {
            h.push(("content-type".into(), "text/plain".into()));
        }
    }
    (h, l.body.clone())
}

/// Envoy's HTTP → gRPC status mapping (`Grpc::Utility::httpToGrpcStatus`).
pub fn http_to_grpc_status(http: u32) -> u32 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Envoy's connection manager adds to the request before the filter chain
/// `x-forwarded-proto` (the scheme) and `x-request-id` (a UUID; here derived from `seed`, so
/// runs repeat) when the client did not send them.
fn add_envoy_request_headers(headers: &mut Headers, seed: u32) {
    let has = |h: &Headers, n: &str| h.iter().any(|(k, _)| k == n);
    if !has(headers, "x-forwarded-proto") {
        let scheme = crate::types::find_header(headers, ":scheme")
            .unwrap_or("http")
            .to_owned();
        headers.push(("x-forwarded-proto".into(), scheme));
    }
    if !has(headers, "x-request-id") {
        let id = format!("00000000-0000-4000-8000-{:012x}", u64::from(seed));
        headers.push(("x-request-id".into(), id));
    }
}

#[derive(Debug)]
enum PendingKind {
    Http {
        reply: Option<(u16, Headers, Vec<u8>, Headers)>,
    },
    GrpcCall {
        reply: Option<(u32, String, Vec<u8>)>,
    },
    GrpcStream {
        events: VecDeque<GrpcEvent>,
    },
}

#[derive(Debug, Clone)]
enum GrpcEvent {
    InitialMetadata(Headers),
    Message(Vec<u8>),
    TrailingMetadata(Headers),
    Close(u32, String),
}

#[derive(Debug)]
struct Pending {
    ctx: u32,
    due_ns: u64,
    kind: PendingKind,
}

#[derive(Default)]
struct CallbackData {
    http_headers: Headers,
    http_body: Vec<u8>,
    http_trailers: Headers,
    grpc_metadata: Headers,
    grpc_message: Vec<u8>,
    status: (u32, String),
}

pub(crate) struct VmState {
    wasi: WasiP1Ctx,
    host: Host,
    vm_index: usize,
    vm_id: String,
    root_ctx: u32,
    current_ctx: u32,
    next_ctx: u32,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    vm_properties: HashMap<String, Vec<u8>>,
    streams: BTreeMap<u32, StreamState>,
    tick_period_ns: u64,
    next_tick_ns: Option<u64>,
    pending: BTreeMap<u32, Pending>,
    next_token: u32,
    callback: CallbackData,
    done_called: bool,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    stdout_seen: usize,
    stderr_seen: usize,
    /// The plugin's `memory` export, looked up once after instantiation.
    memory: Option<Memory>,
    /// `proxy_on_memory_allocate` (or `malloc`) with the usual `(i32) -> i32` type.
    /// (An `Arc`: cloning a `TypedFunc` costs a type-registry round trip.)
    allocator: Option<Arc<TypedFunc<i32, i32>>>,
}

impl VmState {
    fn log(&self, level: LogLevel, source: &'static str, message: String) {
        let mut s = self.host.state();
        let time_ns = s.now_ns;
        s.log(LogEntry {
            vm: self.vm_index,
            context_id: self.current_ctx,
            level,
            source,
            message,
            time_ns,
        });
    }

    fn now_ns(&self) -> u64 {
        self.host.state().now_ns
    }

    /// The header map `map` to read (`write` false) or change, under Envoy's rules: a
    /// stream's map only while Envoy holds it (its callback, or while the plugin keeps that
    /// part paused; read-only in `proxy_on_log`), else BadArgument (NotFound when reading in
    /// the log phase). Trailers can be added by the last body callback, as Envoy allows.
    fn map_access(&mut self, map: i32, write: bool) -> Result<&mut Headers, i32> {
        match map {
            map_type::HTTP_REQUEST_HEADERS
            | map_type::HTTP_REQUEST_TRAILERS
            | map_type::HTTP_RESPONSE_HEADERS
            | map_type::HTTP_RESPONSE_TRAILERS => {
                let s = self
                    .streams
                    .get_mut(&self.current_ctx)
                    .ok_or(status::BAD_ARGUMENT)?;
                let log = s.phase == Phase::Log;
                let read_in_log = log && !write;
                let live = s.live;
                let adds_trailers = |body: bool| write && !log && body && live.end_of_stream;
                let available = match map {
                    map_type::HTTP_REQUEST_HEADERS => live.request_headers || read_in_log,
                    map_type::HTTP_REQUEST_TRAILERS => {
                        live.request_trailers || adds_trailers(live.request_body)
                    }
                    map_type::HTTP_RESPONSE_HEADERS => live.response_headers || read_in_log,
                    _ => live.response_trailers || read_in_log || adds_trailers(live.response_body),
                };
                if !available {
                    return Err(if read_in_log {
                        status::NOT_FOUND
                    } else {
                        status::BAD_ARGUMENT
                    });
                }
                Ok(match map {
                    map_type::HTTP_REQUEST_HEADERS => &mut s.request_headers,
                    map_type::HTTP_REQUEST_TRAILERS => {
                        s.live.request_trailers = true;
                        &mut s.request_trailers
                    }
                    map_type::HTTP_RESPONSE_HEADERS => &mut s.response_headers,
                    _ => {
                        if !log {
                            s.live.response_trailers = true;
                        }
                        &mut s.response_trailers
                    }
                })
            }
            map_type::GRPC_RECEIVE_INITIAL_METADATA | map_type::GRPC_RECEIVE_TRAILING_METADATA => {
                Ok(&mut self.callback.grpc_metadata)
            }
            map_type::HTTP_CALL_RESPONSE_HEADERS => Ok(&mut self.callback.http_headers),
            map_type::HTTP_CALL_RESPONSE_TRAILERS => Ok(&mut self.callback.http_trailers),
            _ => Err(status::BAD_ARGUMENT),
        }
    }

    /// A buffer to read. A stream's body is empty unless Envoy holds it (its callback, or
    /// while the plugin buffers it).
    fn buffer(&self, buffer: i32) -> Option<&[u8]> {
        let stream = || self.streams.get(&self.current_ctx);
        match buffer {
            buffer_type::HTTP_REQUEST_BODY => {
                let s = stream()?;
                Some(if s.live.request_body {
                    &s.request_body
                } else {
                    &[]
                })
            }
            buffer_type::HTTP_RESPONSE_BODY => {
                let s = stream()?;
                Some(if s.live.response_body {
                    &s.response_body
                } else {
                    &[]
                })
            }
            buffer_type::HTTP_CALL_RESPONSE_BODY => Some(&self.callback.http_body),
            buffer_type::GRPC_RECEIVE_BUFFER => Some(&self.callback.grpc_message),
            buffer_type::VM_CONFIGURATION => Some(&self.vm_config),
            buffer_type::PLUGIN_CONFIGURATION => Some(&self.plugin_config),
            _ => None,
        }
    }

    /// A buffer to change: only a stream's body while Envoy holds it.
    fn buffer_mut(&mut self, buffer: i32) -> Result<&mut Vec<u8>, i32> {
        let s = self
            .streams
            .get_mut(&self.current_ctx)
            .ok_or(status::BAD_ARGUMENT)?;
        match buffer {
            buffer_type::HTTP_REQUEST_BODY if s.live.request_body => Ok(&mut s.request_body),
            buffer_type::HTTP_RESPONSE_BODY if s.live.response_body => Ok(&mut s.response_body),
            _ => Err(status::BAD_ARGUMENT),
        }
    }

    fn property(&self, path: &str) -> Result<Vec<u8>, i32> {
        if let Some(s) = self.streams.get(&self.current_ctx) {
            if let Some(v) = s.properties.get(path) {
                return Ok(v.clone());
            }
            if let Some(v) = crate::properties::stream_property(s, path) {
                return v;
            }
        }
        self.vm_properties
            .get(path)
            .cloned()
            .ok_or(status::NOT_FOUND)
    }

    fn drain_stdio(&mut self) {
        for (which, level) in [("stdout", LogLevel::Info), ("stderr", LogLevel::Error)] {
            let (pipe, seen) = if which == "stdout" {
                (&self.stdout, self.stdout_seen)
            } else {
                (&self.stderr, self.stderr_seen)
            };
            // `contents()` copies the whole pipe: look at its length first (what
            // `check_write` leaves of the capacity), which costs a lock and no copy.
            let written = match OutputStream::check_write(&mut pipe.clone()) {
                Ok(room) => STDIO_CAPACITY.saturating_sub(room),
                Err(_) => STDIO_CAPACITY,
            };
            if written <= seen {
                continue;
            }
            let contents = pipe.contents();
            if contents.len() <= seen {
                continue;
            }
            // Only whole lines; keep a partial line for later.
            let fresh = contents.get(seen..).unwrap_or_default();
            let upto = match fresh.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => continue,
            };
            let text = String::from_utf8_lossy(fresh.get(..upto).unwrap_or_default()).into_owned();
            for line in text.lines() {
                self.log(level, which, line.to_owned());
            }
            if which == "stdout" {
                self.stdout_seen += upto;
            } else {
                self.stderr_seen += upto;
            }
        }
    }
}

/// A virtual clock for WASI, reading the host's clock.
struct VirtualClock(Arc<Shared>);

impl wasmtime_wasi::HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(lock(&self.0.state).now_ns)
    }
}

impl wasmtime_wasi::HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        lock(&self.0.state).now_ns
    }
}

/// One plugin VM: a wasmtime instance with its root context, as one Envoy worker runs it.
///
/// VMs created from one [`Host`] share its shared data, queues, metrics, clock and logs.
pub struct Vm {
    host: Host,
    module: WasmModule,
    options: VmOptions,
    store: Store<VmState>,
    instance: Instance,
    index: usize,
    dead: bool,
    /// Exports looked up so far (`None`: no such function), so a callback doesn't look the
    /// export up and check its type every time. A handful: a list is fastest.
    exports: Vec<(String, Option<Export>)>,
    /// Argument and result buffers of dynamic calls, reused.
    vals: (Vec<Val>, Vec<Val>),
}

/// A callback export: typed when its signature is one of proxy-wasm's all-`i32` ones (a call
/// then checks no types and boxes no values), else called through `Val`s.
#[derive(Clone)]
enum Export {
    P0(TypedFunc<(), ()>),
    P0R(TypedFunc<(), i32>),
    P1(TypedFunc<i32, ()>),
    P1R(TypedFunc<i32, i32>),
    P2(TypedFunc<(i32, i32), ()>),
    P2R(TypedFunc<(i32, i32), i32>),
    P3(TypedFunc<(i32, i32, i32), ()>),
    P3R(TypedFunc<(i32, i32, i32), i32>),
    P5(TypedFunc<(i32, i32, i32, i32, i32), ()>),
    P5R(TypedFunc<(i32, i32, i32, i32, i32), i32>),
    Dynamic {
        func: wasmtime::Func,
        /// Which parameters are i64 (the others get i32s).
        i64_params: Vec<bool>,
        results: usize,
    },
}

impl Export {
    fn new(func: wasmtime::Func, store: &Store<VmState>) -> Export {
        macro_rules! typed {
            ($($variant:ident: $p:ty => $r:ty),*) => {
                $(if let Ok(f) = func.typed::<$p, $r>(store) {
                    return Export::$variant(f);
                })*
            };
        }
        typed!(
            P0: () => (), P0R: () => i32,
            P1: i32 => (), P1R: i32 => i32,
            P2: (i32, i32) => (), P2R: (i32, i32) => i32,
            P3: (i32, i32, i32) => (), P3R: (i32, i32, i32) => i32,
            P5: (i32, i32, i32, i32, i32) => (), P5R: (i32, i32, i32, i32, i32) => i32
        );
        let ty = func.ty(store);
        let results = ty.results().len();
        let i64_params = ty
            .params()
            .map(|t| matches!(t, wasmtime::ValType::I64))
            .collect();
        Export::Dynamic {
            func,
            i64_params,
            results,
        }
    }

    /// Calls it with `args` (missing ones are 0); the first result as an i32.
    fn call(
        &self,
        store: &mut Store<VmState>,
        args: &[i32],
        vals: &mut (Vec<Val>, Vec<Val>),
    ) -> wasmtime::Result<Option<i32>> {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        match self {
            Export::P0(f) => f.call(store, ()).map(|()| None),
            Export::P0R(f) => f.call(store, ()).map(Some),
            Export::P1(f) => f.call(store, a(0)).map(|()| None),
            Export::P1R(f) => f.call(store, a(0)).map(Some),
            Export::P2(f) => f.call(store, (a(0), a(1))).map(|()| None),
            Export::P2R(f) => f.call(store, (a(0), a(1))).map(Some),
            Export::P3(f) => f.call(store, (a(0), a(1), a(2))).map(|()| None),
            Export::P3R(f) => f.call(store, (a(0), a(1), a(2))).map(Some),
            Export::P5(f) => f.call(store, (a(0), a(1), a(2), a(3), a(4))).map(|()| None),
            Export::P5R(f) => f.call(store, (a(0), a(1), a(2), a(3), a(4))).map(Some),
            Export::Dynamic {
                func,
                i64_params,
                results,
            } => {
                let (params, out) = vals;
                params.clear();
                params.extend(i64_params.iter().enumerate().map(|(i, &is_i64)| {
                    if is_i64 {
                        Val::I64(i64::from(a(i) as u32))
                    } else {
                        Val::I32(a(i))
                    }
                }));
                out.clear();
                out.resize(*results, Val::I32(0));
                func.call(store, params, out)?;
                Ok(out.first().and_then(|v| match v {
                    Val::I32(i) => Some(*i),
                    Val::I64(i) => Some(*i as i32),
                    _ => None,
                }))
            }
        }
    }
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("index", &self.index)
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

const ROOT_CONTEXT_ID: u32 = 1;

impl Vm {
    /// Instantiates `module` and runs Envoy's start-up sequence: `_initialize`/`_start`,
    /// `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`, `proxy_on_configure`.
    pub fn start(host: &Host, module: &WasmModule, options: VmOptions) -> Result<Vm, VmError> {
        let index = {
            let mut s = host.state();
            s.next_vm += 1;
            s.next_vm - 1
        };
        let (store, instance) = instantiate(host, module, &options, index)?;
        let mut vm = Vm {
            host: host.clone(),
            module: module.clone(),
            options,
            store,
            instance,
            index,
            dead: false,
            exports: Vec::new(),
            vals: (Vec::new(), Vec::new()),
        };
        vm.boot()?;
        Ok(vm)
    }

    fn boot(&mut self) -> Result<(), VmError> {
        // Reactor initialisation.
        if self.has_export("_initialize") {
            self.call("_initialize", 0, &[])?;
        } else if self.has_export("_start") {
            self.call("_start", 0, &[])?;
        }
        let root = ROOT_CONTEXT_ID as i32;
        self.call("proxy_on_context_create", ROOT_CONTEXT_ID, &[root, 0])?;
        let before = self.host.state().logs.len();
        let vm_cfg = self.store.data().vm_config.len() as i32;
        let ok = self.call("proxy_on_vm_start", ROOT_CONTEXT_ID, &[root, vm_cfg])?;
        if ok == Some(0) {
            return Err(VmError::StartFailed {
                logs: self.logs_since(before, LogLevel::Warn),
            });
        }
        self.configure()
    }

    fn configure(&mut self) -> Result<(), VmError> {
        let before = self.host.state().logs.len();
        let size = self.store.data().plugin_config.len() as i32;
        let ok = self.call(
            "proxy_on_configure",
            ROOT_CONTEXT_ID,
            &[ROOT_CONTEXT_ID as i32, size],
        )?;
        if ok == Some(0) {
            return Err(VmError::ConfigureFailed {
                logs: self.logs_since(before, LogLevel::Warn),
            });
        }
        self.deliver_queue_ready()?;
        Ok(())
    }

    /// Shuts the VM down like Envoy: `proxy_on_done(root)`; if the plugin answers false it
    /// must call `proxy_done` later, so ticks and callouts keep firing (for up to `grace` of
    /// virtual time) until it does; then `proxy_on_delete(root)`. `Ok(true)` if it finished.
    pub fn shutdown(&mut self, grace: Duration) -> Result<bool, VmError> {
        let r = self.call("proxy_on_done", ROOT_CONTEXT_ID, &[ROOT_CONTEXT_ID as i32])?;
        let mut finished = r != Some(0) || self.store.data().done_called;
        if !finished {
            let give_up = self
                .store
                .data()
                .now_ns()
                .saturating_add(grace.as_nanos() as u64);
            while !self.store.data().done_called {
                match self.next_event_time() {
                    Some(t) if t <= give_up => self.run_until(t)?,
                    _ => break,
                }
            }
            finished = self.store.data().done_called;
        }
        self.call(
            "proxy_on_delete",
            ROOT_CONTEXT_ID,
            &[ROOT_CONTEXT_ID as i32],
        )?;
        Ok(finished)
    }

    /// Calls `proxy_on_configure` again with a new plugin configuration (like an xDS update).
    pub fn reconfigure(&mut self, plugin_configuration: impl Into<Vec<u8>>) -> Result<(), VmError> {
        let c = plugin_configuration.into();
        self.options.plugin_configuration = c.clone();
        self.store.data_mut().plugin_config = c;
        self.configure()
    }

    /// Throws the instance away and starts a fresh one (same index, same host state),
    /// as Envoy does after a VM crashed.
    pub fn restart(&mut self) -> Result<(), VmError> {
        let (store, instance) = instantiate(&self.host, &self.module, &self.options, self.index)?;
        self.store = store;
        self.instance = instance;
        self.dead = false;
        self.exports.clear();
        self.boot()
    }

    fn logs_since(&self, before: usize, min: LogLevel) -> Vec<String> {
        let s = self.host.state();
        s.logs
            .get(before..)
            .unwrap_or_default()
            .iter()
            .filter(|l| l.vm == self.index && l.level >= min)
            .map(|l| l.message.clone())
            .collect()
    }

    /// This VM's number within its host (0, 1, ...).
    pub fn index(&self) -> usize {
        self.index
    }
    pub fn host(&self) -> &Host {
        &self.host
    }
    pub fn root_context_id(&self) -> u32 {
        ROOT_CONTEXT_ID
    }
    /// Whether the VM trapped and needs [`Vm::restart`].
    pub fn is_dead(&self) -> bool {
        self.dead
    }
    /// Whether the plugin called `proxy_done`.
    pub fn done_called(&self) -> bool {
        self.store.data().done_called
    }
    /// The tick period the root context asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        let p = self.store.data().tick_period_ns;
        (p > 0).then(|| Duration::from_nanos(p))
    }
    /// Tokens of the callouts (HTTP and gRPC) still waiting for an answer.
    pub fn pending_callouts(&self) -> Vec<u32> {
        self.store.data().pending.keys().copied().collect()
    }

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_export(&mut self.store, name).is_some()
    }

    /// Calls an export with `ctx` as the current context. `Ok(None)` if the export is
    /// missing or returns nothing.
    pub fn call(&mut self, name: &str, ctx: u32, args: &[i32]) -> Result<Option<i32>, VmError> {
        if self.dead {
            return Err(VmError::Poisoned);
        }
        let idx = match self.exports.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                let e = self
                    .instance
                    .get_func(&mut self.store, name)
                    .map(|func| Export::new(func, &self.store));
                self.exports.push((name.to_owned(), e));
                self.exports.len() - 1
            }
        };
        // Borrowed, not cloned: a `TypedFunc` clone registers its type again.
        let Some((_, Some(export))) = self.exports.get(idx) else {
            return Ok(None);
        };
        let previous = self.store.data().current_ctx;
        self.store.data_mut().current_ctx = ctx;
        let log_before = self.host.state().logs.len();
        let timeout = self
            .options
            .callback_timeout
            .unwrap_or(Duration::from_secs(30));
        let ticks = (timeout.as_millis() / host::EPOCH_TICK.as_millis()).max(1) as u64 + 1;
        self.store.set_epoch_deadline(ticks);
        let r = export.call(&mut self.store, args, &mut self.vals);
        self.store.data_mut().drain_stdio();
        self.store.data_mut().current_ctx = previous;
        match r {
            Ok(first) => Ok(first),
            Err(e) => {
                self.dead = true;
                let trap = e
                    .downcast_ref::<wasmtime::Trap>()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| format!("{e}"));
                let backtrace = e
                    .downcast_ref::<wasmtime::WasmBacktrace>()
                    .map(|b| b.to_string())
                    .unwrap_or_default();
                let panic_message = {
                    let s = self.host.state();
                    let lines: Vec<&LogEntry> = s
                        .logs
                        .get(log_before..)
                        .unwrap_or_default()
                        .iter()
                        .filter(|l| {
                            l.vm == self.index
                                && (l.level == LogLevel::Critical || l.source == "stderr")
                        })
                        .collect();
                    let msgs: Vec<String> = lines.iter().map(|l| l.message.clone()).collect();
                    (!msgs.is_empty()).then(|| msgs.join("\n"))
                };
                let info = TrapInfo {
                    function: name.to_owned(),
                    panic_message,
                    trap,
                    backtrace: if backtrace.is_empty() {
                        format!("{e:?}")
                    } else {
                        backtrace
                    },
                };
                self.store.data().log(
                    LogLevel::Critical,
                    "host",
                    format!("VM trapped: {}", info.trap),
                );
                Err(VmError::Trap(info))
            }
        }
    }

    // ---- streams ----

    /// Creates a stream context for `req` (`proxy_on_context_create(ctx, root)`), without
    /// sending anything yet.
    pub fn open_stream(&mut self, req: &HttpRequest) -> Result<u32, VmError> {
        let now = self.store.data().now_ns();
        let data = self.store.data_mut();
        let ctx = data.next_ctx;
        data.next_ctx += 1;
        let grpc = crate::types::find_header(&req.headers, "content-type")
            .is_some_and(|v| v.starts_with("application/grpc"));
        let mut st = StreamState {
            id: ctx,
            request_headers: req.headers.clone(),
            properties: HashMap::with_capacity(req.properties.len() + 1),
            start_ns: now,
            grpc,
            ..StreamState::default()
        };
        for (k, v) in &req.properties {
            st.properties.insert(k.clone(), v.clone());
        }
        // One downstream connection per request here; Envoy numbers connections.
        st.properties
            .entry("connection.id".to_owned())
            .or_insert_with(|| u64::from(ctx).to_le_bytes().to_vec());
        data.streams.insert(ctx, st);
        self.call(
            "proxy_on_context_create",
            ctx,
            &[ctx as i32, ROOT_CONTEXT_ID as i32],
        )?;
        Ok(ctx)
    }

    /// The host's view of a stream.
    pub fn stream(&self, ctx: u32) -> Option<&StreamState> {
        self.store.data().streams.get(&ctx)
    }

    fn stream_mut(&mut self, ctx: u32) -> Result<&mut StreamState, VmError> {
        self.store
            .data_mut()
            .streams
            .get_mut(&ctx)
            .ok_or(VmError::NoStream(ctx))
    }

    /// `proxy_on_request_headers`. The request headers stay available to the plugin until
    /// it continues (as in Envoy).
    pub fn send_request_headers(
        &mut self,
        ctx: u32,
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let st = self.stream_mut(ctx)?;
        st.live.request_headers = true;
        st.live.end_of_stream = end_of_stream;
        let n = st.request_headers.len() as i32;
        let action = self.stream_callback(
            "proxy_on_request_headers",
            ctx,
            &[ctx as i32, n, i32::from(end_of_stream)],
        )?;
        if action == Action::Continue {
            if let Ok(st) = self.stream_mut(ctx) {
                st.live.request_headers = false;
            }
        }
        Ok(action)
    }

    /// Calls a stream callback that answers an `Action`, then, like Envoy after the VM call:
    /// sends a local reply the plugin asked for (through its own response callbacks), and
    /// delivers whatever became due.
    fn stream_callback(&mut self, name: &str, ctx: u32, args: &[i32]) -> Result<Action, VmError> {
        let r = self.call(name, ctx, args)?;
        self.send_pending_local_reply(ctx)?;
        self.after_callback()?;
        Ok(Action::from_i32(r.unwrap_or(0)))
    }

    /// Envoy's `sendLocalReply` for a reply the plugin asked for: before the response has
    /// started, the reply runs through the filter's response callbacks (`:status`, the
    /// plugin's headers, `content-length` and `content-type: text/plain` for a body; for a
    /// gRPC request a trailers-only response with `grpc-status`/`grpc-message`); once the
    /// upstream's response has started, it goes straight to the client.
    fn send_pending_local_reply(&mut self, ctx: u32) -> Result<(), VmError> {
        let Some(st) = self.store.data_mut().streams.get_mut(&ctx) else {
            return Ok(());
        };
        if !st.local_reply_pending {
            return Ok(());
        }
        st.local_reply_pending = false;
        let Some(local) = st.local_response.clone() else {
            return Ok(());
        };
        let (headers, body) = local_reply(&local, st.grpc);
        st.response_code_details = Some(if local.details.is_empty() {
            "via_local_reply".to_owned()
        } else {
            local.details.clone()
        });
        if st.phase != Phase::Request {
            st.client_response = Some((headers, body));
            return Ok(());
        }
        st.phase = Phase::Response;
        st.response_headers = headers;
        st.live.response_headers = true;
        st.live.end_of_stream = body.is_empty();
        let n = st.response_headers.len() as i32;
        let eos = i32::from(body.is_empty());
        self.call("proxy_on_response_headers", ctx, &[ctx as i32, n, eos])?;
        let st = self.stream_mut(ctx)?;
        st.live.response_headers = false;
        if !body.is_empty() {
            st.response_body = body;
            st.live.response_body = true;
            st.live.end_of_stream = true;
            let n = st.response_body.len() as i32;
            self.call("proxy_on_response_body", ctx, &[ctx as i32, n, 1])?;
            let st = self.stream_mut(ctx)?;
            st.live.response_body = false;
        }
        let st = self.stream_mut(ctx)?;
        st.client_response = Some((st.response_headers.clone(), st.response_body.clone()));
        Ok(())
    }

    /// `proxy_on_request_body` with one chunk of the body. While the plugin buffers (its
    /// previous body callback paused), the chunk is added to what it holds and it is handed
    /// the whole buffer, as Envoy does; what it lets through is what the upstream receives.
    pub fn send_request_body(
        &mut self,
        ctx: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let st = self.stream_mut(ctx)?;
        if !st.request_buffering {
            st.request_body.clear();
        }
        st.request_body.extend_from_slice(chunk);
        st.request_bytes += chunk.len() as u64;
        st.live.request_body = true;
        st.live.end_of_stream = end_of_stream;
        let n = st.request_body.len() as i32;
        let action = self.stream_callback(
            "proxy_on_request_body",
            ctx,
            &[ctx as i32, n, i32::from(end_of_stream)],
        )?;
        let st = self.stream_mut(ctx)?;
        st.request_buffering = action == Action::Pause;
        if action == Action::Continue {
            st.pass_request_body();
        }
        Ok(action)
    }

    /// `proxy_on_request_trailers`.
    pub fn send_request_trailers(
        &mut self,
        ctx: u32,
        trailers: &Headers,
    ) -> Result<Action, VmError> {
        let st = self.stream_mut(ctx)?;
        st.request_trailers = trailers.clone();
        st.live.request_trailers = true;
        let action = self.stream_callback(
            "proxy_on_request_trailers",
            ctx,
            &[ctx as i32, trailers.len() as i32],
        )?;
        if action == Action::Continue {
            if let Ok(st) = self.stream_mut(ctx) {
                st.live.request_trailers = false;
            }
        }
        Ok(action)
    }

    /// `proxy_on_response_headers` (`:status` is added first). The response phase starts.
    pub fn send_response_headers(
        &mut self,
        ctx: u32,
        status_code: u16,
        headers: &Headers,
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let mut all = vec![(":status".to_owned(), status_code.to_string())];
        all.extend(headers.iter().cloned());
        let n = all.len() as i32;
        let st = self.stream_mut(ctx)?;
        st.phase = Phase::Response;
        st.response_headers = all;
        st.live.response_headers = true;
        st.live.end_of_stream = end_of_stream;
        let action = self.stream_callback(
            "proxy_on_response_headers",
            ctx,
            &[ctx as i32, n, i32::from(end_of_stream)],
        )?;
        if action == Action::Continue {
            if let Ok(st) = self.stream_mut(ctx) {
                st.live.response_headers = false;
            }
        }
        Ok(action)
    }

    /// `proxy_on_response_body` with one chunk (buffered like the request body).
    pub fn send_response_body(
        &mut self,
        ctx: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let st = self.stream_mut(ctx)?;
        if !st.response_buffering {
            st.response_body.clear();
        }
        st.response_body.extend_from_slice(chunk);
        st.live.response_body = true;
        st.live.end_of_stream = end_of_stream;
        let n = st.response_body.len() as i32;
        let action = self.stream_callback(
            "proxy_on_response_body",
            ctx,
            &[ctx as i32, n, i32::from(end_of_stream)],
        )?;
        let st = self.stream_mut(ctx)?;
        st.response_buffering = action == Action::Pause;
        if action == Action::Continue {
            st.pass_response_body();
        }
        Ok(action)
    }

    /// `proxy_on_response_trailers`.
    pub fn send_response_trailers(
        &mut self,
        ctx: u32,
        trailers: &Headers,
    ) -> Result<Action, VmError> {
        let st = self.stream_mut(ctx)?;
        st.response_trailers = trailers.clone();
        st.live.response_trailers = true;
        let action = self.stream_callback(
            "proxy_on_response_trailers",
            ctx,
            &[ctx as i32, trailers.len() as i32],
        )?;
        if action == Action::Continue {
            if let Ok(st) = self.stream_mut(ctx) {
                st.live.response_trailers = false;
            }
        }
        Ok(action)
    }

    /// Ends a stream: `proxy_on_log` (Envoy's access-log phase: maps read-only),
    /// `proxy_on_done`, `proxy_on_delete`. Returns its final state.
    pub fn finish_stream(&mut self, ctx: u32) -> Result<StreamState, VmError> {
        let now = self.store.data().now_ns();
        let st = self.stream_mut(ctx)?;
        // What Envoy still holds (a part the plugin never continued) stays writable.
        st.phase = Phase::Log;
        st.request_complete_ns = Some(now);
        if let Some((headers, _)) = st.client_response.clone() {
            st.response_headers = headers;
        }
        self.call("proxy_on_log", ctx, &[ctx as i32])?;
        self.stream_mut(ctx)?.phase = Phase::Done;
        self.call("proxy_on_done", ctx, &[ctx as i32])?;
        self.call("proxy_on_delete", ctx, &[ctx as i32])?;
        let data = self.store.data_mut();
        // Envoy cancels the callouts of a destroyed context.
        data.pending.retain(|_, p| p.ctx != ctx);
        let st = data.streams.remove(&ctx).ok_or(VmError::NoStream(ctx))?;
        self.after_callback()?;
        Ok(st)
    }

    fn after_callback(&mut self) -> Result<(), VmError> {
        self.deliver_queue_ready()?;
        // Callouts answered with no delay are delivered as soon as the callback returns,
        // as Envoy's dispatcher would on its next loop iteration.
        let now = self.store.data().now_ns();
        self.run_until(now)
    }

    fn stream_blocked(&self, ctx: u32, response: bool) -> bool {
        match self.stream(ctx) {
            Some(s) => {
                s.local_response.is_none()
                    && !s.closed
                    && !(if response {
                        s.response_resumed
                    } else {
                        s.request_resumed
                    })
            }
            None => false,
        }
    }

    /// Drives a paused stream: fires pending callouts in virtual-time order until the
    /// stream is resumed or answered. `true` if it is still blocked (nothing left to fire).
    fn drive(&mut self, ctx: u32, response: bool) -> Result<bool, VmError> {
        // Give up after a minute of virtual time with nothing resolving the stream.
        let give_up = self.store.data().now_ns().saturating_add(60_000_000_000);
        for _ in 0..100_000 {
            if !self.stream_blocked(ctx, response) {
                return Ok(false);
            }
            match self.next_event_time() {
                Some(t) if t <= give_up => self.run_until(t)?,
                _ => return Ok(true),
            }
        }
        Ok(true)
    }

    /// Whether the stream goes on (no local reply, not closed).
    fn goes_on(&self, ctx: u32) -> bool {
        self.stream(ctx)
            .map(|s| s.local_response.is_none() && !s.closed)
            .unwrap_or(false)
    }

    /// Sends a callback's worth of data and, if the plugin paused where it must be resumed
    /// (headers, trailers, the last body chunk), drives the stream. `Ok(true)`: stuck.
    fn send_and_drive(
        &mut self,
        ctx: u32,
        response: bool,
        send: impl FnOnce(&mut Vm) -> Result<(Action, bool), VmError>,
    ) -> Result<bool, VmError> {
        if response {
            self.stream_mut(ctx)?.response_resumed = false;
        } else {
            self.stream_mut(ctx)?.request_resumed = false;
        }
        let (action, must_resume) = send(self)?;
        if action == Action::Pause && must_resume {
            let stuck = self.drive(ctx, response)?;
            if !stuck {
                // Resumed: what the plugin held goes on.
                let st = self.stream_mut(ctx)?;
                if response {
                    st.response_buffering = false;
                    st.pass_response_body();
                } else {
                    st.request_buffering = false;
                    st.pass_request_body();
                }
            }
            return Ok(stuck);
        }
        Ok(false)
    }

    /// Sends one request through the filter the way Envoy would: Envoy's request headers
    /// added (`x-forwarded-proto`, `x-request-id`); headers; the body in chunks of at most
    /// [`BODY_CHUNK`] bytes with end_of_stream false and then an empty end-of-stream chunk (or,
    /// if the filter held the headers, the whole body at once); trailers. A pause is driven by
    /// firing pending callouts (advancing the virtual clock) until the filter resumes or
    /// answers. Then the upstream's response the same way, then log/done/delete.
    pub fn request(&mut self, req: &HttpRequest) -> Result<Exchange, VmError> {
        let log_before = self.host.state().logs.len();
        let calls_before = self.host.state().http_calls.len();
        let ctx = self.open_stream(req)?;
        add_envoy_request_headers(&mut self.stream_mut(ctx)?.request_headers, ctx);
        let body = req.body.clone().unwrap_or_default();
        let has_body = !body.is_empty();
        let has_trailers = !req.trailers.is_empty();
        let headers_eos = !has_body && !has_trailers;
        let mut headers_held = false;
        let mut stuck = self.send_and_drive(ctx, false, |vm| {
            let a = vm.send_request_headers(ctx, headers_eos)?;
            headers_held = a == Action::Pause;
            Ok((a, true))
        })?;
        if !stuck && self.goes_on(ctx) && has_body {
            stuck = self.send_body(ctx, false, &body, headers_held, has_trailers)?;
        }
        if !stuck && self.goes_on(ctx) && has_trailers {
            let trailers = req.trailers.clone();
            stuck = self.send_and_drive(ctx, false, |vm| {
                Ok((vm.send_request_trailers(ctx, &trailers)?, true))
            })?;
        }
        let mut upstream = None;
        if !stuck && self.goes_on(ctx) {
            let up = req.upstream.clone();
            let st = self.stream_mut(ctx)?;
            st.pass_request_body();
            let mut seen = st.request_headers.clone();
            // The router's own header, which the upstream sees.
            seen.push(("x-envoy-expected-rq-timeout-ms".into(), "15000".into()));
            upstream = Some((
                seen,
                std::mem::take(&mut st.upstream_request_body),
                st.request_trailers.clone(),
            ));
            let up = match (up.forward, &upstream) {
                (Some(addr), Some((headers, body, trailers))) => {
                    self.forward_upstream(addr, headers, body, trailers)
                }
                _ => up,
            };
            let st = self.stream_mut(ctx)?;
            st.upstream_address = Some(up.address.clone());
            st.response_code_details = Some("via_upstream".into());
            let mut headers = up.headers.clone();
            if !up.body.is_empty()
                && crate::types::find_header(&headers, "content-length").is_none()
            {
                headers.push(("content-length".into(), up.body.len().to_string()));
            }
            // Added by Envoy's router to the upstream's response.
            headers.push(("x-envoy-upstream-service-time".into(), "0".into()));
            let status = up.status;
            let up_body = up.body.clone();
            let up_trailers = up.trailers.clone();
            let eos = up_body.is_empty() && up_trailers.is_empty();
            let mut held = false;
            stuck = self.send_and_drive(ctx, true, |vm| {
                let a = vm.send_response_headers(ctx, status, &headers, eos)?;
                held = a == Action::Pause;
                Ok((a, true))
            })?;
            if !stuck && self.goes_on(ctx) && !up_body.is_empty() {
                stuck = self.send_body(ctx, true, &up_body, held, !up_trailers.is_empty())?;
            }
            if !stuck && self.goes_on(ctx) && !up_trailers.is_empty() {
                stuck = self.send_and_drive(ctx, true, |vm| {
                    Ok((vm.send_response_trailers(ctx, &up_trailers)?, true))
                })?;
            }
            if !stuck {
                self.stream_mut(ctx)?.pass_response_body();
            }
        }
        let st = self.finish_stream(ctx)?;
        let (status, response_headers, response_body) = match &st.client_response {
            Some((headers, body)) => (
                crate::types::find_header(headers, ":status")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                headers.clone(),
                body.clone(),
            ),
            None => (
                crate::types::find_header(&st.response_headers, ":status")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(req.upstream.status),
                st.response_headers.clone(),
                st.client_response_body.clone(),
            ),
        };
        let mut response_headers: Headers = response_headers
            .into_iter()
            .filter(|(k, _)| k != ":status")
            .collect();
        // Envoy's HTTP/1.1 codec frames a response without a body: `content-length: 0`.
        if response_body.is_empty()
            && !response_headers
                .iter()
                .any(|(k, _)| k == "content-length" || k == "transfer-encoding")
        {
            response_headers.push(("content-length".into(), "0".into()));
        }
        let logs = {
            let s = self.host.state();
            s.logs
                .get(log_before..)
                .unwrap_or_default()
                .iter()
                .filter(|l| l.vm == self.index)
                .cloned()
                .collect()
        };
        let http_calls = {
            let s = self.host.state();
            s.http_calls
                .get(calls_before..)
                .unwrap_or_default()
                .iter()
                .filter(|c| c.vm == self.index)
                .cloned()
                .collect()
        };
        let answered = st.local_response.is_some();
        let (upstream_request_headers, upstream_request_body, upstream_request_trailers) =
            match upstream {
                Some((h, b, t)) if !stuck || answered => (Some(h), has_body.then_some(b), t),
                _ => (None, None, Vec::new()),
            };
        Ok(Exchange {
            context_id: ctx,
            status: if stuck && !answered { 0 } else { status },
            local_response: st.local_response.clone(),
            upstream_request_headers,
            upstream_request_body,
            upstream_request_trailers,
            response_headers,
            response_body,
            stuck,
            logs,
            http_calls,
        })
    }

    /// The answer of a real upstream to the request as the filter let it through; one that
    /// cannot be reached is Envoy's 503 (its router's local reply).
    fn forward_upstream(
        &self,
        addr: std::net::SocketAddr,
        headers: &Headers,
        body: &[u8],
        trailers: &Headers,
    ) -> crate::types::UpstreamResponse {
        let call = HttpCallRequest {
            vm: self.index,
            context_id: 0,
            token: 0,
            upstream: addr.to_string(),
            headers: headers.clone(),
            body: body.to_vec(),
            trailers: trailers.clone(),
            timeout: Duration::from_secs(15),
        };
        let (status, headers, body, trailers) = match crate::forward::forward(addr, &call) {
            Ok(r) => r,
            Err(err) => {
                self.store.data().log(
                    LogLevel::Warn,
                    "host",
                    format!("forward to upstream {addr} failed: {err}"),
                );
                envoy_reply(503, CONNECT_FAILURE_BODY)
            }
        };
        crate::types::UpstreamResponse {
            status,
            headers,
            body,
            trailers,
            address: addr.to_string(),
            forward: None,
        }
    }

    /// Delivers a body as Envoy's codec does: chunks with end_of_stream false, then an empty
    /// end-of-stream chunk (unless trailers follow); all at once if the plugin held the
    /// headers (the body arrived meanwhile and Envoy buffered it). `Ok(true)`: stuck.
    fn send_body(
        &mut self,
        ctx: u32,
        response: bool,
        body: &[u8],
        headers_held: bool,
        trailers_follow: bool,
    ) -> Result<bool, VmError> {
        let mut chunks: Vec<(&[u8], bool)> = Vec::new();
        if headers_held {
            chunks.push((body, !trailers_follow));
        } else {
            chunks.extend(body.chunks(BODY_CHUNK).map(|c| (c, false)));
            if !trailers_follow {
                chunks.push((&[], true));
            }
        }
        for (chunk, eos) in chunks {
            if !self.goes_on(ctx) {
                break;
            }
            let stuck = self.send_and_drive(ctx, response, |vm| {
                let a = if response {
                    vm.send_response_body(ctx, chunk, eos)?
                } else {
                    vm.send_request_body(ctx, chunk, eos)?
                };
                // A pause before the end buffers; Envoy keeps delivering data.
                Ok((a, eos))
            })?;
            if stuck {
                return Ok(true);
            }
        }
        Ok(false)
    }

    // ---- time, ticks, callouts, queues ----

    fn next_event_time(&self) -> Option<u64> {
        let d = self.store.data();
        let callouts = d.pending.values().map(|p| p.due_ns).min();
        match (callouts, d.next_tick_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances the (shared) virtual clock by `d`, firing this VM's ticks, callout answers
    /// and timeouts at their times, in order.
    pub fn advance(&mut self, d: Duration) -> Result<(), VmError> {
        let target = self
            .store
            .data()
            .now_ns()
            .saturating_add(d.as_nanos() as u64);
        self.run_until(target)
    }

    /// Fires whatever is due at the current virtual time (after [`Host::advance_clock`]),
    /// including `on_queue_ready` for queues this VM owns.
    pub fn run_due(&mut self) -> Result<(), VmError> {
        let now = self.store.data().now_ns();
        self.run_until(now)
    }

    /// Calls `proxy_on_tick` now, whatever the period.
    pub fn tick(&mut self) -> Result<(), VmError> {
        self.call("proxy_on_tick", ROOT_CONTEXT_ID, &[ROOT_CONTEXT_ID as i32])?;
        self.flush_local_replies()?;
        self.deliver_queue_ready()
    }

    /// Sends the local replies plugins asked for outside a stream callback (from a callout's
    /// answer, a tick, or a root context acting on a stream).
    fn flush_local_replies(&mut self) -> Result<(), VmError> {
        let pending: Vec<u32> = self
            .store
            .data()
            .streams
            .values()
            .filter(|s| s.local_reply_pending)
            .map(|s| s.id)
            .collect();
        for ctx in pending {
            self.send_pending_local_reply(ctx)?;
        }
        Ok(())
    }

    fn run_until(&mut self, target: u64) -> Result<(), VmError> {
        for _ in 0..1_000_000 {
            self.deliver_queue_ready()?;
            let next = match self.next_event_time() {
                Some(t) if t <= target => t,
                _ => break,
            };
            {
                let mut s = self.host.state();
                s.now_ns = s.now_ns.max(next);
            }
            let data = self.store.data();
            if data.next_tick_ns == Some(next) {
                let period = data.tick_period_ns;
                self.store.data_mut().next_tick_ns = Some(next + period.max(1));
                self.tick()?;
                continue;
            }
            let token = data
                .pending
                .iter()
                .find(|(_, p)| p.due_ns == next)
                .map(|(t, _)| *t);
            if let Some(token) = token {
                self.fire_callout(token)?;
            }
        }
        let mut s = self.host.state();
        s.now_ns = s.now_ns.max(target);
        Ok(())
    }

    fn fire_callout(&mut self, token: u32) -> Result<(), VmError> {
        let data = self.store.data_mut();
        let mut p = match data.pending.remove(&token) {
            Some(p) => p,
            None => return Ok(()),
        };
        let ctx = p.ctx;
        if ctx != ROOT_CONTEXT_ID && !data.streams.contains_key(&ctx) {
            return Ok(());
        }
        let t = token as i32;
        let c = ctx as i32;
        match &mut p.kind {
            PendingKind::Http { reply } => {
                let (nh, nb, nt) = match reply.take() {
                    Some((status, mut headers, body, trailers)) => {
                        headers.insert(0, (":status".into(), status.to_string()));
                        let n = (headers.len(), body.len(), trailers.len());
                        data.callback.http_headers = headers;
                        data.callback.http_body = body;
                        data.callback.http_trailers = trailers;
                        n
                    }
                    None => {
                        data.callback.http_headers.clear();
                        data.callback.http_body.clear();
                        data.callback.http_trailers.clear();
                        // Envoy's `onHttpCallFailure`: status BrokenConnection, "reset".
                        data.callback.status = (status::BROKEN_CONNECTION as u32, "reset".into());
                        (0, 0, 0)
                    }
                };
                self.call(
                    "proxy_on_http_call_response",
                    ctx,
                    &[c, t, nh as i32, nb as i32, nt as i32],
                )?;
                let d = self.store.data_mut();
                d.callback.http_headers.clear();
                d.callback.http_body.clear();
                d.callback.http_trailers.clear();
            }
            PendingKind::GrpcCall { reply } => match reply.take() {
                Some((0, _, message)) => {
                    let n = message.len() as i32;
                    data.callback.grpc_message = message;
                    self.call("proxy_on_grpc_receive", ctx, &[c, t, n])?;
                }
                Some((code, msg, _)) => {
                    data.callback.status = (code, msg);
                    self.call("proxy_on_grpc_close", ctx, &[c, t, code as i32])?;
                }
                None => {
                    // Envoy's gRPC client sees its HTTP stream's 504 and maps it: UNAVAILABLE.
                    data.callback.status = (14, String::new());
                    self.call("proxy_on_grpc_close", ctx, &[c, t, 14])?;
                }
            },
            PendingKind::GrpcStream { events } => {
                if let Some(ev) = events.pop_front() {
                    let more = !events.is_empty();
                    if more {
                        self.store
                            .data_mut()
                            .pending
                            .insert(token, p_clone_stream(&p));
                    }
                    let data = self.store.data_mut();
                    match ev {
                        GrpcEvent::InitialMetadata(h) => {
                            let n = h.len() as i32;
                            data.callback.grpc_metadata = h;
                            self.call("proxy_on_grpc_receive_initial_metadata", ctx, &[c, t, n])?;
                        }
                        GrpcEvent::Message(m) => {
                            let n = m.len() as i32;
                            data.callback.grpc_message = m;
                            self.call("proxy_on_grpc_receive", ctx, &[c, t, n])?;
                        }
                        GrpcEvent::TrailingMetadata(h) => {
                            let n = h.len() as i32;
                            data.callback.grpc_metadata = h;
                            self.call("proxy_on_grpc_receive_trailing_metadata", ctx, &[c, t, n])?;
                        }
                        GrpcEvent::Close(code, msg) => {
                            data.callback.status = (code, msg);
                            self.call("proxy_on_grpc_close", ctx, &[c, t, code as i32])?;
                        }
                    }
                }
            }
        }
        self.flush_local_replies()?;
        self.deliver_queue_ready()
    }

    fn deliver_queue_ready(&mut self) -> Result<(), VmError> {
        for _ in 0..10_000 {
            let note = {
                let mut s = self.host.state();
                let i = s
                    .queue_ready
                    .iter()
                    .position(|(vm, _, _)| *vm == self.index);
                i.map(|i| s.queue_ready.remove(i))
            };
            match note {
                Some((_, ctx, qid)) => {
                    self.call("proxy_on_queue_ready", ctx, &[ctx as i32, qid as i32])?;
                }
                None => break,
            }
        }
        Ok(())
    }
}

fn p_clone_stream(p: &Pending) -> Pending {
    match &p.kind {
        PendingKind::GrpcStream { events } => Pending {
            ctx: p.ctx,
            due_ns: p.due_ns,
            kind: PendingKind::GrpcStream {
                events: events.clone(),
            },
        },
        _ => Pending {
            ctx: p.ctx,
            due_ns: p.due_ns,
            kind: PendingKind::Http { reply: None },
        },
    }
}

fn instantiate(
    host: &Host,
    module: &WasmModule,
    options: &VmOptions,
    index: usize,
) -> Result<(Store<VmState>, Instance), VmError> {
    let unknown = module.unknown_imports();
    if !unknown.is_empty() {
        return Err(VmError::Load(format!(
            "the module imports functions this host does not provide: {}",
            unknown.join(", ")
        )));
    }
    // Envoy refuses a module that does not say which ABI it speaks.
    match module.abi_version().as_deref() {
        Some("0_2_0" | "0_2_1") => {}
        Some("0_1_0") => {
            return Err(VmError::Load(
                "the module speaks proxy-wasm ABI 0.1.0, which this host does not implement \
                 (Envoy still loads it)"
                    .into(),
            ))
        }
        Some(other) => {
            return Err(VmError::Load(format!(
                "the module exports proxy_abi_version_{other}, an ABI version Envoy does not \
                 know; Envoy refuses it"
            )))
        }
        None => {
            return Err(VmError::Load(
                "the module exports no proxy_abi_version_* function; Envoy refuses it \
                 (\"Wasm missing ABI version\")"
                    .into(),
            ))
        }
    }
    let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
    let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
    let clock = || VirtualClock(host.shared.clone());
    let wasi = wasmtime_wasi::WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .wall_clock(clock())
        .monotonic_clock(clock())
        .build_p1();
    let mut vm_properties = HashMap::new();
    vm_properties.insert(
        "plugin_name".to_owned(),
        options.plugin_name.as_bytes().to_vec(),
    );
    vm_properties.insert(
        "plugin_root_id".to_owned(),
        options.root_id.as_bytes().to_vec(),
    );
    vm_properties.insert("plugin_vm_id".to_owned(), options.vm_id.as_bytes().to_vec());
    for (k, v) in &options.properties {
        vm_properties.insert(k.clone(), v.clone());
    }
    let state = VmState {
        wasi,
        host: host.clone(),
        vm_index: index,
        vm_id: options.vm_id.clone(),
        root_ctx: ROOT_CONTEXT_ID,
        current_ctx: ROOT_CONTEXT_ID,
        next_ctx: ROOT_CONTEXT_ID + 1,
        plugin_config: options.plugin_configuration.clone(),
        vm_config: options.vm_configuration.clone(),
        vm_properties,
        streams: BTreeMap::new(),
        tick_period_ns: 0,
        next_tick_ns: None,
        pending: BTreeMap::new(),
        next_token: 1,
        callback: CallbackData::default(),
        done_called: false,
        stdout,
        stderr,
        stdout_seen: 0,
        stderr_seen: 0,
        memory: None,
        allocator: None,
    };
    let mut store = Store::new(host::engine(), state);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker()?
        .instantiate(&mut store, &module.module)
        .map_err(|e| VmError::Load(format!("instantiation failed: {e:?}")))?;
    // Looked up once: host functions need them on every call.
    let memory = instance.get_memory(&mut store, "memory");
    let allocator = ["proxy_on_memory_allocate", "malloc"]
        .into_iter()
        .find_map(|name| instance.get_func(&mut store, name))
        .and_then(|f| f.typed::<i32, i32>(&store).ok())
        .map(Arc::new);
    store.data_mut().memory = memory;
    store.data_mut().allocator = allocator;
    Ok((store, instance))
}

fn linker() -> Result<&'static Linker<VmState>, VmError> {
    static LINKER: OnceLock<Result<Linker<VmState>, String>> = OnceLock::new();
    LINKER
        .get_or_init(|| build_linker().map_err(|e| format!("{e:?}")))
        .as_ref()
        .map_err(|e| VmError::Load(e.clone()))
}

// ---- host functions ----

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

fn memory(c: &mut C<'_>) -> Option<Memory> {
    if let Some(m) = c.data().memory {
        return Some(m);
    }
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let m = memory(c)?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    m.data(&*c).get(start..end).map(<[u8]>::to_vec)
}

fn read_string(c: &mut C<'_>, ptr: i32, len: i32) -> Option<String> {
    read(c, ptr, len).map(|b| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> bool {
    match memory(c) {
        Some(m) => m.write(&mut *c, ptr as u32 as usize, bytes).is_ok(),
        None => false,
    }
}

fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into guest memory allocated with `proxy_on_memory_allocate` (or `malloc`),
/// and stores the pointer and size at `ptr_ptr` / `size_ptr`.
fn give(c: &mut C<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> R {
    // Like Envoy (`copyToPointerSize`): nothing to copy is a null pointer and size 0, which
    // the SDKs read as `None`.
    if bytes.is_empty() {
        if !write_u32(c, ptr_ptr, 0) || !write_u32(c, size_ptr, 0) {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
        return Ok(status::OK);
    }
    let alloc = match c.data().allocator.clone() {
        Some(f) => f,
        None => {
            let alloc = c
                .get_export("proxy_on_memory_allocate")
                .or_else(|| c.get_export("malloc"))
                .and_then(Extern::into_func);
            match alloc {
                Some(f) => Arc::new(f.typed::<i32, i32>(&*c)?),
                None => return Ok(status::INTERNAL_FAILURE),
            }
        }
    };
    let ptr = alloc.call(&mut *c, bytes.len() as i32)?;
    if ptr == 0 && !bytes.is_empty() {
        return Ok(status::INTERNAL_FAILURE);
    }
    if !write(c, ptr, bytes)
        || !write_u32(c, ptr_ptr, ptr as u32)
        || !write_u32(c, size_ptr, bytes.len() as u32)
    {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

macro_rules! get {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(status::INVALID_MEMORY_ACCESS),
        }
    };
}

fn build_linker() -> wasmtime::Result<Linker<VmState>> {
    let mut l: Linker<VmState> = Linker::new(host::engine());
    wasmtime_wasi::p1::add_to_linker_sync(&mut l, |s: &mut VmState| &mut s.wasi)?;
    let e = "env";

    l.func_wrap(
        e,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> R {
            let msg = get!(read_string(&mut c, ptr, len));
            c.data().log(LogLevel::from_i32(level), "proxy_log", msg);
            Ok(status::OK)
        },
    )?;
    l.func_wrap(e, "proxy_get_log_level", |mut c: C<'_>, ret: i32| -> R {
        let level = c.data().host.state().log_level as u32;
        get!(write_u32(&mut c, ret, level).then_some(()));
        Ok(status::OK)
    })?;
    l.func_wrap(
        e,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> R {
            let now = c.data().now_ns();
            get!(write(&mut c, ret, &now.to_le_bytes()).then_some(()));
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> R {
            let now = c.data().now_ns();
            let d = c.data_mut();
            d.tick_period_ns = u64::from(period as u32) * 1_000_000;
            d.next_tick_ns = (period != 0).then(|| now + d.tick_period_ns);
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, buffer: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> R {
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start.checked_add(max).is_none() {
                return Ok(status::BAD_ARGUMENT);
            }
            let bytes = match c.data().buffer(buffer) {
                // Past the end is nothing (a null pointer: `None`), as in Envoy.
                Some(b) => b
                    .get(start.min(b.len())..start.saturating_add(max).min(b.len()))
                    .unwrap_or_default()
                    .to_vec(),
                None => return Ok(status::NOT_FOUND),
            };
            give(&mut c, &bytes, ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, buffer: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            let data = get!(read(&mut c, ptr, len));
            match c.data_mut().buffer_mut(buffer) {
                Ok(b) => {
                    let (start, size) = (start as u32 as usize, size as u32 as usize);
                    // Envoy's rules: a write at 0 replaces the first `size` bytes, one at or
                    // past the end appends, and one inside the body is refused.
                    if start == 0 {
                        b.splice(..size.min(b.len()), data);
                    } else if start >= b.len() {
                        b.extend_from_slice(&data);
                    } else {
                        return Ok(status::BAD_ARGUMENT);
                    }
                    Ok(status::OK)
                }
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_get_buffer_status",
        |mut c: C<'_>, buffer: i32, len_ptr: i32, flags_ptr: i32| -> R {
            let len = match c.data().buffer(buffer) {
                Some(b) => b.len() as u32,
                None => return Ok(status::NOT_FOUND),
            };
            get!(
                (write_u32(&mut c, len_ptr, len) && write_u32(&mut c, flags_ptr, 0)).then_some(())
            );
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map: i32, ret_ptr: i32, ret_size: i32| -> R {
            // A map Envoy does not hold reads as empty (Envoy answers Ok with no pairs).
            let bytes = match c.data_mut().map_access(map, false) {
                Ok(m) if !m.is_empty() => crate::abi::serialize_map(m),
                Ok(_) => Vec::new(),
                Err(status::BAD_ARGUMENT | status::NOT_FOUND) if map_type::is_known(map) => {
                    Vec::new()
                }
                Err(code) => return Ok(code),
            };
            give(&mut c, &bytes, ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr: i32, len: i32| -> R {
            let bytes = get!(read(&mut c, ptr, len));
            let pairs = match crate::abi::deserialize_map(&bytes) {
                Some(p) => p,
                None => return Ok(status::SERIALIZATION_FAILURE),
            };
            match c.data_mut().map_access(map, true) {
                Ok(m) => {
                    *m = pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect();
                    Ok(status::OK)
                }
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_get_header_map_size",
        |mut c: C<'_>, map: i32, ret: i32| -> R {
            // Envoy answers the map's byte size (names + values), from the map it may change.
            let size = match c.data_mut().map_access(map, true) {
                Ok(m) => m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() as u32,
                Err(code) => return Ok(code),
            };
            get!(write_u32(&mut c, ret, size).then_some(()));
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_get_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> R {
            let key = get!(read_string(&mut c, kp, kl)).to_ascii_lowercase();
            let value = match c.data_mut().map_access(map, false) {
                Ok(m) => m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
                Err(code) => return Ok(code),
            };
            match value {
                Some(v) => give(&mut c, v.as_bytes(), ret_ptr, ret_size),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32| -> R {
            let key = get!(read_string(&mut c, kp, kl)).to_ascii_lowercase();
            match c.data_mut().map_access(map, true) {
                Ok(m) => {
                    m.retain(|(k, _)| *k != key);
                    Ok(status::OK)
                }
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            let key = get!(read_string(&mut c, kp, kl)).to_ascii_lowercase();
            let value = get!(read_string(&mut c, vp, vl));
            match c.data_mut().map_access(map, true) {
                Ok(m) => {
                    match m.iter().position(|(k, _)| *k == key) {
                        Some(i) => {
                            if let Some(slot) = m.get_mut(i) {
                                slot.1 = value;
                            }
                            let mut n = 0;
                            m.retain(|(k, _)| {
                                if *k == key {
                                    n += 1;
                                    n == 1
                                } else {
                                    true
                                }
                            });
                        }
                        None => m.push((key, value)),
                    }
                    Ok(status::OK)
                }
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_add_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            let key = get!(read_string(&mut c, kp, kl)).to_ascii_lowercase();
            let value = get!(read_string(&mut c, vp, vl));
            match c.data_mut().map_access(map, true) {
                Ok(m) => {
                    m.push((key, value));
                    Ok(status::OK)
                }
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> R {
            let raw = get!(read(&mut c, pp, pl));
            let path = property_path(&raw);
            match c.data().property(&path) {
                Ok(v) => give(&mut c, &v, ret_ptr, ret_size),
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> R {
            let raw = get!(read(&mut c, pp, pl));
            let value = get!(read(&mut c, vp, vl));
            let path = property_path(&raw);
            let d = c.data_mut();
            let ctx = d.current_ctx;
            match d.streams.get_mut(&ctx) {
                Some(s) => {
                    s.properties.insert(path, value);
                }
                None => {
                    d.vm_properties.insert(path, value);
                }
            }
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32, ret_cas: i32| -> R {
            let key = get!(read_string(&mut c, kp, kl));
            let entry = {
                let d = c.data();
                d.host
                    .state()
                    .shared_data
                    .get(&(d.vm_id.clone(), key))
                    .cloned()
            };
            match entry {
                Some((value, cas)) => {
                    let r = give(&mut c, &value, ret_ptr, ret_size)?;
                    if r != status::OK {
                        return Ok(r);
                    }
                    get!(write_u32(&mut c, ret_cas, cas).then_some(()));
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R {
            let key = get!(read_string(&mut c, kp, kl));
            let value = get!(read(&mut c, vp, vl));
            let d = c.data();
            let mut s = d.host.state();
            match host::set_shared(&mut s, &d.vm_id, &key, &value, cas as u32) {
                Ok(()) => Ok(status::OK),
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, ret: i32| -> R {
            let name = get!(read_string(&mut c, np, nl));
            let id = {
                let d = c.data();
                let mut s = d.host.state();
                match s
                    .queues
                    .iter_mut()
                    .position(|q| q.vm_id == d.vm_id && q.name == name)
                {
                    Some(i) => {
                        if let Some(q) = s.queues.get_mut(i) {
                            q.owner_vm = d.vm_index;
                            q.owner_ctx = d.current_ctx;
                        }
                        i as u32 + 1
                    }
                    None => {
                        s.queues.push(Queue {
                            vm_id: d.vm_id.clone(),
                            name,
                            owner_vm: d.vm_index,
                            owner_ctx: d.current_ctx,
                            items: VecDeque::new(),
                        });
                        s.queues.len() as u32
                    }
                }
            };
            get!(write_u32(&mut c, ret, id).then_some(()));
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> R {
            let vm_id = get!(read_string(&mut c, vp, vl));
            let name = get!(read_string(&mut c, np, nl));
            let id = c
                .data()
                .host
                .state()
                .queues
                .iter()
                .position(|q| q.vm_id == vm_id && q.name == name);
            match id {
                Some(i) => {
                    get!(write_u32(&mut c, ret, i as u32 + 1).then_some(()));
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ret_ptr: i32, ret_size: i32| -> R {
            let item = {
                let mut s = c.data().host.state();
                match (id as u32 as usize)
                    .checked_sub(1)
                    .and_then(|i| s.queues.get_mut(i))
                {
                    Some(q) => q.items.pop_front(),
                    None => return Ok(status::NOT_FOUND),
                }
            };
            match item {
                Some(v) => give(&mut c, &v, ret_ptr, ret_size),
                None => Ok(status::EMPTY),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, vp: i32, vl: i32| -> R {
            let value = get!(read(&mut c, vp, vl));
            let mut s = c.data().host.state();
            match host::enqueue(&mut s, id as u32, &value) {
                Ok(()) => Ok(status::OK),
                Err(code) => Ok(code),
            }
        },
    )?;
    fn resume(c: &mut C<'_>, which: i32) -> i32 {
        let d = c.data_mut();
        let ctx = d.current_ctx;
        match d.streams.get_mut(&ctx) {
            Some(s) => {
                match which {
                    0 => s.request_resumed = true,
                    1 => s.response_resumed = true,
                    _ => return status::BAD_ARGUMENT,
                }
                // Envoy lets go of the request's maps and body on a continue of either
                // direction (`Context::continueStream`).
                s.live.request_headers = false;
                s.live.request_body = false;
                s.live.request_trailers = false;
                status::OK
            }
            None => status::NOT_FOUND,
        }
    }
    l.func_wrap(
        e,
        "proxy_continue_stream",
        |mut c: C<'_>, which: i32| -> R { Ok(resume(&mut c, which)) },
    )?;
    l.func_wrap(e, "proxy_continue_request", |mut c: C<'_>| -> R {
        Ok(resume(&mut c, 0))
    })?;
    l.func_wrap(e, "proxy_continue_response", |mut c: C<'_>| -> R {
        Ok(resume(&mut c, 1))
    })?;
    l.func_wrap(e, "proxy_close_stream", |mut c: C<'_>, _which: i32| -> R {
        let d = c.data_mut();
        let ctx = d.current_ctx;
        match d.streams.get_mut(&ctx) {
            Some(s) => {
                s.closed = true;
                Ok(status::OK)
            }
            None => Ok(status::NOT_FOUND),
        }
    })?;
    l.func_wrap(e, "proxy_clear_route_cache", |_c: C<'_>| -> R {
        Ok(status::OK)
    })?;
    l.func_wrap(
        e,
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> R {
            let details = get!(read_string(&mut c, dp, dl));
            let body = get!(read(&mut c, bp, bl));
            let hbytes = get!(read(&mut c, hp, hl));
            let headers = match crate::abi::deserialize_map(&hbytes) {
                Some(h) => h
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
                None => return Ok(status::SERIALIZATION_FAILURE),
            };
            let d = c.data_mut();
            let ctx = d.current_ctx;
            match d.streams.get_mut(&ctx) {
                Some(s) => {
                    // Envoy sends the reply after the callback returns; a second one in the
                    // meantime finds the response already started and is dropped.
                    if s.local_response.is_none() {
                        s.local_response = Some(LocalResponse {
                            status: code as u32,
                            details,
                            headers,
                            body,
                            grpc_status: grpc,
                        });
                        s.local_reply_pending = true;
                    }
                    Ok(status::OK)
                }
                // Envoy accepts it and nothing happens (no stream to answer).
                None => Ok(status::OK),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         ret: i32|
         -> R {
            let upstream = get!(read_string(&mut c, up, ul));
            let hbytes = get!(read(&mut c, hp, hl));
            let body = get!(read(&mut c, bp, bl));
            let tbytes = get!(read(&mut c, tp, tl));
            let (headers, trailers) = match (
                crate::abi::deserialize_map(&hbytes),
                crate::abi::deserialize_map(&tbytes),
            ) {
                (Some(h), Some(t)) => (h, t),
                _ => return Ok(status::SERIALIZATION_FAILURE),
            };
            // Envoy requires :method, :path and :authority.
            for required in [":method", ":path", ":authority"] {
                if !headers.iter().any(|(k, _)| k == required) {
                    return Ok(status::BAD_ARGUMENT);
                }
            }
            let host = c.data().host.clone();
            let responder = match host.http_responder(&upstream) {
                Some(r) => r,
                None => {
                    c.data().log(
                        LogLevel::Warn,
                        "host",
                        format!("http_call to unknown cluster `{upstream}`"),
                    );
                    return Ok(status::BAD_ARGUMENT);
                }
            };
            if timeout < 0 {
                return Ok(status::BAD_ARGUMENT);
            }
            // What Envoy's async client adds to the request the upstream sees.
            let mut headers = headers;
            if !body.is_empty() {
                headers.retain(|(k, _)| k != "content-length");
                headers.push(("content-length".into(), body.len().to_string()));
            }
            headers.push(("x-envoy-internal".into(), "true".into()));
            let d = c.data_mut();
            let token = d.next_token;
            d.next_token += 1;
            let timeout = Duration::from_millis(u64::from(timeout as u32));
            let req = HttpCallRequest {
                vm: d.vm_index,
                context_id: d.current_ctx,
                token,
                upstream,
                headers,
                body,
                trailers,
                timeout,
            };
            host.state().http_calls.push(req.clone());
            let reply = responder(&req);
            let now = host.state().now_ns;
            let timeout_ns = timeout.as_nanos() as u64;
            let (reply, delay) = match reply {
                HttpReply::Respond {
                    status,
                    headers,
                    body,
                    trailers,
                    delay,
                } => {
                    let delay = delay.as_nanos() as u64;
                    if timeout_ns > 0 && delay >= timeout_ns {
                        (Some(envoy_reply(504, TIMEOUT_BODY)), timeout_ns)
                    } else {
                        (Some((status, headers, body, trailers)), delay)
                    }
                }
                HttpReply::Never => (
                    Some(envoy_reply(504, TIMEOUT_BODY)),
                    if timeout_ns > 0 {
                        timeout_ns
                    } else {
                        u64::MAX / 4
                    },
                ),
                HttpReply::Fail => (Some(envoy_reply(503, CONNECT_FAILURE_BODY)), 0),
                HttpReply::Reset => (None, 0),
                HttpReply::Forward(addr) => match crate::forward::forward(addr, &req) {
                    Ok(r) => (Some(r), 0),
                    Err(err) => {
                        c.data().log(
                            LogLevel::Warn,
                            "host",
                            format!("forward to {addr} failed: {err}"),
                        );
                        (Some(envoy_reply(503, CONNECT_FAILURE_BODY)), 0)
                    }
                },
            };
            let d = c.data_mut();
            d.pending.insert(
                token,
                Pending {
                    ctx: d.current_ctx,
                    due_ns: now.saturating_add(delay),
                    kind: PendingKind::Http { reply },
                },
            );
            get!(write_u32(&mut c, ret, token).then_some(()));
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_grpc_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         hp: i32,
         hl: i32,
         msgp: i32,
         msgl: i32,
         timeout: i32,
         ret: i32|
         -> R {
            let upstream = crate::abi::grpc_cluster(&get!(read(&mut c, up, ul)));
            let service = get!(read_string(&mut c, sp, sl));
            let method = get!(read_string(&mut c, mp, ml));
            let hbytes = get!(read(&mut c, hp, hl));
            let message = get!(read(&mut c, msgp, msgl));
            let metadata = match crate::abi::deserialize_map(&hbytes) {
                Some(h) => h,
                None => return Ok(status::SERIALIZATION_FAILURE),
            };
            let timeout = Duration::from_millis(u64::from(timeout as u32));
            let r = start_grpc(
                &mut c,
                upstream,
                service,
                method,
                metadata,
                message,
                Some(timeout),
                false,
            )?;
            match r {
                Ok(token) => {
                    get!(write_u32(&mut c, ret, token).then_some(()));
                    Ok(status::OK)
                }
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_grpc_stream",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         hp: i32,
         hl: i32,
         ret: i32|
         -> R {
            let upstream = crate::abi::grpc_cluster(&get!(read(&mut c, up, ul)));
            let service = get!(read_string(&mut c, sp, sl));
            let method = get!(read_string(&mut c, mp, ml));
            let hbytes = get!(read(&mut c, hp, hl));
            let metadata = match crate::abi::deserialize_map(&hbytes) {
                Some(h) => h,
                None => return Ok(status::SERIALIZATION_FAILURE),
            };
            let r = start_grpc(
                &mut c,
                upstream,
                service,
                method,
                metadata,
                Vec::new(),
                None,
                true,
            )?;
            match r {
                Ok(token) => {
                    get!(write_u32(&mut c, ret, token).then_some(()));
                    Ok(status::OK)
                }
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_grpc_send",
        |mut c: C<'_>, token: i32, mp: i32, ml: i32, end: i32| -> R {
            let message = get!(read(&mut c, mp, ml));
            let d = c.data();
            let mut s = d.host.state();
            let entry = s.grpc_sent.entry((d.vm_index, token as u32)).or_default();
            entry.0.push(message);
            entry.1 |= end != 0;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(e, "proxy_grpc_cancel", |mut c: C<'_>, token: i32| -> R {
        Ok(match c.data_mut().pending.remove(&(token as u32)) {
            Some(_) => status::OK,
            None => status::NOT_FOUND,
        })
    })?;
    l.func_wrap(e, "proxy_grpc_close", |c: C<'_>, token: i32| -> R {
        let d = c.data();
        let mut s = d.host.state();
        s.grpc_sent.entry((d.vm_index, token as u32)).or_default().1 = true;
        Ok(status::OK)
    })?;
    l.func_wrap(
        e,
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: i32, ret_ptr: i32, ret_size: i32| -> R {
            let (code, msg) = c.data().callback.status.clone();
            get!(write_u32(&mut c, code_ptr, code).then_some(()));
            give(&mut c, msg.as_bytes(), ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_set_effective_context",
        |mut c: C<'_>, ctx: i32| -> R {
            let d = c.data_mut();
            let ctx = ctx as u32;
            if ctx == d.root_ctx || d.streams.contains_key(&ctx) {
                d.current_ctx = ctx;
                Ok(status::OK)
            } else {
                Ok(status::BAD_ARGUMENT)
            }
        },
    )?;
    l.func_wrap(e, "proxy_done", |mut c: C<'_>| -> R {
        c.data_mut().done_called = true;
        Ok(status::OK)
    })?;
    l.func_wrap(
        e,
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, ap: i32, al: i32, ret_ptr: i32, ret_size: i32| -> R {
            let name = get!(read_string(&mut c, np, nl));
            let args = get!(read(&mut c, ap, al));
            let result = match c.data().host.foreign(&name) {
                Some(f) => f(&args),
                None if name == "verify_signature" => Ok(crate::foreign::verify_signature(&args)),
                None => Err(status::NOT_FOUND),
            };
            match result {
                Ok(bytes) => give(&mut c, &bytes, ret_ptr, ret_size),
                Err(code) => Ok(code),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, ret: i32| -> R {
            let name = get!(read_string(&mut c, np, nl));
            let kind = match MetricKind::from_i32(kind) {
                Some(k) => k,
                None => return Ok(status::BAD_ARGUMENT),
            };
            let id = host::define_metric(&mut c.data().host.state(), kind, &name);
            get!(write_u32(&mut c, ret, id).then_some(()));
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| -> R {
            let value = {
                let s = c.data().host.state();
                match s.metrics.get((id as u32 >> 2) as usize) {
                    Some(m) if m.metric.kind != MetricKind::Histogram => m.metric.value,
                    Some(_) => return Ok(status::BAD_ARGUMENT),
                    None => return Ok(status::NOT_FOUND),
                }
            };
            get!(write(&mut c, ret, &(value as u64).to_le_bytes()).then_some(()));
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        e,
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> R {
            let mut s = c.data().host.state();
            match s.metrics.get_mut((id as u32 >> 2) as usize) {
                Some(m) => {
                    let m = &mut m.metric;
                    match m.kind {
                        MetricKind::Counter => m.value = m.value.saturating_add(value),
                        MetricKind::Gauge => m.value = value,
                        MetricKind::Histogram => {
                            m.samples.push(value as u64);
                            m.value = m.value.saturating_add(value);
                        }
                    }
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        e,
        "proxy_increment_metric",
        |c: C<'_>, id: i32, offset: i64| -> R {
            let mut s = c.data().host.state();
            match s.metrics.get_mut((id as u32 >> 2) as usize) {
                Some(m) => {
                    let m = &mut m.metric;
                    match m.kind {
                        MetricKind::Counter if offset > 0 => {
                            m.value = m.value.saturating_add(offset)
                        }
                        MetricKind::Counter => return Ok(status::BAD_ARGUMENT),
                        MetricKind::Gauge => m.value = m.value.saturating_add(offset),
                        MetricKind::Histogram => return Ok(status::BAD_ARGUMENT),
                    }
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    Ok(l)
}

/// A response Envoy makes itself for a callout (timeout, connection failure).
fn envoy_reply(status: u16, body: &str) -> (u16, Headers, Vec<u8>, Headers) {
    let headers = vec![
        ("content-length".to_owned(), body.len().to_string()),
        ("content-type".to_owned(), "text/plain".to_owned()),
    ];
    (status, headers, body.as_bytes().to_vec(), Vec::new())
}

/// The path's NUL-separated segments joined by `.` (NUL is ASCII, so mapping it in place is
/// the same as splitting, decoding each segment and joining).
fn property_path(raw: &[u8]) -> String {
    let dotted: Vec<u8> = raw.iter().map(|&b| if b == 0 { b'.' } else { b }).collect();
    String::from_utf8(dotted).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[allow(clippy::too_many_arguments)]
fn start_grpc(
    c: &mut C<'_>,
    upstream: String,
    service: String,
    method: String,
    initial_metadata: Headers,
    message: Vec<u8>,
    timeout: Option<Duration>,
    streaming: bool,
) -> wasmtime::Result<Result<u32, i32>> {
    let host = c.data().host.clone();
    // Envoy resolves the cluster first: an unknown one is ParseFailure.
    if !host.has_cluster(&upstream) {
        c.data().log(
            LogLevel::Warn,
            "host",
            format!("grpc call to unknown cluster `{upstream}`"),
        );
        return Ok(Err(status::PARSE_FAILURE));
    }
    // A cluster with nothing serving the method answers like a gRPC server: UNIMPLEMENTED.
    let responder: crate::host::GrpcResponder =
        match host.grpc_responder(&upstream, &format!("{service}/{method}")) {
            Some(r) => r,
            None => Arc::new(|_: &GrpcRequest| GrpcReply::error(12, "")),
        };
    let d = c.data_mut();
    let token = d.next_token;
    d.next_token += 1;
    let req = GrpcRequest {
        vm: d.vm_index,
        context_id: d.current_ctx,
        token,
        upstream,
        service,
        method,
        initial_metadata,
        message,
        timeout,
        streaming,
    };
    host.state().grpc_calls.push(req.clone());
    let reply = responder(&req);
    let now = host.state().now_ns;
    let timeout_ns = timeout.map(|t| t.as_nanos() as u64).filter(|&t| t > 0);
    let (kind, delay) = match reply {
        GrpcReply::Never => {
            if streaming {
                return Ok(Ok(token));
            }
            (
                PendingKind::GrpcCall { reply: None },
                timeout_ns.unwrap_or(u64::MAX / 4),
            )
        }
        GrpcReply::Forward(addr) => {
            let reply = if streaming {
                Some((14, "streams cannot be forwarded".to_owned(), Vec::new()))
            } else {
                match crate::grpc_forward::call(addr, &req) {
                    Ok(r) => Some(r),
                    Err(err) => {
                        c.data().log(
                            LogLevel::Warn,
                            "host",
                            format!("gRPC forward to {addr} failed: {err}"),
                        );
                        Some((14, String::new(), Vec::new()))
                    }
                }
            };
            (PendingKind::GrpcCall { reply }, 0)
        }
        GrpcReply::Respond {
            status: code,
            status_message,
            initial_metadata,
            messages,
            trailing_metadata,
            close,
            delay,
        } => {
            let delay = delay.as_nanos() as u64;
            if streaming {
                let mut events = VecDeque::new();
                events.push_back(GrpcEvent::InitialMetadata(initial_metadata));
                for m in messages {
                    events.push_back(GrpcEvent::Message(m));
                }
                if close {
                    events.push_back(GrpcEvent::TrailingMetadata(trailing_metadata));
                    events.push_back(GrpcEvent::Close(code, status_message));
                }
                (PendingKind::GrpcStream { events }, delay)
            } else if timeout_ns.is_some_and(|t| delay >= t) {
                (
                    PendingKind::GrpcCall { reply: None },
                    timeout_ns.unwrap_or(0),
                )
            } else {
                let msg = messages.into_iter().next().unwrap_or_default();
                (
                    PendingKind::GrpcCall {
                        reply: Some((code, status_message, msg)),
                    },
                    delay,
                )
            }
        }
    };
    let d = c.data_mut();
    d.pending.insert(
        token,
        Pending {
            ctx: d.current_ctx,
            due_ns: now.saturating_add(delay),
            kind,
        },
    );
    Ok(Ok(token))
}

impl Host {
    /// Advances the shared virtual clock by `d`, firing the ticks, callout answers and
    /// timeouts of all `vms` interleaved in time order (each at its own time), as the
    /// workers of one Envoy would see them.
    pub fn advance(&self, vms: &mut [&mut Vm], d: Duration) -> Result<(), VmError> {
        let target = self.state().now_ns.saturating_add(d.as_nanos() as u64);
        for _ in 0..1_000_000 {
            for vm in vms.iter_mut() {
                vm.deliver_queue_ready()?;
            }
            let next = vms
                .iter()
                .enumerate()
                .filter_map(|(i, vm)| vm.next_event_time().map(|t| (t, i)))
                .filter(|(t, _)| *t <= target)
                .min();
            match next {
                Some((t, i)) => match vms.get_mut(i) {
                    Some(vm) => vm.run_until(t)?,
                    None => break,
                },
                None => break,
            }
        }
        let mut s = self.state();
        s.now_ns = s.now_ns.max(target);
        Ok(())
    }
}
