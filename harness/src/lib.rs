//! # portcullis-harness
//!
//! Portcullis's tooling on the generic proxy-wasm host [`proxy_wasm_host`] (re-exported here):
//! policy test cases through the real `.wasm` ([`cases`]), configuration bundling and test
//! tokens (from `portcullis-tools`), and the `portcullis` CLI. See `docs/harness.md`.
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

pub mod cases;
pub mod coverage;

pub use portcullis_tools::{bundle, locate, token};

// The generic proxy-wasm host (crate `proxy-wasm-host`), re-exported so Portcullis's tests and
// tools name one crate.
pub use proxy_wasm_host::{abi, engine, foreign, report, suite};
pub use proxy_wasm_host::{
    Action, Exchange, ForeignFunction, GrpcReply, GrpcRequest, Headers, Host, HttpCallRequest,
    HttpReply, HttpRequest, LocalResponse, LogEntry, LogLevel, Metric, MetricKind, StreamState,
    TlsInfo, TrapInfo, UpstreamResponse, Vm, VmError, VmOptions, WasmModule,
};
