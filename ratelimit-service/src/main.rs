//! `portcullis-ratelimit`: Envoy's rate-limit service protocol (RLS v3,
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) over gRPC, counting with
//! Kuadrant's Limitador on Redis. No counting logic of its own: limits, windows and atomicity
//! are Limitador's and Redis's; the limits come from a YAML file in Limitador's format
//! (`ratelimit-service/limits.yaml`).
//!
//! Each descriptor of a request is checked (and counted) as its own Limitador context
//! (an atomic reservation, then its commit),
//! `descriptors[0]` being that descriptor's entries, with the descriptor's `hits_addend`, else
//! the request's, else 1. The answer has one `DescriptorStatus` per descriptor, from the most
//! restrictive counter that applied.
//!
//! An admin HTTP listener serves `/metrics` (Prometheus text), `/counters` (JSON, for tests)
//! and the test-only fault knob `/fault?delay_ms=N&garbage=0|1` (answer late; answer bytes that
//! are no `RateLimitResponse`).

use clap::Parser;
use envoy_types::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::{rate_limit::Unit, Code, DescriptorStatus, RateLimit},
    RateLimitRequest, RateLimitResponse,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use limitador::counter::Counter;
use limitador::limit::{Context, Limit, Namespace};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::AsyncRateLimiter;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::Status;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Envoy rate-limit service (RLS v3) on Limitador + Redis"
)]
struct Args {
    /// The gRPC (HTTP/2) listener.
    #[arg(long, default_value = "127.0.0.1:8081")]
    grpc: SocketAddr,
    /// The admin listener: /metrics, /counters, /fault.
    #[arg(long, default_value = "127.0.0.1:8082")]
    admin: SocketAddr,
    /// Redis, e.g. redis://127.0.0.1:6379.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Limits in Limitador's format (namespace = the RLS domain).
    #[arg(long, default_value = "ratelimit-service/limits.yaml")]
    limits: PathBuf,
    /// Test knob: answer every call this much later.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

/// Answers by outcome, overall and per limit name.
#[derive(Default, Debug, serde::Serialize, Clone)]
struct Counts {
    requests: u64,
    ok: u64,
    over_limit: u64,
    /// Calls that failed (Redis unreachable, a request that is no `RateLimitRequest`).
    error: u64,
    /// Hits admitted and refused per limit name (descriptor statuses).
    admitted_hits: BTreeMap<String, u64>,
    limited_hits: BTreeMap<String, u64>,
}

struct State {
    limiter: AsyncRateLimiter,
    counts: Mutex<Counts>,
    delay_ms: AtomicU64,
    garbage: AtomicBool,
}

impl State {
    fn count(&self, update: impl FnOnce(&mut Counts)) {
        if let Ok(mut counts) = self.counts.lock() {
            update(&mut counts);
        }
    }

    async fn should_rate_limit(&self, request: RateLimitRequest) -> Result<Vec<u8>, Status> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.garbage.load(Ordering::Relaxed) {
            // A length-delimited field that runs past the end: no protobuf message at all.
            return Ok(vec![0x12, 0x7f, 0x08]);
        }
        let namespace = Namespace::from(request.domain.as_str());
        let mut response = RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        };
        for descriptor in &request.descriptors {
            let entries: HashMap<String, String> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let mut ctx = Context::default();
            ctx.list_binding("descriptors".into(), vec![entries]);
            let hits = descriptor
                .hits_addend
                .as_ref()
                .map(|h| h.value)
                .filter(|h| *h > 0)
                .or(Some(u64::from(request.hits_addend)).filter(|h| *h > 0))
                .unwrap_or(1);
            let storage_error = |e: limitador::errors::LimitadorError| {
                eprintln!("portcullis-ratelimit: storage error: {e}");
                Status::unavailable("counter storage unavailable")
            };
            // Reserve, then commit: the reservation is one Redis script that checks and holds
            // atomically, so concurrent calls never admit past the limit (Limitador's
            // check-then-increment, `check_rate_limited_and_update`, reads before it writes).
            let mut result = self
                .limiter
                .reserve(&namespace, &ctx, hits, None)
                .await
                .map_err(storage_error)?;
            if !result.limited {
                self.limiter
                    .commit_reservation(&namespace, &ctx, result.reservation_id.as_ref(), hits)
                    .await
                    .map_err(storage_error)?;
            }
            let status = descriptor_status(result.limited, &mut result.counters);
            let name = status
                .current_limit
                .as_ref()
                .map(|l| l.name.clone())
                .unwrap_or_default();
            if result.limited {
                response.overall_code = Code::OverLimit as i32;
                self.count(|c| *c.limited_hits.entry(name).or_default() += hits);
            } else if status.current_limit.is_some() {
                self.count(|c| *c.admitted_hits.entry(name).or_default() += hits);
            }
            response.statuses.push(status);
        }
        let over = response.overall_code == Code::OverLimit as i32;
        self.count(|c| if over { c.over_limit += 1 } else { c.ok += 1 });
        Ok(response.encode_to_vec())
    }
}

/// The status of one descriptor: the most restrictive counter that applied (least remaining).
fn descriptor_status(limited: bool, counters: &mut [Counter]) -> DescriptorStatus {
    counters.sort_by_key(|c| c.remaining().unwrap_or(c.max_value()));
    let code = if limited { Code::OverLimit } else { Code::Ok };
    let Some(counter) = counters.first() else {
        return DescriptorStatus {
            code: code as i32,
            ..Default::default()
        };
    };
    let unit = match counter.window().as_secs() {
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    };
    let reset = counter.expires_in().unwrap_or(counter.window());
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: counter.limit().name().unwrap_or_default().to_owned(),
            requests_per_unit: u32::try_from(counter.max_value()).unwrap_or(u32::MAX),
            unit: unit as i32,
        }),
        limit_remaining: u32::try_from(counter.remaining().unwrap_or(0)).unwrap_or(u32::MAX),
        duration_until_reset: Some(PbDuration {
            seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
        }),
        ..Default::default()
    }
}

