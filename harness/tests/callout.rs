//! Host functions, exercised through the test filter `harness/test-filters/callout`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use portcullis_harness::foreign::{decode_result, VerifySignatureArguments};
use portcullis_harness::{
    GrpcReply, Host, HttpReply, HttpRequest, LogLevel, TlsInfo, Vm, VmError, VmOptions,
};
use std::time::Duration;

fn vm(host: &Host, config: &str) -> Vm {
    // These tests read the filter's debug lines; Envoy's default level is info.
    host.set_log_level(portcullis_harness::LogLevel::Trace);
    // The filter's gRPC cluster, as Envoy's configuration would declare it.
    host.add_cluster("grpc-cluster");
    Vm::start(host, &common::callout(), VmOptions::new(config)).unwrap()
}

#[test]
fn lifecycle_logs_and_plain_request() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    assert!(host.logged("vm started"));
    let ex = vm.request(&HttpRequest::get("/plain")).unwrap();
    assert_eq!(ex.status, 200);
    assert!(ex.allowed());
    assert_eq!(ex.response_header("x-callout"), Some("1"));
    assert!(ex.logs.iter().any(
        |l| l.message == format!("stream {} done", ex.context_id) && l.level == LogLevel::Debug
    ));
    assert_eq!(host.metric_value("callout.requests"), 1);
}

#[test]
fn configure_failure_reports_the_plugin_message() {
    let host = Host::new();
    let err = Vm::start(&host, &common::callout(), VmOptions::new("fail")).unwrap_err();
    match &err {
        VmError::ConfigureFailed { logs } => {
            assert!(logs.iter().any(|l| l.contains("bad config: fail")))
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("bad config: fail"));
}

#[test]
fn local_response_is_recorded() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::get("/deny")).unwrap();
    assert_eq!(ex.status, 401);
    let local = ex.local_response.as_ref().unwrap();
    assert_eq!(local.header("www-authenticate"), Some("Bearer"));
    assert_eq!(local.body, b"no");
    assert!(!ex.allowed());
}

#[test]
fn http_callout_answered_by_scripted_upstream() {
    let host = Host::new();
    host.on_http_call("auth", |req| {
        assert_eq!(req.path(), "/check");
        match req.header("x-user") {
            Some("alice") => HttpReply::ok("alice-ok").after(Duration::from_millis(20)),
            _ => HttpReply::status(401, "who?"),
        }
    });
    let mut vm = vm(&host, "");
    let t0 = host.now();
    let ex = vm
        .request(&HttpRequest::get("/callout").header("x-user", "alice"))
        .unwrap();
    assert_eq!(ex.status, 200, "{ex:?}");
    assert_eq!(ex.upstream_header("x-auth"), Some("alice-ok"));
    assert_eq!(ex.http_calls.len(), 1);
    assert_eq!(ex.http_calls[0].timeout, Duration::from_secs(1));
    // The virtual clock moved by the upstream's delay.
    assert!(host.now().duration_since(t0).unwrap() >= Duration::from_millis(20));

    let ex = vm
        .request(&HttpRequest::get("/callout").header("x-user", "mallory"))
        .unwrap();
    assert_eq!(ex.status, 403);
    assert_eq!(ex.response_header("x-callout-status"), Some("401"));
}

