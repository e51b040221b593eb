//! Forwarding a unary gRPC call to a real gRPC server (HTTP/2 cleartext, "prior knowledge")
//! on loopback: the request as Envoy's gRPC client frames it, the answer relayed as
//! `(grpc-status, grpc-message, response message)`.

use crate::types::GrpcRequest;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a forwarded call may take in real time when the plugin set no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `req` to the server at `addr` (loopback only) and waits for its answer.
pub(crate) fn call(addr: SocketAddr, req: &GrpcRequest) -> Result<(u32, String, Vec<u8>), String> {
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let timeout = req
        .timeout
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_TIMEOUT);
    runtime.block_on(async {
        match tokio::time::timeout(timeout, exchange(addr, req)).await {
            Ok(r) => r,
            // What Envoy's client reports for a call past its deadline.
            Err(_) => Ok((14, String::new(), Vec::new())),
        }
    })
}

async fn exchange(addr: SocketAddr, req: &GrpcRequest) -> Result<(u32, String, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/{}/{}",
            req.upstream, req.service, req.method
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in &req.initial_metadata {
        if !k.starts_with(':') {
            builder = builder.header(k.as_str(), v.as_str());
        }
    }
    if let Some(t) = req.timeout.filter(|t| !t.is_zero()) {
        builder = builder.header("grpc-timeout", format!("{}m", t.as_millis()));
    }
    let request = builder.body(()).map_err(|e| format!("request: {e}"))?;
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| format!("send: {e}"))?;
    // One length-prefixed, uncompressed message.
    let mut framed = Vec::with_capacity(req.message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(req.message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&req.message);
    send.send_data(framed.into(), true)
        .map_err(|e| format!("send: {e}"))?;
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    let (head, mut body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        let code = crate::vm::http_to_grpc_status(u32::from(head.status.as_u16()));
        return Ok((code, String::new(), Vec::new()));
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("response body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("trailers: {e}"))?;
    // A trailers-only answer carries the status in the headers.
    let status_map = trailers.as_ref().unwrap_or(&head.headers);
    let code = status_map
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(2);
    let message = status_map
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let payload = data
        .get(5..)
        .and_then(|rest| {
            let len = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as usize;
            rest.get(..len)
        })
        .unwrap_or_default()
        .to_vec();
    Ok((code, message, payload))
}
