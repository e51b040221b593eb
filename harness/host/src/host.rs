//! The proxy-wide state every VM of one simulated Envoy shares: shared data, shared queues,
//! metrics, the virtual clock, captured logs, scripted upstreams.

use crate::abi::{LogLevel, MetricKind};
use crate::types::{GrpcReply, GrpcRequest, HttpCallRequest, HttpReply, LogEntry, Metric};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Engine, Module};

/// Messages sent on one gRPC stream, and whether the plugin ended its side.
type GrpcSent = (Vec<Vec<u8>>, bool);
type HttpResponder = Arc<dyn Fn(&HttpCallRequest) -> HttpReply + Send + Sync>;
pub(crate) type GrpcResponder = Arc<dyn Fn(&GrpcRequest) -> GrpcReply + Send + Sync>;
/// A foreign function: arguments → result bytes, or a proxy-wasm status code.
pub type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, i32> + Send + Sync>;

/// One simulated Envoy: the state its worker VMs share. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Host {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) responders: Mutex<Responders>,
}

#[derive(Default)]
pub(crate) struct Responders {
    pub(crate) http: Vec<(String, HttpResponder)>,
    /// (cluster or `None` for any, `service/method` or `*`, responder).
    pub(crate) grpc: Vec<(Option<String>, String, GrpcResponder)>,
    pub(crate) foreign: HashMap<String, ForeignFunction>,
    /// Clusters declared with [`Host::add_cluster`] (besides those named by HTTP responders).
    pub(crate) clusters: Vec<String>,
}

pub(crate) struct Queue {
    pub(crate) vm_id: String,
    pub(crate) name: String,
    pub(crate) owner_vm: usize,
    pub(crate) owner_ctx: u32,
    pub(crate) items: VecDeque<Vec<u8>>,
}

pub(crate) struct MetricSlot {
    pub(crate) metric: Metric,
}

pub(crate) struct State {
    pub(crate) now_ns: u64,
    next_cas: u32,
    pub(crate) shared_data: HashMap<(String, String), (Vec<u8>, u32)>,
    pub(crate) metrics: Vec<MetricSlot>,
    pub(crate) metric_by_name: HashMap<String, usize>,
    pub(crate) queues: Vec<Queue>,
    /// (owner VM, owner context, queue id) waiting for `proxy_on_queue_ready`.
    pub(crate) queue_ready: Vec<(usize, u32, u32)>,
    pub(crate) logs: Vec<LogEntry>,
    pub(crate) log_level: LogLevel,
    pub(crate) next_vm: usize,
    pub(crate) http_calls: Vec<HttpCallRequest>,
    pub(crate) grpc_calls: Vec<GrpcRequest>,
    /// Messages sent on gRPC streams: (vm, token) → messages, and whether end_stream was sent.
    pub(crate) grpc_sent: BTreeMap<(usize, u32), GrpcSent>,
}

impl State {
    pub(crate) fn next_cas(&mut self) -> u32 {
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        self.next_cas
    }

    pub(crate) fn log(&mut self, entry: LogEntry) {
        if entry.level >= self.log_level || entry.source != "proxy_log" {
            self.logs.push(entry);
        }
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Host {
    /// A new simulated proxy. The virtual clock starts at the real time.
    pub fn new() -> Host {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Host {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    now_ns: now,
                    next_cas: 0,
                    shared_data: HashMap::new(),
                    metrics: Vec::new(),
                    metric_by_name: HashMap::new(),
                    queues: Vec::new(),
                    queue_ready: Vec::new(),
                    logs: Vec::new(),
                    // Envoy's default (`--log-level info`): `proxy_get_log_level` answers 2.
                    log_level: LogLevel::Info,
                    next_vm: 0,
                    http_calls: Vec::new(),
                    grpc_calls: Vec::new(),
                    grpc_sent: BTreeMap::new(),
                }),
                responders: Mutex::new(Responders::default()),
            }),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    // ---- virtual clock ----

