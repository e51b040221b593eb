//! Plain data exchanged between tests and the host.

use crate::abi::{Headers, LogLevel, MetricKind};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// One captured log line (from `proxy_log`, or the VM's stdout/stderr).
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Index of the VM that logged it (see [`crate::Vm::index`]).
    pub vm: usize,
    /// The context that was current when it was logged.
    pub context_id: u32,
    pub level: LogLevel,
    /// `proxy_log`, `stdout` or `stderr`.
    pub source: &'static str,
    pub message: String,
    /// Virtual time (ns since the epoch) when it was logged.
    pub time_ns: u64,
}

/// What `proxy_send_local_response` asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub grpc_status: i32,
}

impl LocalResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request a test sends through a VM (see [`crate::Vm::request`]).
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// All request headers, pseudo-headers first (`:method`, `:path`, `:authority`, `:scheme`).
    pub headers: Headers,
    pub body: Option<Vec<u8>>,
    pub trailers: Headers,
    /// Stream properties: dotted path (`source.address`) → bytes as Envoy encodes them.
    pub properties: Vec<(String, Vec<u8>)>,
    /// What the upstream answers if the filter lets the request through.
    pub upstream: UpstreamResponse,
}

impl HttpRequest {
    pub fn new(method: &str, path: &str) -> HttpRequest {
        let mut r = HttpRequest {
            // Envoy's order of the pseudo-headers in the map a filter reads.
            headers: vec![
                (":authority".into(), "localhost".into()),
                (":path".into(), path.to_owned()),
                (":method".into(), method.to_owned()),
                (":scheme".into(), "http".into()),
            ],
            ..HttpRequest::default()
        };
        r = r
            .source("127.0.0.1:50000")
            .destination("127.0.0.1:10000")
            .property_str("request.protocol", "HTTP/1.1")
            // A plaintext connection, as Envoy reports it.
            .property_bool("connection.mtls", false)
            .property_str("connection.requested_server_name", "")
            // The names in envoy-examples' configurations; a suite can set its own.
            .property_str("xds.cluster_name", "upstream")
            .property_str("xds.route_name", "");
        r
    }
    pub fn get(path: &str) -> HttpRequest {
        HttpRequest::new("GET", path)
    }
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> HttpRequest {
        HttpRequest::new("POST", path).body(body)
    }
    /// Adds a header (name lower-cased). `:authority` etc. replace the pseudo-header.
    pub fn header(mut self, name: &str, value: &str) -> HttpRequest {
        let name = name.to_ascii_lowercase();
        if name.starts_with(':') {
            if let Some(slot) = self.headers.iter_mut().find(|(k, _)| *k == name) {
                slot.1 = value.to_owned();
                return self;
            }
        }
        self.headers.push((name, value.to_owned()));
        self
    }
    pub fn bearer(self, token: &str) -> HttpRequest {
        self.header("authorization", &format!("Bearer {token}"))
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> HttpRequest {
        self.body = Some(body.into());
        self
    }
    pub fn trailer(mut self, name: &str, value: &str) -> HttpRequest {
        self.trailers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }
    /// Sets a raw property.
    pub fn property(mut self, path: &str, value: impl Into<Vec<u8>>) -> HttpRequest {
        self.properties.retain(|(k, _)| k != path);
        self.properties.push((path.to_owned(), value.into()));
        self
    }
    pub fn property_str(self, path: &str, value: &str) -> HttpRequest {
        self.property(path, value.as_bytes().to_vec())
    }
    /// int64, 8 bytes little endian, like Envoy.
    pub fn property_int(self, path: &str, value: i64) -> HttpRequest {
        self.property(path, value.to_le_bytes().to_vec())
    }
    pub fn property_bool(self, path: &str, value: bool) -> HttpRequest {
        self.property(path, vec![u8::from(value)])
    }
    /// `source.address` ("ip:port") and `source.port`.
    pub fn source(self, addr: &str) -> HttpRequest {
        let port = port_of(addr);
        let r = self.property_str("source.address", addr);
        match port {
            Some(p) => r.property_int("source.port", p),
            None => r,
        }
    }
    /// `destination.address` and `destination.port`.
    pub fn destination(self, addr: &str) -> HttpRequest {
        let port = port_of(addr);
        let r = self.property_str("destination.address", addr);
        match port {
            Some(p) => r.property_int("destination.port", p),
            None => r,
        }
    }
    /// TLS connection attributes (`connection.*`).
    pub fn tls(self, tls: &TlsInfo) -> HttpRequest {
        let mut r = self
            .property_bool("connection.mtls", tls.mtls)
            .property_str(
                "connection.tls_version",
                tls.tls_version.as_deref().unwrap_or("TLSv1.3"),
            );
        r = r.header(":scheme", "https");
        for (path, v) in [
            (
                "connection.requested_server_name",
                &tls.requested_server_name,
            ),
            (
                "connection.uri_san_peer_certificate",
                &tls.uri_san_peer_certificate,
            ),
            (
                "connection.dns_san_peer_certificate",
                &tls.dns_san_peer_certificate,
            ),
            (
                "connection.subject_peer_certificate",
                &tls.subject_peer_certificate,
            ),
        ] {
            if let Some(v) = v {
                r = r.property_str(path, v);
            }
        }
        r
    }
    pub fn upstream(mut self, upstream: UpstreamResponse) -> HttpRequest {
        self.upstream = upstream;
        self
    }
    pub fn header_value(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn port_of(addr: &str) -> Option<i64> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// TLS attributes of the downstream connection.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsInfo {
    #[serde(default)]
    pub mtls: bool,
    pub requested_server_name: Option<String>,
    pub uri_san_peer_certificate: Option<String>,
    pub dns_san_peer_certificate: Option<String>,
    pub subject_peer_certificate: Option<String>,
    pub tls_version: Option<String>,
}

/// The upstream's answer to a request the filter let through.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// The upstream host (`ip:port`): the `upstream.address`/`upstream.port` properties.
    pub address: String,
    /// Send the request (as the filter let it through) to this real HTTP/1.1 server on
    /// loopback and use its answer instead of the fields above.
    pub forward: Option<SocketAddr>,
}

impl Default for UpstreamResponse {
    fn default() -> Self {
        UpstreamResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"upstream".to_vec(),
            trailers: Vec::new(),
            address: "127.0.0.1:8080".into(),
            forward: None,
        }
    }
}

