//! A probe filter: what it does is chosen per request by the header `x-probe` (a
//! comma-separated list of actions), and it logs what the host answered, one `probe: ...`
//! line at a time, at info level. The same requests through the harness and through Envoy
//! must log the same lines (envoy-examples/tests/host_differential_e2e_test.py).
//!
//! Actions: `phase` (touch maps and properties of the other phase), `body` (body
//! callbacks: sizes, a read past the end, a write inside the body), `append` (append to the
//! body at its end),
//! `buffer` (buffer the body until its end), `trailers` (add a request trailer at the end of
//! the body), `local` (a local reply), `local-twice` (two; the first must win),
//! `callout=CLUSTER` / `callout-timeout=CLUSTER` (an HTTP callout, 1 s / 50 ms timeout),
//! `grpc=CLUSTER` / `grpc-timeout=CLUSTER` (a gRPC call to `probe.Probe/Echo`, 1 s / 50 ms
//! timeout), `props`
//! (stream properties), `metrics` (a counter, a gauge and a histogram), `shared` (shared data
//! and its CAS), `level` (the log level).
//!
//! Host calls whose status the probe reports go through the raw ABI: the SDK panics on
//! statuses it does not expect (BadArgument among them), which is part of what is probed.
#![allow(unsafe_code)]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

mod raw {
    extern "C" {
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            ret: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_len: usize,
            ret: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max: usize,
            ret: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer: u32,
            start: usize,
            size: usize,
            data: *const u8,
            data_len: usize,
        ) -> u32;
        pub fn proxy_get_log_level(level: *mut u32) -> u32;
    }

    /// Takes ownership of host-allocated bytes (`None` for a null pointer).
    fn owned(ptr: *mut u8, len: usize) -> Option<Vec<u8>> {
        if ptr.is_null() {
            return None;
        }
        // SAFETY: the host allocated `len` bytes at `ptr` with the module's allocator.
        Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
    }

    pub fn map_value(map: u32, key: &str) -> (u32, Option<Vec<u8>>) {
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0);
        // SAFETY: valid pointers to locals and to `key`.
        let status =
            unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut ptr, &mut len) };
        (status, owned(ptr, len))
    }

    pub fn add_map_value(map: u32, key: &str, value: &str) -> u32 {
        // SAFETY: valid pointers to `key` and `value`.
        unsafe {
            proxy_add_header_map_value(map, key.as_ptr(), key.len(), value.as_ptr(), value.len())
        }
    }

    pub fn property(path: &str) -> (u32, Option<Vec<u8>>) {
        let encoded: Vec<u8> = path
            .bytes()
            .map(|b| if b == b'.' { 0 } else { b })
            .collect();
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0);
        // SAFETY: valid pointers to locals and to `encoded`.
        let status =
            unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut ptr, &mut len) };
        (status, owned(ptr, len))
    }

    pub fn buffer(buffer: u32, start: usize, max: usize) -> (u32, Option<Vec<u8>>) {
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0);
        // SAFETY: valid pointers to locals.
        let status = unsafe { proxy_get_buffer_bytes(buffer, start, max, &mut ptr, &mut len) };
        (status, owned(ptr, len))
    }

    pub fn set_buffer(buffer: u32, start: usize, size: usize, data: &[u8]) -> u32 {
        // SAFETY: valid pointer to `data`.
        unsafe { proxy_set_buffer_bytes(buffer, start, size, data.as_ptr(), data.len()) }
    }

    pub fn log_level() -> (u32, u32) {
        let mut level = 0;
        // SAFETY: valid pointer to a local.
        let status = unsafe { proxy_get_log_level(&mut level) };
        (status, level)
    }
}

const REQUEST_HEADERS: u32 = 0;
const REQUEST_TRAILERS: u32 = 1;
const RESPONSE_HEADERS: u32 = 2;
const REQUEST_BODY: u32 = 0;
const RESPONSE_BODY: u32 = 1;

fn log(message: String) {
    proxy_wasm::hostcalls::log(LogLevel::Info, &format!("probe: {message}")).ok();
}

/// A value as the probe reports it: text if it is printable, else its length.
fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "none".into(),
        Some(b) if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') => {
            format!("{:?}", String::from_utf8_lossy(b))
        }
        Some(b) => format!("{} bytes", b.len()),
    }
}

/// Stream properties whose values are the same in the harness and in Envoy for the same
/// request; the rest are reported by status and size only (times, ids, ports).
const STABLE_PROPERTIES: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.query",
    "request.host",
    "request.scheme",
    "request.method",
    "request.useragent",
    "request.headers.x-probe",
    "request.protocol",
    "request",
    "connection.mtls",
    "connection.requested_server_name",
    "response.code",
    "response.code_details",
    "response.headers.x-upstream",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
    "source.address",
];
const VOLATILE_PROPERTIES: &[&str] = &[
    "request.time",
    "request.duration",
    "request.id",
    "request.size",
    "request.total_size",
    "request.headers",
    "connection.id",
    "upstream.address",
    "upstream.port",
    "response.size",
    "source.port",
    "destination.port",
];