    /// The virtual time `proxy_get_current_time_nanoseconds` (and WASI's clock) return.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.state().now_ns)
    }
    pub fn now_unix_seconds(&self) -> u64 {
        self.state().now_ns / 1_000_000_000
    }
    /// Sets the clock. It may go backwards (unlike [`crate::Vm::advance`]); nothing fires.
    pub fn set_time(&self, t: SystemTime) {
        self.state().now_ns = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    }
    pub fn set_unix_seconds(&self, secs: u64) {
        self.state().now_ns = secs.saturating_mul(1_000_000_000);
    }
    /// Moves the clock forward without firing anything; a VM fires its due ticks and
    /// callouts when you call [`crate::Vm::advance`] or [`crate::Vm::run_due`].
    pub fn advance_clock(&self, d: Duration) {
        let mut s = self.state();
        s.now_ns = s.now_ns.saturating_add(d.as_nanos() as u64);
    }

    // ---- logs ----

    /// Every captured log line so far, all VMs.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.state().logs.clone()
    }
    pub fn log_messages(&self) -> Vec<String> {
        self.state()
            .logs
            .iter()
            .map(|l| l.message.clone())
            .collect()
    }
    /// Whether some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.state().logs.iter().any(|l| l.message.contains(needle))
    }
    pub fn clear_logs(&self) {
        self.state().logs.clear();
    }
    /// Lines below `level` from `proxy_log` are dropped (and `proxy_get_log_level` reports it).
    pub fn set_log_level(&self, level: LogLevel) {
        self.state().log_level = level;
    }

    // ---- shared data ----

    /// A shared-data entry of the VMs with the default (empty) vm_id.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared_data_in("", key)
    }
    pub fn shared_data_in(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.state()
            .shared_data
            .get(&(vm_id.to_owned(), key.to_owned()))
            .cloned()
    }
    /// Writes shared data with Envoy's CAS rules (0 = unconditional). Err(()) on CAS mismatch.
    pub fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), String> {
        let mut s = self.state();
        set_shared(&mut s, "", key, value, cas).map_err(|_| format!("CAS mismatch on `{key}`"))
    }
    pub fn shared_data_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .state()
            .shared_data
            .keys()
            .map(|(_, k)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    // ---- metrics ----

    /// A metric by the name the plugin defined it with.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        let s = self.state();
        s.metric_by_name
            .get(name)
            .and_then(|&i| s.metrics.get(i))
            .map(|m| m.metric.clone())
    }
    /// A counter's or gauge's value (0 if never defined).
    pub fn metric_value(&self, name: &str) -> i64 {
        self.metric(name).map(|m| m.value).unwrap_or(0)
    }
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        self.state()
            .metrics
            .iter()
            .map(|m| (m.metric.name.clone(), m.metric.clone()))
            .collect()
    }

    // ---- shared queues ----

    /// Enqueues onto a queue a plugin registered (like another VM would); its owner gets
    /// `on_queue_ready` on its next [`crate::Vm::run_due`]. Err if no such queue.
    pub fn enqueue(&self, vm_id: &str, name: &str, data: &[u8]) -> Result<(), String> {
        let mut s = self.state();
        let id = s
            .queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .ok_or_else(|| format!("no queue `{name}` in vm_id `{vm_id}`"))?;
        enqueue(&mut s, id as u32 + 1, data)
            .map_err(|code| format!("enqueue failed: status {code}"))
    }
    /// Dequeues from a queue a plugin registered (`None` if absent or empty).
    pub fn dequeue(&self, vm_id: &str, name: &str) -> Option<Vec<u8>> {
        let mut s = self.state();
        let q = s
            .queues
            .iter_mut()
            .find(|q| q.vm_id == vm_id && q.name == name)?;
        q.items.pop_front()
    }

    // ---- scripted upstreams ----

    /// Answers `proxy_http_call`s to cluster `upstream` (`"*"` = any cluster) with `f`.
    /// Later registrations take precedence. A call to a cluster nobody answers fails with
    /// BadArgument, as Envoy does for an unknown cluster.
    pub fn on_http_call(
        &self,
        upstream: &str,
        f: impl Fn(&HttpCallRequest) -> HttpReply + Send + Sync + 'static,
    ) {
        lock(&self.shared.responders)
            .http
            .insert(0, (upstream.to_owned(), Arc::new(f)));
    }
    /// Declares a cluster, as Envoy's configuration would: gRPC calls name a cluster, and
    /// one Envoy does not know fails with ParseFailure (4) before any responder is asked.
    /// Clusters named by [`Host::on_http_call`] are declared too; a `"*"` HTTP responder
    /// declares every cluster.
    pub fn add_cluster(&self, name: &str) {
        let mut r = lock(&self.shared.responders);
        if !r.clusters.iter().any(|c| c == name) {
            r.clusters.push(name.to_owned());
        }
    }
    pub(crate) fn has_cluster(&self, name: &str) -> bool {
        let r = lock(&self.shared.responders);
        r.clusters.iter().any(|c| c == name || c == "*")
            || r.http.iter().any(|(u, _)| u == name || u == "*")
    }
    /// Answers gRPC calls and streams to `service/method` (`"*"` = any) on any declared
    /// cluster (see [`Host::add_cluster`]).
    pub fn on_grpc(
        &self,
        service_method: &str,
        f: impl Fn(&GrpcRequest) -> GrpcReply + Send + Sync + 'static,
    ) {
        lock(&self.shared.responders)
            .grpc
            .insert(0, (None, service_method.to_owned(), Arc::new(f)));
    }
    /// Answers gRPC calls and streams to `service/method` (`"*"` = any) on `cluster` only,
    /// and declares the cluster.
    pub fn on_grpc_in(
        &self,
        cluster: &str,
        service_method: &str,
        f: impl Fn(&GrpcRequest) -> GrpcReply + Send + Sync + 'static,
    ) {
        self.add_cluster(cluster);
        lock(&self.shared.responders).grpc.insert(
            0,
            (
                Some(cluster.to_owned()),
                service_method.to_owned(),
                Arc::new(f),
            ),
        );
    }
    /// Registers a foreign function besides the built-in `verify_signature`.
    pub fn register_foreign_function(
        &self,
        name: &str,
        f: impl Fn(&[u8]) -> Result<Vec<u8>, i32> + Send + Sync + 'static,
    ) {
        lock(&self.shared.responders)
            .foreign
            .insert(name.to_owned(), Arc::new(f));
    }
    /// Every `proxy_http_call` made so far, all VMs.
    pub fn http_calls(&self) -> Vec<HttpCallRequest> {
        self.state().http_calls.clone()
    }
    pub fn grpc_calls(&self) -> Vec<GrpcRequest> {
        self.state().grpc_calls.clone()
    }
    /// Messages a VM sent on a gRPC stream, and whether it ended its side.
    pub fn grpc_sent(&self, vm: usize, token: u32) -> (Vec<Vec<u8>>, bool) {
        self.state()
            .grpc_sent
            .get(&(vm, token))
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn http_responder(&self, upstream: &str) -> Option<HttpResponder> {
        lock(&self.shared.responders)
            .http
            .iter()
            .find(|(u, _)| u == upstream || u == "*")
            .map(|(_, f)| f.clone())
    }
    pub(crate) fn grpc_responder(
        &self,
        cluster: &str,
        service_method: &str,
    ) -> Option<GrpcResponder> {
        lock(&self.shared.responders)
            .grpc
            .iter()
            .find(|(c, m, _)| {
                c.as_deref().is_none_or(|c| c == cluster) && (m == service_method || m == "*")
            })
            .map(|(_, _, f)| f.clone())
    }
    pub(crate) fn foreign(&self, name: &str) -> Option<ForeignFunction> {
        lock(&self.shared.responders).foreign.get(name).cloned()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn set_shared(
    s: &mut State,
    vm_id: &str,
    key: &str,
    value: &[u8],
    cas: u32,
) -> Result<(), i32> {
    let k = (vm_id.to_owned(), key.to_owned());
    if let Some((_, current)) = s.shared_data.get(&k) {
        if cas != 0 && cas != *current {
            return Err(crate::abi::status::CAS_MISMATCH);
        }
    }
    let next = s.next_cas();
    s.shared_data.insert(k, (value.to_vec(), next));
    Ok(())
}

pub(crate) fn enqueue(s: &mut State, queue_id: u32, data: &[u8]) -> Result<(), i32> {
    let idx = (queue_id as usize)
        .checked_sub(1)
        .ok_or(crate::abi::status::NOT_FOUND)?;
    let q = s.queues.get_mut(idx).ok_or(crate::abi::status::NOT_FOUND)?;
    q.items.push_back(data.to_vec());
    let note = (q.owner_vm, q.owner_ctx, queue_id);
    if !s.queue_ready.contains(&note) {
        s.queue_ready.push(note);
    }
    Ok(())
}

pub(crate) fn define_metric(s: &mut State, kind: MetricKind, name: &str) -> u32 {
    let idx = match s.metric_by_name.get(name) {
        Some(&i) => i,
        None => {
            s.metrics.push(MetricSlot {
                metric: Metric {
                    name: name.to_owned(),
                    kind,
                    value: 0,
                    samples: Vec::new(),
                },
            });
            let i = s.metrics.len() - 1;
            s.metric_by_name.insert(name.to_owned(), i);
            i
        }
    };
    // Like Envoy, the metric type lives in the id's low bits.
    ((idx as u32) << 2) | kind as u32
}

// ---- compiled-module cache ----

/// How often the engine's epoch advances (the granularity of callback timeouts).
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(100);

/// The process-wide engine (cranelift, wasm backtraces with names).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(64));
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
        // A plugin stuck in a loop is interrupted (see `VmOptions::callback_timeout`).
        config.epoch_interruption(true);
        // `perf record` can name the plugin's functions (docs/harness.md, Profiling).
        if std::env::var_os("PORTCULLIS_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).unwrap_or_else(|_| Engine::default());
        let ticker = engine.clone();
        let _ = std::thread::Builder::new()
            .name("portcullis-harness-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                ticker.increment_epoch();
            });
        engine
    })
}