/// What happened to one request (see [`crate::Vm::request`]).
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub context_id: u32,
    /// Status the client saw: the local response's, or the upstream's if the request went through.
    pub status: u16,
    /// `Some` if the filter answered locally.
    pub local_response: Option<LocalResponse>,
    /// The request headers as the upstream saw them (`None` if the request never got there).
    pub upstream_request_headers: Option<Headers>,
    /// The request body as the upstream saw it.
    pub upstream_request_body: Option<Vec<u8>>,
    /// The request trailers as the upstream saw them (a filter may add them at the end of
    /// the body).
    pub upstream_request_trailers: Headers,
    /// Response headers the client saw (after the filter's edits).
    pub response_headers: Headers,
    pub response_body: Vec<u8>,
    /// The stream stayed paused: nothing resumed it (no pending callout left to answer).
    pub stuck: bool,
    /// Log lines logged while this request ran (any context of this VM).
    pub logs: Vec<LogEntry>,
    /// `proxy_http_call`s made while this request ran.
    pub http_calls: Vec<HttpCallRequest>,
}

impl Exchange {
    /// Whether the request reached the upstream.
    pub fn allowed(&self) -> bool {
        self.local_response.is_none() && self.upstream_request_headers.is_some()
    }
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_request_headers
            .as_ref()
            .and_then(|h| find_header(h, name))
    }
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find_header(&self.response_headers, name)
    }
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.response_body).ok()
    }
}

/// A `proxy_http_call` as the responder sees it.
#[derive(Debug, Clone, Serialize)]
pub struct HttpCallRequest {
    pub vm: usize,
    pub context_id: u32,
    pub token: u32,
    /// The cluster name.
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout: Duration,
}

impl HttpCallRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn path(&self) -> &str {
        self.header(":path").unwrap_or("")
    }
}

