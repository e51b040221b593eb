//! Envoy's rules as the host enforces them, through the probe filter
//! (`harness/test-filters/probe`): phase rules, chunked bodies, local replies, callout
//! failures, properties, defaults, the ABI check. The same probe runs through a real Envoy
//! in envoy-examples/tests/host_differential_e2e_test.py, which compares the two.

mod common;

use portcullis_harness::{
    Exchange, GrpcReply, Host, HttpReply, HttpRequest, Vm, VmError, VmOptions, WasmModule,
};

fn start(host: &Host) -> Vm {
    Vm::start(host, &common::probe(), VmOptions::new("probe config")).unwrap()
}

fn probe(req: HttpRequest, actions: &str) -> (Host, Exchange) {
    let host = Host::new();
    let mut vm = start(&host);
    let ex = vm.request(&req.header("x-probe", actions)).unwrap();
    (host, ex)
}

/// The probe's lines, without the prefix.
fn lines(ex: &Exchange) -> Vec<String> {
    ex.logs
        .iter()
        .filter_map(|l| l.message.strip_prefix("probe: ").map(str::to_owned))
        .collect()
}

fn has(ex: &Exchange, line: &str) {
    let all = lines(ex);
    assert!(
        all.iter().any(|l| l == line),
        "no line {line:?} in {all:#?}"
    );
}

#[test]
fn maps_of_the_other_phase_are_bad_argument_and_request_properties_not_found() {
    let (_, ex) = probe(HttpRequest::post("/p?q=1", "hello"), "phase");
    has(&ex, "request phase, response header: status 2 none");
    // Envoy lets go of the request headers once the filter continued them.
    has(&ex, "request body, request header: status 2 none");
    has(&ex, "response phase, request header: status 2 none");
    has(&ex, "response phase, add request header: status 2");
    has(&ex, "response phase, request.path: status 1 none");
    // The access-log phase reads both header maps and changes none.
    has(&ex, "log, request header: status 0 \"/p?q=1\"");
    has(&ex, "log, response header: status 0 \"200\"");
    has(&ex, "log, add request header: status 2");
    assert_eq!(ex.upstream_header("x-late"), None);
}

#[test]
fn bodies_come_in_chunks_then_an_empty_end_of_stream() {
    let (_, ex) = probe(HttpRequest::post("/", "hello"), "");
    has(&ex, "request body size 5 eos false");
    has(&ex, "request body size 0 eos true");
    has(&ex, "response body size 8 eos false");
    has(&ex, "response body size 0 eos true");
    assert_eq!(ex.upstream_request_body.as_deref(), Some(&b"hello"[..]));

    // A large body: chunks of at most 16 KiB.
    let big = vec![b'a'; 40_000];
    let (_, ex) = probe(HttpRequest::post("/", big.clone()), "");
    has(&ex, "request body size 16384 eos false");
    has(&ex, "request body size 7232 eos false");
    has(&ex, "request body size 0 eos true");
    assert_eq!(ex.upstream_request_body.as_deref(), Some(&big[..]));
}

#[test]
fn a_buffering_filter_gets_the_whole_body_at_the_end() {
    let (_, ex) = probe(HttpRequest::post("/", "hello"), "buffer,body,append");
    has(&ex, "request body size 5 eos false");
    has(&ex, "request body size 5 eos true");
    has(&ex, "request body read: status 0 \"hello\"");
    // Past the end is nothing (None), a write inside the body is refused, an append works.
    has(&ex, "request body read past the end: status 0 none");
    has(&ex, "request body write inside: status 2");
    has(&ex, "request body append: status 0");
    assert_eq!(
        ex.upstream_request_body.as_deref(),
        Some(&b"hello [probe]"[..])
    );
}

#[test]
fn trailers_can_be_added_at_the_end_of_the_body() {
    let (_, ex) = probe(HttpRequest::post("/", "hello"), "trailers");
    has(
        &ex,
        "request trailer added at the end of the body: status 0",
    );
    assert_eq!(
        ex.upstream_request_trailers,
        vec![("x-probe-trailer".to_owned(), "added".to_owned())]
    );
}

