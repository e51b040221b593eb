//! Test filter for the harness: every request path triggers one proxy-wasm feature.
//!
//! Plugin configuration: `fail` → configure fails; `tick=N` → tick period N ms.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    /// Streams paused by `/wait`, resumed by the next tick.
    waiting: Rc<RefCell<Vec<u32>>>,
    shutting_down: bool,
    queue: u32,
    requests: u32,
    ticks_metric: u32,
    hist: u32,
    gauge: u32,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        // Finish asynchronously: proxy_done on the next tick.
        self.shutting_down = true;
        self.set_tick_period(Duration::from_millis(10));
        false
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.queue = proxy_wasm::hostcalls::register_shared_queue("events").unwrap_or(0);
        proxy_wasm::hostcalls::log(LogLevel::Info, "vm started").ok();
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        if config == "fail" {
            proxy_wasm::hostcalls::log(LogLevel::Error, "bad config: fail").ok();
            return false;
        }
        if let Some(ms) = config.strip_prefix("tick=") {
            let ms: u64 = ms.trim().parse().unwrap_or(1000);
            self.set_tick_period(Duration::from_millis(ms));
        }
        self.requests =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "callout.requests")
                .unwrap_or(0);
        self.ticks_metric =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "callout.ticks").unwrap_or(0);
        self.hist = proxy_wasm::hostcalls::define_metric(MetricType::Histogram, "callout.latency")
            .unwrap_or(0);
        self.gauge = proxy_wasm::hostcalls::define_metric(MetricType::Gauge, "callout.dequeued")
            .unwrap_or(0);
        true
    }

    fn on_tick(&mut self) {
        if self.shutting_down {
            proxy_wasm::hostcalls::log(LogLevel::Info, "done after a tick").ok();
            self.done();
            return;
        }
        for ctx in self.waiting.borrow_mut().drain(..) {
            // Act on the paused stream from the root context.
            if proxy_wasm::hostcalls::set_effective_context(ctx).is_ok() {
                proxy_wasm::hostcalls::set_map_value(
                    proxy_wasm::types::MapType::HttpRequestHeaders,
                    "x-resumed-by",
                    Some("tick"),
                )
                .ok();
                proxy_wasm::hostcalls::resume_http_request().ok();
            }
        }
        proxy_wasm::hostcalls::increment_metric(self.ticks_metric, 1).ok();
        let now = self.get_current_time();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        proxy_wasm::hostcalls::enqueue_shared_queue(
            self.queue,
            Some(format!("tick@{secs}").as_bytes()),
        )
        .ok();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = proxy_wasm::hostcalls::dequeue_shared_queue(queue_id) {
            proxy_wasm::hostcalls::increment_metric(self.gauge, 1).ok();
            proxy_wasm::hostcalls::log(
                LogLevel::Info,
                &format!("dequeued: {}", String::from_utf8_lossy(&item)),
            )
            .ok();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            waiting: self.waiting.clone(),
            id: context_id,
            requests: self.requests,
            hist: self.hist,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    waiting: Rc<RefCell<Vec<u32>>>,
    id: u32,
    requests: u32,
    hist: u32,
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if num_headers == 0 {
            self.send_http_response(504, vec![], Some(b"callout timed out"));
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let body = self
            .get_http_call_response_body(0, body_size)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if status == "200" {
            self.set_http_request_header("x-auth", Some(&body));
            self.resume_http_request();
        } else {
            self.send_http_response(
                403,
                vec![("x-callout-status", &status)],
                Some(body.as_bytes()),
            );
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, _n: u32) {
        let v = self
            .get_grpc_stream_initial_metadata_value("x-server")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.add_http_request_header("x-stream-server", &v);
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let m = self
            .get_grpc_stream_message(0, size)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.add_http_request_header("x-stream-msg", &m);
        self.send_grpc_stream_message(token, Some(format!("ack {m}").as_bytes()), false);
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        self.close_grpc_stream(token);
        self.add_http_request_header("x-stream-close", &status.to_string());
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        if status_code != 0 {
            let (_, message) = proxy_wasm::hostcalls::get_grpc_status().unwrap_or((0, None));
            self.send_http_response(
                503,
                vec![("x-grpc-status", &status_code.to_string())],
                Some(message.unwrap_or_default().as_bytes()),
            );
            return;
        }
        let body = self
            .get_grpc_call_response_body(0, response_size)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.set_http_request_header("x-grpc", Some(&body));
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        proxy_wasm::hostcalls::increment_metric(self.requests, 1).ok();
        match path.as_str() {
            "/panic" => panic!("boom at {path} in context {}", self.id),
            "/stdout" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
                Action::Continue
            }
            "/deny" => {
                self.send_http_response(401, vec![("www-authenticate", "Bearer")], Some(b"no"));
                Action::Pause
            }
            "/callout" | "/callout-fast" => {
                let user = self.get_http_request_header("x-user").unwrap_or_default();
                let timeout = if path == "/callout-fast" { 100 } else { 1000 };
                match self.dispatch_http_call(
                    "auth",
                    vec![
                        (":method", "GET"),
                        (":path", "/check"),
                        (":authority", "auth"),
                        ("x-user", &user),
                    ],
                    None,
                    vec![],
                    Duration::from_millis(timeout),
                ) {
                    Ok(_) => Action::Pause,
                    Err(e) => {
                        self.send_http_response(
                            500,
                            vec![],
                            Some(format!("dispatch failed: {e:?}").as_bytes()),
                        );
                        Action::Pause
                    }
                }
            }
            "/grpc" => match self.dispatch_grpc_call(
                "grpc-cluster",
                "svc.Auth",
                "Check",
                vec![("x-md", b"1")],
                Some(b"request"),
                Duration::from_millis(500),
            ) {
                Ok(_) => Action::Pause,
                Err(e) => {
                    self.send_http_response(
                        500,
                        vec![],
                        Some(format!("grpc failed: {e:?}").as_bytes()),
                    );
                    Action::Pause
                }
            },
            "/spin" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/wait" => {
                self.waiting.borrow_mut().push(self.id);
                Action::Pause
            }
            "/stream" => match self.open_grpc_stream("grpc-cluster", "svc.Watch", "Events", vec![])
            {
                Ok(token) => {
                    self.send_grpc_stream_message(token, Some(b"subscribe"), false);
                    Action::Pause
                }
                Err(e) => {
                    self.send_http_response(
                        500,
                        vec![],
                        Some(format!("stream failed: {e:?}").as_bytes()),
                    );
                    Action::Pause
                }
            },
            "/counter" => {
                // Shared counter with a CAS retry loop.
                let mut n = 0u64;
                for _ in 0..16 {
                    let (value, cas) = self.get_shared_data("hits");
                    n = value
                        .and_then(|v| String::from_utf8(v).ok())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                        + 1;
                    match self.set_shared_data("hits", Some(n.to_string().as_bytes()), cas) {
                        Ok(()) => break,
                        Err(Status::CasMismatch) => continue,
                        Err(_) => break,
                    }
                }
                self.set_http_request_header("x-hits", Some(&n.to_string()));
                Action::Continue
            }
            "/property" => {
                let addr = self
                    .get_property(vec!["source", "address"])
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_else(|| "none".into());
                let port = self
                    .get_property(vec!["source", "port"])
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map(i64::from_le_bytes)
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "none".into());
                let mtls = self
                    .get_property(vec!["connection", "mtls"])
                    .map(|v| (v == [1]).to_string())
                    .unwrap_or_else(|| "none".into());
                let missing = self.get_property(vec!["no", "such"]).is_none();
                self.set_http_request_header("x-source", Some(&addr));
                self.set_http_request_header("x-port", Some(&port));
                self.set_http_request_header("x-mtls", Some(&mtls));
                self.set_http_request_header("x-missing", Some(&missing.to_string()));
                Action::Continue
            }
            "/time" => {
                let now = self.get_current_time();
                let ns = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let wasi = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.set_http_request_header("x-now", Some(&ns.to_string()));
                self.set_http_request_header("x-wasi-now", Some(&wasi.to_string()));
                Action::Continue
            }
            "/enqueue" => {
                if let Ok(Some(q)) = proxy_wasm::hostcalls::resolve_shared_queue("", "events") {
                    proxy_wasm::hostcalls::enqueue_shared_queue(q, Some(b"from-request")).ok();
                }
                Action::Continue
            }
            "/metrics" => {
                proxy_wasm::hostcalls::record_metric(self.hist, 42).ok();
                let v = proxy_wasm::hostcalls::get_metric(self.requests).unwrap_or(0);
                self.set_http_request_header("x-requests", Some(&v.to_string()));
                Action::Continue
            }
            "/verify" => {
                let args = self.get_http_request_header("x-args").unwrap_or_default();
                let args = hex_decode(&args);
                match proxy_wasm::hostcalls::call_foreign_function("verify_signature", Some(&args))
                {
                    Ok(Some(result)) => {
                        self.set_http_request_header("x-result", Some(&hex_encode(&result)));
                    }
                    Ok(None) => self.set_http_request_header("x-result", Some("none")),
                    Err(e) => self.set_http_request_header("x-result", Some(&format!("{e:?}"))),
                }
                match proxy_wasm::hostcalls::call_foreign_function("no_such_function", None) {
                    Err(e) => self.set_http_request_header("x-unknown", Some(&format!("{e:?}"))),
                    Ok(_) => self.set_http_request_header("x-unknown", Some("ok")),
                }
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if !eos {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, size) {
            let upper = String::from_utf8_lossy(&body).to_uppercase();
            self.set_http_request_body(0, size, upper.as_bytes());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_response_header("x-callout", Some("1"));
        Action::Continue
    }

    fn on_log(&mut self) {
        proxy_wasm::hostcalls::log(LogLevel::Debug, &format!("stream {} done", self.id)).ok();
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| {
            s.get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