fn log_properties(when: &str) {
    for p in STABLE_PROPERTIES {
        let (status, v) = raw::property(p);
        let shown = if p.ends_with(".code") || *p == "connection.mtls" {
            match &v {
                Some(b) if b.len() == 8 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    i64::from_le_bytes(a).to_string()
                }
                Some(b) if b.len() == 1 => (b.first().copied().unwrap_or(0) != 0).to_string(),
                _ => show(&v),
            }
        } else {
            show(&v)
        };
        log(format!("{when} property {p}: status {status} {shown}"));
    }
    for p in VOLATILE_PROPERTIES {
        let (status, v) = raw::property(p);
        log(format!(
            "{when} property {p}: status {status} {}",
            if v.is_some() { "some" } else { "none" }
        ));
    }
}

#[derive(Default)]
struct Root {
    requests: u32,
    gauge: u32,
    histogram: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        log(format!("configured with {} bytes", config.len()));
        self.requests = proxy_wasm::hostcalls::define_metric(MetricType::Counter, "probe.requests")
            .unwrap_or(0);
        self.gauge =
            proxy_wasm::hostcalls::define_metric(MetricType::Gauge, "probe.gauge").unwrap_or(0);
        self.histogram =
            proxy_wasm::hostcalls::define_metric(MetricType::Histogram, "probe.sizes").unwrap_or(0);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            actions: Vec::new(),
            requests: self.requests,
            gauge: self.gauge,
            histogram: self.histogram,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    actions: Vec<String>,
    requests: u32,
    gauge: u32,
    histogram: u32,
}