/// Messages as bytes: the handler decodes and encodes with prost itself, so that the fault
/// knob can answer bytes that are no message.
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }
    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

/// The one method.
struct ShouldRateLimit(Arc<State>);

impl UnaryService<Vec<u8>> for ShouldRateLimit {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, Status>;
    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            state.count(|c| c.requests += 1);
            let result = match RateLimitRequest::decode(request.into_inner().as_slice()) {
                Ok(request) => state.should_rate_limit(request).await,
                Err(_) => Err(Status::invalid_argument("not a RateLimitRequest")),
            };
            if result.is_err() {
                state.count(|c| c.error += 1);
            }
            result.map(tonic::Response::new)
        })
    }
}

/// The gRPC service: routes `ShouldRateLimit`, answers anything else `UNIMPLEMENTED`.
#[derive(Clone)]
struct RateLimitService(Arc<State>);

const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

impl NamedService for RateLimitService {
    const NAME: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
}

impl<B> tonic::codegen::Service<http::Request<B>> for RateLimitService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<http::Response<Body>, std::convert::Infallible>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            if request.uri().path() != PATH {
                return Ok(Status::unimplemented("only ShouldRateLimit").into_http());
            }
            let mut grpc = Grpc::new(BytesCodec);
            Ok(grpc.unary(ShouldRateLimit(state), request).await)
        })
    }
}

fn prometheus(counts: &Counts) -> String {
    let mut out = String::from("# TYPE portcullis_rls_calls_total counter\n");
    for (outcome, n) in [
        ("ok", counts.ok),
        ("over_limit", counts.over_limit),
        ("error", counts.error),
    ] {
        out.push_str(&format!(
            "portcullis_rls_calls_total{{outcome=\"{outcome}\"}} {n}\n"
        ));
    }
    out.push_str("# TYPE portcullis_rls_hits_total counter\n");
    for (outcome, by_limit) in [
        ("admitted", &counts.admitted_hits),
        ("limited", &counts.limited_hits),
    ] {
        for (limit, n) in by_limit {
            out.push_str(&format!(
                "portcullis_rls_hits_total{{limit=\"{limit}\",outcome=\"{outcome}\"}} {n}\n"
            ));
        }
    }
    out
}

/// The admin listener: one request per connection, HTTP/1.0 style.
async fn admin(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            let mut read = 0;
            while read < buffer.len() {
                match stream.read(&mut buffer[read..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
                if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buffer[..read]);
            let target = head.split_whitespace().nth(1).unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let counts = state.counts.lock().map(|c| c.clone()).unwrap_or_default();
            let (status, content_type, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", prometheus(&counts)),
                "/counters" => (
                    "200 OK",
                    "application/json",
                    serde_json::to_string(&counts).unwrap_or_default(),
                ),
                "/fault" => {
                    for pair in query.split('&') {
                        match pair.split_once('=') {
                            Some(("delay_ms", v)) => {
                                state
                                    .delay_ms
                                    .store(v.parse().unwrap_or(0), Ordering::Relaxed);
                            }
                            Some(("garbage", v)) => {
                                state.garbage.store(v == "1", Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                    eprintln!(
                        "portcullis-ratelimit: fault knob: delay_ms={} garbage={}",
                        state.delay_ms.load(Ordering::Relaxed),
                        state.garbage.load(Ordering::Relaxed)
                    );
                    ("200 OK", "text/plain", "ok\n".to_owned())
                }
                "/ready" => ("200 OK", "text/plain", "ready\n".to_owned()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// One log line every 10 s while the counts move.
async fn log_counts(state: Arc<State>) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let Ok(counts) = state.counts.lock().map(|c| c.clone()) else {
            continue;
        };
        if counts.requests != last {
            last = counts.requests;
            eprintln!(
                "portcullis-ratelimit: calls {} (ok {}, over_limit {}, error {})",
                counts.requests, counts.ok, counts.over_limit, counts.error
            );
        }
    }
}

fn load_limits(path: &PathBuf) -> Result<Vec<Limit>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let limits = load_limits(&args.limits)?;
    let storage = AsyncRedisStorage::new(&args.redis)
        .await
        .map_err(|e| format!("redis {}: {e}", args.redis))?;
    let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
    let count = limits.len();
    limiter
        .configure_with(limits)
        .await
        .map_err(|e| format!("limits: {e}"))?;
    let state = Arc::new(State {
        limiter,
        counts: Mutex::new(Counts::default()),
        delay_ms: AtomicU64::new(args.delay_ms),
        garbage: AtomicBool::new(false),
    });
    let admin_listener = tokio::net::TcpListener::bind(args.admin).await?;
    tokio::spawn(admin(admin_listener, Arc::clone(&state)));
    tokio::spawn(log_counts(Arc::clone(&state)));
    eprintln!(
        "portcullis-ratelimit: {count} limits from {}, redis {}, gRPC on {}, admin on {}",
        args.limits.display(),
        args.redis,
        args.grpc,
        args.admin
    );
    tonic::transport::Server::builder()
        .add_service(RateLimitService(state))
        .serve_with_shutdown(args.grpc, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