#[test]
fn local_replies_run_through_the_response_callbacks() {
    let (_, ex) = probe(HttpRequest::get("/"), "local");
    assert_eq!(ex.status, 403);
    assert_eq!(ex.response_header("x-probe"), Some("local"));
    assert_eq!(ex.response_header("content-type"), Some("text/plain"));
    assert_eq!(ex.response_header("content-length"), Some("15"));
    assert_eq!(ex.response_body, b"denied by probe");
    has(&ex, "response headers: status 403 eos false");
    has(
        &ex,
        "response header names (4 in all): :status content-length content-type x-probe",
    );
    has(&ex, "response body size 15 eos true");
    assert!(ex.upstream_request_headers.is_none());

    // Two in one callback: Envoy keeps the first.
    let (_, ex) = probe(HttpRequest::get("/"), "local-twice");
    assert_eq!(ex.status, 401);
    assert_eq!(ex.response_body, b"first");
}

#[test]
fn a_grpc_local_reply_is_trailers_only() {
    let req =
        HttpRequest::post("/probe.Probe/Echo", "x").header("content-type", "application/grpc");
    let (_, ex) = probe(req, "local");
    assert_eq!(ex.status, 200);
    assert_eq!(ex.response_header("grpc-status"), Some("7"));
    assert_eq!(ex.response_header("grpc-message"), Some("denied by probe"));
    assert_eq!(ex.response_header("content-type"), Some("application/grpc"));
    assert!(ex.response_body.is_empty());
}

#[test]
fn callout_failures_are_delivered_as_envoy_delivers_them() {
    let host = Host::new();
    host.on_http_call("slow", |_| HttpReply::Never);
    host.on_http_call("down", |_| HttpReply::Fail);
    let mut vm = start(&host);
    let ex = vm
        .request(&HttpRequest::get("/").header("x-probe", "callout-timeout=slow"))
        .unwrap();
    has(
        &ex,
        "callout answered: 3 headers, 24 body bytes, 0 trailers",
    );
    has(
        &ex,
        "callout status \"504\", content-type \"text/plain\", body \"upstream request timeout\"",
    );
    assert_eq!(ex.status, 200);
    let ex = vm
        .request(&HttpRequest::get("/").header("x-probe", "callout=down"))
        .unwrap();
    assert!(lines(&ex).iter().any(|l| l.starts_with(
        "callout status \"503\", content-type \"text/plain\", body \"upstream connect error"
    )));
    let ex = vm
        .request(&HttpRequest::get("/").header("x-probe", "callout=nowhere"))
        .unwrap();
    has(&ex, "callout refused: BadArgument");
}

#[test]
fn grpc_failures_are_delivered_as_envoy_delivers_them() {
    let host = Host::new();
    host.add_cluster("grpc");
    host.on_grpc_in("slow", "*", |_| GrpcReply::Never);
    host.on_grpc_in("grpc", "probe.Probe/Echo", |req| {
        GrpcReply::ok(format!("echo {}", String::from_utf8_lossy(&req.message)))
    });
    let mut vm = start(&host);
    let run = |vm: &mut Vm, actions: &str| {
        vm.request(&HttpRequest::get("/").header("x-probe", actions))
            .unwrap()
    };
    let ex = run(&mut vm, "grpc=grpc");
    has(
        &ex,
        "grpc closed: status 0, message \"\", response \"echo ping\"",
    );
    let ex = run(&mut vm, "grpc-timeout=slow");
    has(&ex, "grpc closed: status 14, message \"\", response none");
    let ex = run(&mut vm, "grpc=nowhere");
    has(&ex, "grpc call: ParseFailure");
    assert_eq!(ex.status, 200);
}

#[test]
fn properties_as_envoy_answers_them() {
    let (_, ex) = probe(
        HttpRequest::get("/p/q?x=1&y=2").header("user-agent", "probe-test"),
        "props",
    );
    has(&ex, "request property request.query: status 0 \"x=1&y=2\"");
    has(&ex, "request property request.url_path: status 0 \"/p/q\"");
    has(
        &ex,
        "request property request.useragent: status 0 \"probe-test\"",
    );
    has(
        &ex,
        "request property request.headers.x-probe: status 0 \"props\"",
    );
    has(&ex, "request property request: status 3 none");
    has(&ex, "request property connection.mtls: status 0 false");
    has(&ex, "request property response.code: status 1 none");
    has(&ex, "request property request.id: status 0 some");
    has(&ex, "request property request.duration: status 1 none");
    has(&ex, "request property upstream.address: status 1 none");
    has(&ex, "response property response.code: status 0 200");
    has(
        &ex,
        "response property response.code_details: status 0 \"via_upstream\"",
    );
    has(&ex, "response property request.path: status 1 none");
    has(&ex, "response property upstream.port: status 0 some");
    // Envoy's default plugin name is empty: nothing to return.
    has(&ex, "request property plugin_name: status 0 none");
}