#[test]
fn http_callout_times_out_like_envoy() {
    let host = Host::new();
    host.on_http_call("auth", |_| HttpReply::Never);
    let mut vm = vm(&host, "");
    let t0 = host.now();
    let ex = vm.request(&HttpRequest::get("/callout-fast")).unwrap();
    // Envoy delivers a timeout as a response: 504, text/plain, "upstream request timeout"
    // (the filter relays a non-200 answer as 403 with its status and body).
    assert_eq!(ex.status, 403);
    assert_eq!(ex.response_header("x-callout-status"), Some("504"));
    assert_eq!(ex.response_body, b"upstream request timeout");
    assert_eq!(
        host.now().duration_since(t0).unwrap(),
        Duration::from_millis(100)
    );

    // A reply slower than the timeout is a timeout too.
    host.on_http_call("auth", |_| {
        HttpReply::ok("late").after(Duration::from_secs(5))
    });
    let ex = vm.request(&HttpRequest::get("/callout-fast")).unwrap();
    assert_eq!(ex.response_header("x-callout-status"), Some("504"));

    // An upstream that cannot be reached: Envoy's 503 with its connect-failure text.
    host.on_http_call("auth", |_| HttpReply::Fail);
    let ex = vm.request(&HttpRequest::get("/callout-fast")).unwrap();
    assert_eq!(ex.response_header("x-callout-status"), Some("503"));
    assert!(String::from_utf8_lossy(&ex.response_body)
        .starts_with("upstream connect error or disconnect/reset before headers"));

    // A reset after the request started: Envoy's onFailure, 0 headers and no body.
    host.on_http_call("auth", |_| HttpReply::Reset);
    let ex = vm.request(&HttpRequest::get("/callout-fast")).unwrap();
    assert_eq!(ex.status, 504);
    assert_eq!(ex.response_body, b"callout timed out");
}

#[test]
fn http_callout_to_unknown_cluster_fails_dispatch() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::get("/callout")).unwrap();
    assert_eq!(ex.status, 500);
    assert!(String::from_utf8_lossy(&ex.response_body).contains("BadArgument"));
}

#[test]
fn http_callout_forwarded_to_loopback_server() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        let req = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(req.starts_with("GET /check HTTP/1.1"), "{req}");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nreal!!")
            .unwrap();
    });
    let host = Host::new();
    host.on_http_call("auth", move |_| HttpReply::Forward(addr));
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::get("/callout")).unwrap();
    server.join().unwrap();
    assert_eq!(ex.upstream_header("x-auth"), Some("real!!"));
}

#[test]
fn grpc_call_answered_and_failed() {
    let host = Host::new();
    host.on_grpc("svc.Auth/Check", |req| {
        assert_eq!(req.message, b"request");
        GrpcReply::ok("granted")
    });
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::get("/grpc")).unwrap();
    assert_eq!(ex.upstream_header("x-grpc"), Some("granted"));
    assert_eq!(
        host.grpc_calls()[0].initial_metadata,
        vec![("x-md".to_owned(), "1".to_owned())]
    );

    host.on_grpc("*", |_| GrpcReply::error(7, "denied"));
    let ex = vm.request(&HttpRequest::get("/grpc")).unwrap();
    assert_eq!(ex.status, 503);
    assert_eq!(ex.response_header("x-grpc-status"), Some("7"));
    assert_eq!(ex.response_body, b"denied");

    // A call that times out closes with UNAVAILABLE in Envoy (its HTTP stream's 504).
    host.on_grpc("*", |_| GrpcReply::Never);
    let ex = vm.request(&HttpRequest::get("/grpc")).unwrap();
    assert_eq!(ex.response_header("x-grpc-status"), Some("14"));
}

#[test]
fn grpc_call_to_unknown_cluster_is_parse_failure() {
    let host = Host::new();
    host.on_grpc("*", |_| GrpcReply::ok("never asked"));
    // No `add_cluster("grpc-cluster")`: Envoy knows no such cluster.
    let mut vm = Vm::start(&host, &common::callout(), VmOptions::new("")).unwrap();
    let ex = vm.request(&HttpRequest::get("/grpc")).unwrap();
    assert!(host.grpc_calls().is_empty());
    assert!(
        String::from_utf8_lossy(&ex.response_body).contains("ParseFailure"),
        "{:?}",
        String::from_utf8_lossy(&ex.response_body)
    );
}

#[test]
fn shared_data_cas_across_vms() {
    let host = Host::new();
    let mut a = vm(&host, "");
    let mut b = vm(&host, "");
    for i in 1..=3 {
        let ex = a.request(&HttpRequest::get("/counter")).unwrap();
        assert_eq!(
            ex.upstream_header("x-hits"),
            Some((2 * i - 1).to_string().as_str())
        );
        let ex = b.request(&HttpRequest::get("/counter")).unwrap();
        assert_eq!(
            ex.upstream_header("x-hits"),
            Some((2 * i).to_string().as_str())
        );
    }
    let (v, cas) = host.shared_data("hits").unwrap();
    assert_eq!(v, b"6");
    // Envoy's CAS rules.
    assert!(host.set_shared_data("hits", b"x", cas + 1).is_err());
    assert!(host.set_shared_data("hits", b"7", cas).is_ok());
    assert!(host.set_shared_data("hits", b"8", 0).is_ok());
    assert!(host.set_shared_data("new", b"1", 12345).is_ok());
    assert!(host.shared_data("missing").is_none());
}