impl Probe {
    fn has(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action)
    }
    /// The value of `action=VALUE`.
    fn arg(&self, action: &str) -> Option<String> {
        self.actions.iter().find_map(|a| {
            a.strip_prefix(action)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
    }

    fn body(&mut self, buffer: u32, which: &str, size: usize, eos: bool) -> Action {
        log(format!("{which} body size {size} eos {eos}"));
        if self.has("buffer") && !eos {
            return Action::Pause;
        }
        if self.has("body") && eos {
            let (status, bytes) = raw::buffer(buffer, 0, size);
            log(format!(
                "{which} body read: status {status} {}",
                show(&bytes)
            ));
            let (status, past) = raw::buffer(buffer, size + 10, 5);
            log(format!(
                "{which} body read past the end: status {status} {}",
                show(&past)
            ));
            if size > 1 {
                let status = raw::set_buffer(buffer, 1, 1, b"X");
                log(format!("{which} body write inside: status {status}"));
            }
        }
        if self.has("append") && eos {
            let status = raw::set_buffer(buffer, size, 0, b" [probe]");
            log(format!("{which} body append: status {status}"));
        }
        if self.has("trailers") && eos && which == "request" {
            let status = raw::add_map_value(REQUEST_TRAILERS, "x-probe-trailer", "added");
            log(format!(
                "request trailer added at the end of the body: status {status}"
            ));
        }
        Action::Continue
    }
}

impl Context for Probe {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        headers: usize,
        body_size: usize,
        trailers: usize,
    ) {
        log(format!(
            "callout answered: {headers} headers, {body_size} body bytes, {trailers} trailers"
        ));
        let status = self.get_http_call_response_header(":status");
        let content_type = self.get_http_call_response_header("content-type");
        let body = self.get_http_call_response_body(0, body_size);
        log(format!(
            "callout status {:?}, content-type {:?}, body {}",
            status.unwrap_or_default(),
            content_type.unwrap_or_default(),
            show(&body)
        ));
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, size: usize) {
        let (_, message) = proxy_wasm::hostcalls::get_grpc_status().unwrap_or((0, None));
        let body = if status_code == 0 {
            self.get_grpc_call_response_body(0, size)
        } else {
            None
        };
        log(format!(
            "grpc closed: status {status_code}, message {:?}, response {}",
            message.unwrap_or_default(),
            show(&body)
        ));
        self.resume_http_request();
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, headers: usize, eos: bool) -> Action {
        self.actions = self
            .get_http_request_header("x-probe")
            .unwrap_or_default()
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        log(format!("request headers: {headers} eos {eos}"));
        let names: Vec<String> = self
            .get_http_request_headers()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with("x-envoy") && k != "content-length" && k != "accept")
            .collect();
        log(format!("request header names: {}", names.join(" ")));
        if self.has("metrics") {
            proxy_wasm::hostcalls::increment_metric(self.requests, 1).ok();
            proxy_wasm::hostcalls::record_metric(self.gauge, 7).ok();
            proxy_wasm::hostcalls::increment_metric(self.gauge, -2).ok();
            proxy_wasm::hostcalls::record_metric(self.histogram, 42).ok();
            let value = proxy_wasm::hostcalls::get_metric(self.gauge).unwrap_or(0);
            log(format!("gauge reads {value}"));
        }
        if self.has("shared") {
            let (value, cas) =
                proxy_wasm::hostcalls::get_shared_data("probe-key").unwrap_or((None, None));
            log(format!(
                "shared get: {} cas {}",
                show(&value),
                cas.is_some()
            ));
            let first = proxy_wasm::hostcalls::set_shared_data("probe-key", Some(b"one"), None);
            log(format!("shared set: {first:?}"));
            let (value, cas) =
                proxy_wasm::hostcalls::get_shared_data("probe-key").unwrap_or((None, None));
            log(format!(
                "shared get: {} cas {}",
                show(&value),
                cas.is_some()
            ));
            let stale = cas.map(|c| c.wrapping_add(1)).unwrap_or(1);
            let conflict =
                proxy_wasm::hostcalls::set_shared_data("probe-key", Some(b"two"), Some(stale));
            log(format!("shared set with a stale cas: {conflict:?}"));
            let current = proxy_wasm::hostcalls::set_shared_data("probe-key", Some(b"three"), cas);
            log(format!("shared set with the current cas: {current:?}"));
        }
        if self.has("level") {
            let (status, level) = raw::log_level();
            log(format!("log level: status {status} level {level}"));
        }
        if self.has("phase") {
            let (status, v) = raw::map_value(RESPONSE_HEADERS, ":status");
            log(format!(
                "request phase, response header: status {status} {}",
                show(&v)
            ));
        }
        if self.has("props") {
            log_properties("request");
        }
        if self.has("local-twice") {
            self.send_http_response(401, vec![("x-probe", "first")], Some(b"first"));
            self.send_http_response(402, vec![("x-probe", "second")], Some(b"second"));
            return Action::Pause;
        }
        if self.has("local") {
            self.send_http_response(403, vec![("x-probe", "local")], Some(b"denied by probe"));
            return Action::Pause;
        }
        let call = |timeout| {
            move |cluster: String, probe: &mut Probe| -> Action {
                let call = probe.dispatch_http_call(
                    &cluster,
                    vec![
                        (":method", "GET"),
                        (":path", "/callout"),
                        (":authority", "probe"),
                    ],
                    None,
                    vec![],
                    Duration::from_millis(timeout),
                );
                match call {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        log(format!("callout refused: {status:?}"));
                        Action::Continue
                    }
                }
            }
        };
        if let Some(cluster) = self.arg("callout") {
            return call(1000)(cluster, self);
        }
        if let Some(cluster) = self.arg("callout-timeout") {
            return call(50)(cluster, self);
        }
        let grpc = |cluster: String, timeout: u64, probe: &mut Probe| -> Action {
            let call = probe.dispatch_grpc_call(
                &cluster,
                "probe.Probe",
                "Echo",
                vec![],
                Some(b"ping"),
                Duration::from_millis(timeout),
            );
            match call {
                Ok(_) => {
                    log("grpc call: ok".into());
                    Action::Pause
                }
                Err(status) => {
                    log(format!("grpc call: {status:?}"));
                    Action::Continue
                }
            }
        };
        if let Some(cluster) = self.arg("grpc") {
            return grpc(cluster, 1000, self);
        }
        if let Some(cluster) = self.arg("grpc-timeout") {
            return grpc(cluster, 50, self);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if self.has("phase") {
            let (status, v) = raw::map_value(REQUEST_HEADERS, ":path");
            log(format!(
                "request body, request header: status {status} {}",
                show(&v)
            ));
        }
        self.body(REQUEST_BODY, "request", size, eos)
    }

    fn on_http_request_trailers(&mut self, trailers: usize) -> Action {
        log(format!("request trailers: {trailers}"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, headers: usize, eos: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        log(format!("response headers: status {status} eos {eos}"));
        let mut names: Vec<String> = self
            .get_http_response_headers()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| {
                !matches!(
                    k.as_str(),
                    "date" | "server" | "x-envoy-upstream-service-time"
                )
            })
            .collect();
        names.sort();
        log(format!(
            "response header names ({headers} in all): {}",
            names.join(" ")
        ));
        if self.has("phase") {
            let (status, v) = raw::map_value(REQUEST_HEADERS, ":path");
            log(format!(
                "response phase, request header: status {status} {}",
                show(&v)
            ));
            let status = raw::add_map_value(REQUEST_HEADERS, "x-late", "1");
            log(format!(
                "response phase, add request header: status {status}"
            ));
            let (status, v) = raw::property("request.path");
            log(format!(
                "response phase, request.path: status {status} {}",
                show(&v)
            ));
        }
        if self.has("props") {
            log_properties("response");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        self.body(RESPONSE_BODY, "response", size, eos)
    }

    fn on_log(&mut self) {
        let (status, v) = raw::map_value(REQUEST_HEADERS, ":path");
        log(format!("log, request header: status {status} {}", show(&v)));
        let (status, v) = raw::map_value(RESPONSE_HEADERS, ":status");
        log(format!(
            "log, response header: status {status} {}",
            show(&v)
        ));
        let status = raw::add_map_value(REQUEST_HEADERS, "x-log", "1");
        log(format!("log, add request header: status {status}"));
    }
}