/// How a scripted upstream answers a `proxy_http_call`.
#[derive(Debug, Clone)]
pub enum HttpReply {
    /// Answer after `delay` of virtual time (if that is longer than the call's timeout, the
    /// call times out instead).
    Respond {
        status: u16,
        headers: Headers,
        body: Vec<u8>,
        trailers: Headers,
        delay: Duration,
    },
    /// Never answer: at the call's timeout the filter gets what Envoy's async client
    /// delivers then, a response `504` with `content-type: text/plain` and the body
    /// `upstream request timeout` ([`TIMEOUT_BODY`]).
    Never,
    /// The upstream cannot be reached (connection refused): at once, Envoy's `503` with the
    /// body [`CONNECT_FAILURE_BODY`].
    Fail,
    /// The stream is reset after it started: Envoy's `onFailure`, delivered as 0 headers,
    /// 0 body bytes, 0 trailers.
    Reset,
    /// Forward to a real HTTP/1.1 server on loopback and relay its answer (a connection
    /// failure becomes [`HttpReply::Fail`]).
    Forward(SocketAddr),
}

/// The body of the response Envoy delivers for a callout that timed out (status 504).
pub const TIMEOUT_BODY: &str = "upstream request timeout";
/// The body of the response Envoy delivers for a callout whose upstream cannot be reached
/// (status 503).
pub const CONNECT_FAILURE_BODY: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused";

impl HttpReply {
    pub fn ok(body: impl Into<Vec<u8>>) -> HttpReply {
        HttpReply::status(200, body)
    }
    pub fn status(status: u16, body: impl Into<Vec<u8>>) -> HttpReply {
        HttpReply::Respond {
            status,
            headers: Vec::new(),
            body: body.into(),
            trailers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn json(value: &serde_json::Value) -> HttpReply {
        HttpReply::ok(value.to_string().into_bytes())
            .with_header("content-type", "application/json")
    }
    pub fn with_header(mut self, name: &str, value: &str) -> HttpReply {
        if let HttpReply::Respond { headers, .. } = &mut self {
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
        self
    }
    pub fn after(mut self, d: Duration) -> HttpReply {
        if let HttpReply::Respond { delay, .. } = &mut self {
            *delay = d;
        }
        self
    }
}

/// How a scripted gRPC service answers a `proxy_grpc_call` / `proxy_grpc_stream`.
#[derive(Debug, Clone)]
pub enum GrpcReply {
    Respond {
        /// gRPC status (0 = OK).
        status: u32,
        status_message: String,
        initial_metadata: Headers,
        /// For a call: the one response message. For a stream: each message in turn.
        messages: Vec<Vec<u8>>,
        trailing_metadata: Headers,
        /// For a stream: close it after the messages (else it stays open).
        close: bool,
        delay: Duration,
    },
    /// Never answer: a call closes at its timeout with UNAVAILABLE (14), as Envoy's gRPC
    /// client maps the 504 its HTTP stream gets; a stream stays open.
    Never,
    /// Forward a unary call to a real gRPC server (HTTP/2 cleartext) on loopback and relay
    /// its answer; one that cannot be reached closes with UNAVAILABLE (14).
    Forward(SocketAddr),
}

impl GrpcReply {
    pub fn ok(message: impl Into<Vec<u8>>) -> GrpcReply {
        GrpcReply::Respond {
            status: 0,
            status_message: String::new(),
            initial_metadata: Vec::new(),
            messages: vec![message.into()],
            trailing_metadata: Vec::new(),
            close: true,
            delay: Duration::ZERO,
        }
    }
    /// Answer after `d` of virtual time (a call whose timeout is shorter closes with 14).
    pub fn after(mut self, d: Duration) -> GrpcReply {
        if let GrpcReply::Respond { delay, .. } = &mut self {
            *delay = d;
        }
        self
    }
    pub fn error(status: u32, message: &str) -> GrpcReply {
        GrpcReply::Respond {
            status,
            status_message: message.to_owned(),
            initial_metadata: Vec::new(),
            messages: Vec::new(),
            trailing_metadata: Vec::new(),
            close: true,
            delay: Duration::ZERO,
        }
    }
}

/// A `proxy_grpc_call` or `proxy_grpc_stream` as the responder sees it.
#[derive(Debug, Clone, Serialize)]
pub struct GrpcRequest {
    pub vm: usize,
    pub context_id: u32,
    pub token: u32,
    pub upstream: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: Headers,
    /// The request message (calls only).
    pub message: Vec<u8>,
    pub timeout: Option<Duration>,
    pub streaming: bool,
}

/// A metric's current value.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    /// Counter and gauge value (histograms: the sum of recorded values).
    pub value: i64,
    /// Values recorded into a histogram.
    pub samples: Vec<u64>,
}