#[test]
fn shared_data_contention_from_threads() {
    let host = Host::new();
    // Seeded, so every write is a CAS: a key that does not exist yet has no CAS token, and two
    // first writes may both land (Envoy's semantics too) — that race is not what this tests.
    assert!(host.set_shared_data("hits", b"0", 0).is_ok());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || {
                let mut vm = vm(&host, "");
                for _ in 0..25 {
                    vm.request(&HttpRequest::get("/counter")).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(host.shared_data("hits").unwrap().0, b"50");
}

#[test]
fn properties_with_envoy_encodings() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    let req = HttpRequest::get("/property")
        .source("10.1.2.3:5555")
        .tls(&TlsInfo {
            mtls: true,
            ..TlsInfo::default()
        });
    let ex = vm.request(&req).unwrap();
    assert_eq!(ex.upstream_header("x-source"), Some("10.1.2.3:5555"));
    assert_eq!(ex.upstream_header("x-port"), Some("5555"));
    assert_eq!(ex.upstream_header("x-mtls"), Some("true"));
    assert_eq!(ex.upstream_header("x-missing"), Some("true"));
}

#[test]
fn virtual_clock_drives_time_and_wasi() {
    let host = Host::new();
    host.set_unix_seconds(1_700_000_000);
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::get("/time")).unwrap();
    assert_eq!(ex.upstream_header("x-now"), Some("1700000000000000000"));
    assert_eq!(ex.upstream_header("x-wasi-now"), Some("1700000000"));
    vm.advance(Duration::from_secs(10)).unwrap();
    let ex = vm.request(&HttpRequest::get("/time")).unwrap();
    assert_eq!(ex.upstream_header("x-wasi-now"), Some("1700000010"));
}

#[test]
fn ticks_fire_as_the_clock_advances_and_queues_deliver() {
    let host = Host::new();
    host.set_unix_seconds(1_000);
    let mut vm = vm(&host, "tick=1000");
    assert_eq!(vm.tick_period(), Some(Duration::from_secs(1)));
    vm.advance(Duration::from_millis(999)).unwrap();
    assert_eq!(host.metric_value("callout.ticks"), 0);
    vm.advance(Duration::from_millis(2001)).unwrap();
    assert_eq!(host.metric_value("callout.ticks"), 3);
    // Each tick enqueued onto the VM's own queue; on_queue_ready dequeued it at the tick's time.
    assert!(host.logged("dequeued: tick@1001"));
    assert!(host.logged("dequeued: tick@1003"));
    assert_eq!(host.metric_value("callout.dequeued"), 3);
}

#[test]
fn queue_enqueued_by_another_vm_and_by_the_test() {
    let host = Host::new();
    let mut owner = vm(&host, "");
    let mut other = vm(&host, "");
    // `other` registered the queue last, so it owns it now (like Envoy, latest registration wins).
    other.request(&HttpRequest::get("/enqueue")).unwrap();
    assert!(host.logged("dequeued: from-request"));
    host.enqueue("", "events", b"from-test").unwrap();
    owner.run_due().unwrap();
    assert!(!host.logged("dequeued: from-test"));
    other.run_due().unwrap();
    assert!(host.logged("dequeued: from-test"));
}

#[test]
fn metrics_define_increment_record_get() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    vm.request(&HttpRequest::get("/a")).unwrap();
    let ex = vm.request(&HttpRequest::get("/metrics")).unwrap();
    assert_eq!(ex.upstream_header("x-requests"), Some("2"));
    let h = host.metric("callout.latency").unwrap();
    assert_eq!(h.samples, vec![42]);
    assert!(host.metrics().contains_key("callout.requests"));
}