#[test]
fn envoy_defaults_log_level_info_and_its_request_headers() {
    let (host, ex) = probe(HttpRequest::get("/"), "level");
    has(&ex, "log level: status 0 level 2");
    has(
        &ex,
        "request header names: :authority :path :method :scheme x-probe x-forwarded-proto x-request-id",
    );
    // Debug lines are not captured at Envoy's default level.
    assert!(!host
        .logs()
        .iter()
        .any(|l| l.level < portcullis_harness::LogLevel::Info));
    assert_eq!(
        ex.response_header("x-envoy-upstream-service-time"),
        Some("0")
    );
}

#[test]
fn metrics_as_envoy_keeps_them() {
    let host = Host::new();
    let mut vm = start(&host);
    for _ in 0..2 {
        vm.request(&HttpRequest::get("/").header("x-probe", "metrics"))
            .unwrap();
    }
    assert_eq!(host.metric_value("probe.requests"), 2);
    assert_eq!(host.metric_value("probe.gauge"), 5);
    assert_eq!(host.metric("probe.sizes").unwrap().samples, vec![42, 42]);
}

#[test]
fn a_module_without_an_abi_version_is_refused() {
    // The smallest valid module: no exports at all.
    let module = WasmModule::from_bytes(b"\0asm\x01\0\0\0").unwrap();
    match Vm::start(&Host::new(), &module, VmOptions::new("")) {
        Err(VmError::Load(m)) => assert!(m.contains("proxy_abi_version"), "{m}"),
        other => panic!("expected a load error, got {other:?}"),
    }
}

/// A gRPC server on loopback (HTTP/2, one unary method): answers `<path> got <message>`.
fn grpc_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(socket).await.unwrap();
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        let path = request.uri().path().to_owned();
                        let mut body = request.into_body();
                        let mut data = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            data.extend_from_slice(&chunk);
                        }
                        let reply = format!(
                            "{path} got {}",
                            String::from_utf8_lossy(data.get(5..).unwrap_or_default())
                        );
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(head, false).unwrap();
                        let mut framed = vec![0];
                        framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                        framed.extend_from_slice(reply.as_bytes());
                        send.send_data(framed.into(), false).unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        send.send_trailers(trailers).unwrap();
                    }
                });
            }
        });
    });
    addr
}

#[test]
fn grpc_calls_are_forwarded_to_a_real_server() {
    let addr = grpc_server();
    let host = Host::new();
    host.on_grpc_in("grpc", "probe.Probe/Echo", move |_| {
        GrpcReply::Forward(addr)
    });
    let mut vm = start(&host);
    let ex = vm
        .request(&HttpRequest::get("/").header("x-probe", "grpc=grpc"))
        .unwrap();
    has(
        &ex,
        "grpc closed: status 0, message \"\", response \"/probe.Probe/Echo got ping\"",
    );
    // Nobody listening: UNAVAILABLE, as Envoy reports a connection failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    host.on_grpc_in("grpc", "probe.Probe/Echo", move |_| {
        GrpcReply::Forward(closed)
    });
    let ex = vm
        .request(&HttpRequest::get("/").header("x-probe", "grpc=grpc"))
        .unwrap();
    has(&ex, "grpc closed: status 14, message \"\", response none");
}

#[test]
fn shared_data_cas_as_envoy() {
    let (_, ex) = probe(HttpRequest::get("/"), "shared");
    has(&ex, "shared get: none cas false");
    has(&ex, "shared set: Ok(())");
    has(&ex, "shared get: \"one\" cas true");
    has(&ex, "shared set with a stale cas: Err(CasMismatch)");
    has(&ex, "shared set with the current cas: Ok(())");
}
