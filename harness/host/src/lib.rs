//! # proxy-wasm-host
//!
//! A proxy-wasm (ABI 0.2.1) host on wasmtime, for testing any proxy-wasm plugin the way Envoy
//! runs it: one [`Host`] is one proxy (shared data, shared queues, metrics, a virtual clock,
//! captured logs, scripted or forwarded upstreams and callouts); each [`Vm`] is one worker
//! thread's instance of the plugin. Envoy's rules are enforced (phase rules for header maps,
//! bodies and properties; callout failures delivered as Envoy delivers them; bodies in chunks;
//! local replies through the filter's response callbacks), and where emulation stops, the
//! plugin gets an error status, never a silent success. See `docs/harness.md`.
//!
//! This crate knows nothing about Portcullis: the `portcullis` CLI (crate
//! `portcullis-harness`) is one user of it.
//!
//! ```no_run
//! use proxy_wasm_host::{Host, HttpReply, HttpRequest, Vm, VmOptions, WasmModule};
//! let host = Host::new();
//! host.on_http_call("auth", |_req| HttpReply::ok("yes"));
//! let module = WasmModule::load("my_filter.wasm").unwrap();
//! let mut vm = Vm::start(&host, &module, VmOptions::new("any configuration bytes")).unwrap();
//! let ex = vm.request(&HttpRequest::get("/admin").header("x-tenant", "acme")).unwrap();
//! assert_eq!(ex.status, 200);
//! ```

pub mod abi;
pub mod foreign;
mod forward;
mod grpc_forward;
mod host;
mod properties;
pub mod report;
pub mod suite;
mod types;
mod vm;

pub use abi::{Action, Headers, LogLevel, MetricKind};
pub use host::{engine, ForeignFunction, Host, WasmModule};
pub use types::{
    Exchange, GrpcReply, GrpcRequest, HttpCallRequest, HttpReply, HttpRequest, LocalResponse,
    LogEntry, Metric, TlsInfo, UpstreamResponse, CONNECT_FAILURE_BODY, TIMEOUT_BODY,
};
pub use vm::{
    http_to_grpc_status, Live, Phase, StreamState, TrapInfo, Vm, VmError, VmOptions, BODY_CHUNK,
};