#[test]
fn request_body_is_rewritten() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::post("/upload", "hello")).unwrap();
    assert_eq!(ex.upstream_request_body.as_deref(), Some(&b"HELLO"[..]));
}

#[test]
fn stdout_and_stderr_are_captured() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::get("/stdout")).unwrap();
    assert!(ex
        .logs
        .iter()
        .any(|l| l.source == "stdout" && l.message == "hello from stdout"));
    assert!(ex
        .logs
        .iter()
        .any(|l| l.source == "stderr" && l.level == LogLevel::Error));
}

#[test]
fn trap_reports_panic_and_backtrace_then_restarts() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    let err = vm.request(&HttpRequest::get("/panic")).unwrap_err();
    let VmError::Trap(t) = &err else {
        panic!("{err}")
    };
    assert_eq!(t.function, "proxy_on_request_headers");
    assert!(
        t.panic_message
            .as_deref()
            .unwrap_or("")
            .contains("boom at /panic"),
        "{t:?}"
    );
    assert!(t.trap.contains("unreachable"), "{t:?}");
    assert!(!t.backtrace.is_empty());
    assert!(vm.is_dead());
    assert!(matches!(
        vm.request(&HttpRequest::get("/a")),
        Err(VmError::Poisoned)
    ));
    vm.restart().unwrap();
    assert_eq!(vm.request(&HttpRequest::get("/a")).unwrap().status, 200);
}

#[test]
fn missing_import_is_a_clear_load_error() {
    // A module importing a function no proxy-wasm host has.
    let wasm = wat_module();
    let module = portcullis_harness::WasmModule::from_bytes(&wasm).unwrap();
    let err = Vm::start(&Host::new(), &module, VmOptions::new("")).unwrap_err();
    assert!(
        err.to_string().contains("env::proxy_does_not_exist"),
        "{err}"
    );
}

/// (module (import "env" "proxy_does_not_exist" (func)) (memory (export "memory") 1))
fn wat_module() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // type section: 1 type, func () -> ()
    m.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]);
    // import section
    let name = b"proxy_does_not_exist";
    let mut imp = vec![0x01, 0x03, b'e', b'n', b'v', name.len() as u8];
    imp.extend_from_slice(name);
    imp.extend_from_slice(&[0x00, 0x00]);
    m.push(0x02);
    m.push(imp.len() as u8);
    m.extend_from_slice(&imp);
    m
}

#[test]
fn verify_signature_foreign_function() {
    use rsa_fixture::*;
    let host = Host::new();
    let mut vm = vm(&host, "");
    let (public_der, sig, text) = ec_fixture();
    let args = VerifySignatureArguments {
        hash_function: "sha256".into(),
        public_key: public_der.clone(),
        signature: sig.clone(),
        text: text.clone(),
        public_key_pem: String::new(),
    };
    let ex = vm
        .request(&HttpRequest::get("/verify").header("x-args", &hex(&args.encode())))
        .unwrap();
    assert_eq!(ex.upstream_header("x-result"), Some("0801"));
    assert_eq!(ex.upstream_header("x-unknown"), Some("NotFound"));

    let mut bad = args.clone();
    bad.text = b"tampered".to_vec();
    let ex = vm
        .request(&HttpRequest::get("/verify").header("x-args", &hex(&bad.encode())))
        .unwrap();
    let result = unhex(ex.upstream_header("x-result").unwrap());
    assert_eq!(
        decode_result(&result),
        Some((false, "Failed to verify digest. Error code: 0".into()))
    );
}

mod rsa_fixture {
    pub fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    pub fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }
    /// An ES256 signature made with the demo EC key, via the JWT signer.
    pub fn ec_fixture() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let keys = portcullis_harness::token::SigningKeys::load(
            &super::common::workspace_root().join("policies/keys/private.jwks.json"),
        )
        .unwrap();
        keys.ec_test_vector("demo-ec-1", b"hello world").unwrap()
    }
}

#[test]
fn root_context_resumes_a_paused_stream_via_set_effective_context() {
    let host = Host::new();
    let mut vm = vm(&host, "tick=100");
    let ex = vm.request(&HttpRequest::get("/wait")).unwrap();
    assert_eq!(ex.status, 200, "{ex:?}");
    assert_eq!(ex.upstream_header("x-resumed-by"), Some("tick"));
}