/// A compiled plugin. Cheap to clone; instantiate it with [`crate::Vm::start`].
#[derive(Clone)]
pub struct WasmModule {
    pub(crate) module: Module,
    pub(crate) path: Option<PathBuf>,
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmModule")
            .field("path", &self.path)
            .finish()
    }
}

impl WasmModule {
    /// Compiles a `.wasm` file once per (path, mtime, size) in this process.
    pub fn load(path: impl AsRef<Path>) -> Result<WasmModule, crate::VmError> {
        type Cache = Mutex<HashMap<PathBuf, (SystemTime, u64, Module)>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let path = path.as_ref();
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let meta = std::fs::metadata(&canonical)
            .map_err(|e| crate::VmError::Load(format!("cannot read {}: {e}", path.display())))?;
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some((t, len, m)) = lock(cache).get(&canonical) {
            if *t == mtime && *len == meta.len() {
                return Ok(WasmModule {
                    module: m.clone(),
                    path: Some(canonical),
                });
            }
        }
        let bytes = std::fs::read(&canonical)
            .map_err(|e| crate::VmError::Load(format!("cannot read {}: {e}", path.display())))?;
        let module = match disk_cache::load(&bytes) {
            Some(m) => m,
            None => {
                let m = Module::new(engine(), &bytes).map_err(|e| {
                    crate::VmError::Load(format!("cannot compile {}: {e:?}", path.display()))
                })?;
                disk_cache::store(&bytes, &m);
                m
            }
        };
        lock(cache).insert(canonical.clone(), (mtime, meta.len(), module.clone()));
        Ok(WasmModule {
            module,
            path: Some(canonical),
        })
    }

