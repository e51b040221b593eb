//! Forwarding `proxy_http_call`s to a real HTTP/1.1 server on loopback.

use crate::abi::Headers;
use crate::types::HttpCallRequest;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

type Reply = (u16, Headers, Vec<u8>, Headers);

pub(crate) fn forward(addr: SocketAddr, req: &HttpCallRequest) -> Result<Reply, String> {
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address"));
    }
    let timeout = if req.timeout.is_zero() {
        Duration::from_secs(5)
    } else {
        req.timeout
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    let method = req.header(":method").unwrap_or("GET");
    let path = req.header(":path").unwrap_or("/");
    let authority = req.header(":authority").unwrap_or("localhost");
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\n");
    for (k, v) in &req.headers {
        if k.starts_with(':') || k == "host" || k == "content-length" || k == "connection" {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        req.body.len()
    ));
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    stream.write_all(&req.body).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Reply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete response head")?;
    let head = String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let mut headers = Vec::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut body = raw.get(end + 4..).unwrap_or_default().to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
        headers.retain(|(k, _)| k != "transfer-encoding");
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok((status, headers, body, Vec::new()))
}

#[allow(clippy::while_let_loop)]
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = data.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size_text = String::from_utf8_lossy(data.get(..nl).unwrap_or_default()).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = nl + 2;
        match data.get(start..start + size) {
            Some(chunk) => out.extend_from_slice(chunk),
            None => break,
        }
        data = data.get(start + size + 2..).unwrap_or_default();
    }
    out
}