#[test]
fn stream_paused_forever_is_reported_stuck() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::get("/wait")).unwrap();
    assert!(ex.stuck);
    assert_eq!(ex.status, 0);
    assert!(!ex.allowed());
}

#[test]
fn grpc_stream_messages_in_order_and_sends_recorded() {
    let host = Host::new();
    host.on_grpc("svc.Watch/Events", |req| {
        assert!(req.streaming);
        GrpcReply::Respond {
            status: 0,
            status_message: String::new(),
            initial_metadata: vec![("x-server".into(), "s1".into())],
            messages: vec![b"one".to_vec(), b"two".to_vec()],
            trailing_metadata: Vec::new(),
            close: true,
            delay: Duration::from_millis(5),
        }
    });
    let mut vm = vm(&host, "");
    let ex = vm.request(&HttpRequest::get("/stream")).unwrap();
    assert_eq!(ex.status, 200, "{ex:?}");
    let headers = ex.upstream_request_headers.clone().unwrap();
    let msgs: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "x-stream-msg")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(msgs, ["one", "two"]);
    assert_eq!(ex.upstream_header("x-stream-server"), Some("s1"));
    assert_eq!(ex.upstream_header("x-stream-close"), Some("0"));
    let token = host.grpc_calls()[0].token;
    let (sent, closed) = host.grpc_sent(vm.index(), token);
    assert_eq!(
        sent,
        vec![
            b"subscribe".to_vec(),
            b"ack one".to_vec(),
            b"ack two".to_vec()
        ]
    );
    assert!(closed);
}

#[test]
fn shutdown_waits_for_proxy_done() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    assert!(vm.shutdown(Duration::from_secs(1)).unwrap());
    assert!(vm.done_called());
    assert!(host.logged("done after a tick"));
}

#[test]
fn trap_display_is_readable() {
    let host = Host::new();
    let mut vm = vm(&host, "");
    let err = vm.request(&HttpRequest::get("/panic")).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains("proxy_on_request_headers"), "{text}");
    assert!(text.contains("boom at /panic"), "{text}");
    if std::env::var_os("PORTCULLIS_TEST_FILTERS_DIR").is_none() {
        // Built with its name section: frames are named (demangled).
        assert!(text.contains("on_http_request_headers"), "{text}");
    }
}

#[test]
fn host_advance_interleaves_the_ticks_of_several_vms() {
    let host = Host::new();
    host.set_unix_seconds(2_000);
    let mut a = vm(&host, "tick=1000");
    host.advance_clock(Duration::from_millis(500));
    let mut b = vm(&host, "tick=1000");
    host.advance(&mut [&mut a, &mut b], Duration::from_millis(2_600))
        .unwrap();
    // a ticks at 2001, 2002, 2003; b at 2001.5, 2002.5: 5 ticks, each at its own time.
    assert_eq!(host.metric_value("callout.ticks"), 5);
    let ticks: Vec<u64> = host
        .logs()
        .iter()
        .filter(|l| l.message.starts_with("dequeued: tick@"))
        .map(|l| l.time_ns / 1_000_000)
        .collect();
    assert_eq!(
        ticks,
        vec![2_001_000, 2_001_500, 2_002_000, 2_002_500, 2_003_000]
    );
}

#[test]
fn vms_and_hosts_are_send() {
    fn send<T: Send>() {}
    fn sync<T: Send + Sync>() {}
    send::<Vm>();
    sync::<Host>();
}

#[test]
fn a_plugin_stuck_in_a_loop_is_interrupted() {
    let host = Host::new();
    let options = VmOptions {
        callback_timeout: Some(Duration::from_millis(300)),
        ..VmOptions::new("")
    };
    let mut vm = Vm::start(&host, &common::callout(), options).unwrap();
    let started = std::time::Instant::now();
    let err = vm.request(&HttpRequest::get("/spin")).unwrap_err();
    assert!(matches!(err, VmError::Trap(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("interrupt"), "{err}");
}