    /// Compiles wasm bytes (not cached).
    pub fn from_bytes(bytes: &[u8]) -> Result<WasmModule, crate::VmError> {
        let module = Module::new(engine(), bytes)
            .map_err(|e| crate::VmError::Load(format!("cannot compile module: {e:?}")))?;
        Ok(WasmModule { module, path: None })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The proxy-wasm ABI the module declares with its `proxy_abi_version_*` export
    /// (e.g. `0_2_1`), if any.
    pub fn abi_version(&self) -> Option<String> {
        self.module.exports().find_map(|e| {
            e.name()
                .strip_prefix("proxy_abi_version_")
                .map(str::to_owned)
        })
    }

    /// Imports the module needs that the harness does not provide (`module::name`).
    pub fn unknown_imports(&self) -> Vec<String> {
        self.module
            .imports()
            .filter(|i| match i.module() {
                "env" => !crate::abi::HOST_FUNCTIONS.contains(&i.name()),
                "wasi_snapshot_preview1" | "wasi_unstable" => false,
                _ => true,
            })
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect()
    }
}

/// An on-disk cache of compiled modules, so each `portcullis` process doesn't recompile the
/// filter with cranelift: `$PORTCULLIS_HARNESS_CACHE` (`off` disables), else
/// `$XDG_CACHE_HOME/portcullis-harness`, else `~/.cache/portcullis-harness`. Entries are keyed by
/// the SHA-256 of the wasm bytes and the engine's compatibility hash.
mod disk_cache {
    use sha2::{Digest, Sha256};
    use std::hash::{Hash, Hasher};
    use std::path::PathBuf;
    use wasmtime::Module;

    fn dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("PORTCULLIS_HARNESS_CACHE") {
            if d == "off" {
                return None;
            }
            return Some(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(d).join("portcullis-harness"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/portcullis-harness"))
    }

    fn entry(bytes: &[u8]) -> Option<PathBuf> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        super::engine().precompile_compatibility_hash().hash(&mut h);
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(dir()?.join(format!("{hex}-{:016x}.cwasm", h.finish())))
    }

    pub(super) fn load(bytes: &[u8]) -> Option<Module> {
        let path = entry(bytes)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the file is one this cache wrote (`store`) in the user's own cache
        // directory, named by the hash of the source wasm and of the engine's settings;
        // wasmtime additionally checks its header for version and configuration compatibility.
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize_file(super::engine(), &path) };
        module.ok()
    }

    pub(super) fn store(bytes: &[u8], module: &Module) {
        let (Some(path), Ok(serialized)) = (entry(bytes), module.serialize()) else {
            return;
        };
        let Some(parent) = path.parent() else { return };
        if std::fs::create_dir_all(parent).is_err() {
            return;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, serialized).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        prune(parent);
    }

    /// Keeps the 8 most recently written entries.
    fn prune(dir: &std::path::Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (_, p) in files.into_iter().skip(8) {
            let _ = std::fs::remove_file(p);
        }
    }
}
