//! Envoy's stream attributes (`request.*`, `response.*`, `upstream.*`), derived when the
//! plugin asks, from the stream as it is then — so a rewritten `:path` shows in
//! `request.path`, and the rules about when Envoy holds the header maps apply to the
//! attributes read from them.
//!
//! Encodings are Envoy's: strings raw, integers int64 little endian, durations and
//! timestamps int64 nanoseconds, maps in the header-map serialisation.

use crate::abi::{serialize_map, status};
use crate::types::find_header;
use crate::vm::{Phase, StreamState};

/// `Some(result)` for a stream attribute Envoy derives, `None` for a path it does not (the
/// host then looks at plugin-level properties).
pub(crate) fn stream_property(s: &StreamState, path: &str) -> Option<Result<Vec<u8>, i32>> {
    let request_headers = s.live.request_headers || s.phase == Phase::Log;
    let response_headers = s.live.response_headers || s.phase == Phase::Log;
    let string = |v: &str| Some(Ok(v.as_bytes().to_vec()));
    let int = |v: i64| Some(Ok(v.to_le_bytes().to_vec()));
    let not_found = Some(Err(status::NOT_FOUND));
    let request_header = |name: &str| -> Option<Result<Vec<u8>, i32>> {
        if !request_headers {
            return Some(Err(status::NOT_FOUND));
        }
        match find_header(&s.request_headers, name) {
            Some(v) => Some(Ok(v.as_bytes().to_vec())),
            None => Some(Err(status::NOT_FOUND)),
        }
    };
    let path_header = || find_header(&s.request_headers, ":path").unwrap_or("");
    match path {
        // The whole map is not serialisable in Envoy (its values are of mixed types).
        "request" | "response" | "connection" | "upstream" | "source" | "destination" => {
            Some(Err(status::SERIALIZATION_FAILURE))
        }
        "request.path" => request_header(":path"),
        "request.url_path" => {
            if !request_headers {
                return not_found;
            }
            let p = path_header();
            string(p.split('?').next().unwrap_or(""))
        }
        "request.query" => {
            if !request_headers {
                return not_found;
            }
            string(path_header().split_once('?').map(|(_, q)| q).unwrap_or(""))
        }
        "request.host" => request_header(":authority"),
        "request.scheme" => request_header(":scheme"),
        "request.method" => request_header(":method"),
        "request.referer" => request_header("referer"),
        "request.useragent" => request_header("user-agent"),
        "request.id" => request_header("x-request-id"),
        // A map Envoy no longer holds reads as an empty map (not NotFound).
        "request.headers" => Some(Ok(serialize_map(&if request_headers {
            joined(&s.request_headers)
        } else {
            Vec::new()
        }))),
        "request.time" => int(s.start_ns as i64),
        "request.duration" => match s.request_complete_ns {
            Some(done) => int(done.saturating_sub(s.start_ns) as i64),
            None => not_found,
        },
        "request.size" => {
            if request_headers {
                if let Some(n) = find_header(&s.request_headers, "content-length")
                    .and_then(|v| v.parse::<i64>().ok())
                {
                    return int(n);
                }
            }
            int(s.request_bytes as i64)
        }
        "request.total_size" => {
            let headers = if request_headers {
                header_bytes(&s.request_headers)
            } else {
                0
            };
            int((s.request_bytes + headers + header_bytes(&s.request_trailers)) as i64)
        }
        "response.code" => match response_code(s) {
            Some(code) => int(code),
            None => not_found,
        },
        "response.code_details" => match &s.response_code_details {
            Some(d) => string(d),
            None => not_found,
        },
        "response.headers" => Some(Ok(serialize_map(&if response_headers {
            joined(&s.response_headers)
        } else {
            Vec::new()
        }))),
        "response.trailers" => Some(Ok(serialize_map(&joined(&s.response_trailers)))),
        "response.size" => int(s.response_bytes as i64),
        "response.total_size" => int((s.response_bytes
            + if response_headers {
                header_bytes(&s.response_headers)
            } else {
                0
            }) as i64),
        "upstream.address" => match &s.upstream_address {
            Some(a) => string(a),
            None => not_found,
        },
        "upstream.port" => match s
            .upstream_address
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<i64>().ok())
        {
            Some(p) => int(p),
            None => not_found,
        },
        _ => {
            if let Some(name) = path.strip_prefix("request.headers.") {
                if !request_headers {
                    return not_found;
                }
                return match joined_value(&s.request_headers, name) {
                    Some(v) => string(&v),
                    None => not_found,
                };
            }
            if let Some(name) = path.strip_prefix("response.headers.") {
                if !response_headers {
                    return not_found;
                }
                return match joined_value(&s.response_headers, name) {
                    Some(v) => string(&v),
                    None => not_found,
                };
            }
            if let Some(name) = path.strip_prefix("response.trailers.") {
                return match joined_value(&s.response_trailers, name) {
                    Some(v) => string(&v),
                    None => not_found,
                };
            }
            None
        }
    }
}

/// The status the client is going to see, once the response has started.
fn response_code(s: &StreamState) -> Option<i64> {
    if let Some(l) = &s.local_response {
        return Some(i64::from(l.status));
    }
    if s.phase == Phase::Request {
        return None;
    }
    find_header(&s.response_headers, ":status").and_then(|v| v.parse().ok())
}

/// Envoy's `byteSize()` of a header map: the lengths of every name and value.
fn header_bytes(h: &[(String, String)]) -> u64 {
    h.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

/// A header's values joined by `,` (how Envoy's attribute maps show a repeated header).
fn joined_value(h: &[(String, String)], name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let values: Vec<&str> = h
        .iter()
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// One entry per header name, repeated values joined.
fn joined(h: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in h {
        match out.iter_mut().find(|(n, _)| n == k) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(v);
            }
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}
