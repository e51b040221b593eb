//! # portcullis-harness
//!
//! A faithful proxy-wasm (ABI 0.2.1) host on wasmtime, for testing proxy-wasm plugins the way
//! Envoy runs them: one [`Host`] is one proxy (shared data, shared queues, metrics, a virtual
//! clock, captured logs, scripted upstreams); each [`Vm`] is one worker thread's instance of the
//! plugin. See `docs/harness.md`.
//!
//! ```no_run
//! use portcullis_harness::{Host, HttpReply, HttpRequest, Vm, VmOptions, WasmModule};
//! let host = Host::new();
//! host.on_http_call("jwks", |_req| HttpReply::ok(r#"{"keys":[]}"#));
//! let module = WasmModule::load("target/wasm32-wasip1/release/portcullis_filter.wasm").unwrap();
//! let mut vm = Vm::start(&host, &module, VmOptions::new(r#"{"policy":{}}"#)).unwrap();
//! let ex = vm.request(&HttpRequest::get("/admin").header("x-tenant", "acme")).unwrap();
//! assert_eq!(ex.status, 403);
//! ```

pub mod abi;
pub mod cases;
pub mod foreign;
mod forward;
mod host;
mod types;
mod vm;

pub use portcullis_tools::{bundle, locate, token};

pub use abi::{Action, Headers, LogLevel, MetricKind};
pub use host::{engine, ForeignFunction, Host, WasmModule};
pub use types::{
    Exchange, GrpcReply, GrpcRequest, HttpCallRequest, HttpReply, HttpRequest, LocalResponse,
    LogEntry, Metric, TlsInfo, UpstreamResponse,
};
pub use vm::{StreamState, TrapInfo, Vm, VmError, VmOptions};
