//! proxy-wasm ABI 0.2.1 constants and the header-map wire format.

/// `WasmResult` / `Status` codes returned by host functions.
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const SERIALIZATION_FAILURE: i32 = 3;
    pub const PARSE_FAILURE: i32 = 4;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const BROKEN_CONNECTION: i32 = 11;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// Filter actions returned by stream callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub fn from_i32(v: i32) -> Action {
        if v == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// Log levels of `proxy_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_i32(v: i32) -> LogLevel {
        match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_i32(v: i32) -> Option<MetricKind> {
        match v {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }
}

pub mod map_type {
    pub const HTTP_REQUEST_HEADERS: i32 = 0;
    pub const HTTP_REQUEST_TRAILERS: i32 = 1;
    pub const HTTP_RESPONSE_HEADERS: i32 = 2;
    pub const HTTP_RESPONSE_TRAILERS: i32 = 3;
    pub const GRPC_RECEIVE_INITIAL_METADATA: i32 = 4;
    pub const GRPC_RECEIVE_TRAILING_METADATA: i32 = 5;
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;

    /// A map type of ABI 0.2.1 (others are BadArgument).
    pub fn is_known(map: i32) -> bool {
        (HTTP_REQUEST_HEADERS..=HTTP_CALL_RESPONSE_TRAILERS).contains(&map)
    }
}

pub mod buffer_type {
    pub const HTTP_REQUEST_BODY: i32 = 0;
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    pub const DOWNSTREAM_DATA: i32 = 2;
    pub const UPSTREAM_DATA: i32 = 3;
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub const GRPC_RECEIVE_BUFFER: i32 = 5;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
    pub const CALL_DATA: i32 = 8;
}

/// A header map as stored by the host: lower-case names, values as text.
pub type Headers = Vec<(String, String)>;

/// Serialises a header map the way proxy-wasm 0.2.1 hosts hand it to the guest:
/// `u32 count`, then `count` × (`u32 key_len`, `u32 value_len`), then every key and value,
/// each followed by a NUL byte. All integers little endian.
pub fn serialize_map(pairs: &[(String, String)]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in pairs {
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses the serialisation of [`serialize_map`]. `None` if malformed.
pub fn deserialize_map(bytes: &[u8]) -> Option<Headers> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let n = u32_at(0)?;
    let mut sizes = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(sizes.len());
    for (kl, vl) in sizes {
        let k = bytes.get(at..at + kl)?;
        at += kl + 1;
        let v = bytes.get(at..at + vl)?;
        at += vl + 1;
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Some(out)
}

/// All host functions of proxy-wasm ABI 0.2.1 (plus a few older/newer names Envoy also
/// exports) that the harness defines.
pub const HOST_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_call_foreign_function",
    "proxy_done",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
];

/// The cluster a gRPC call names. Envoy takes the `upstream` argument as a serialized
/// `envoy.config.core.v3.GrpcService` when it parses as one (`envoy_grpc.cluster_name`, fields
/// 1.1) and as a bare cluster name otherwise; filters that must not depend on which form the
/// host expects send the message.
pub fn grpc_cluster(upstream: &[u8]) -> String {
    use crate::foreign::{parse_fields, Value};
    let field_one = |message: &[u8]| {
        parse_fields(message)?
            .into_iter()
            .find_map(|(number, value)| match (number, value) {
                (1, Value::Bytes(bytes)) => Some(bytes),
                _ => None,
            })
    };
    let name = field_one(upstream)
        .and_then(|envoy_grpc| field_one(&envoy_grpc))
        .and_then(|name| String::from_utf8(name).ok())
        .filter(|name| !name.is_empty());
    name.unwrap_or_else(|| String::from_utf8_lossy(upstream).into_owned())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn header_map_round_trip_and_layout() {
        let pairs = vec![
            (":path".to_owned(), "/a".to_owned()),
            ("x".to_owned(), String::new()),
        ];
        let bytes = serialize_map(&pairs);
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &5u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(&bytes[20..], b":path\0/a\0x\0\0");
        assert_eq!(deserialize_map(&bytes), Some(pairs));
        assert_eq!(deserialize_map(&bytes[..10]), None);
        assert_eq!(deserialize_map(&[]), Some(Vec::new()));
    }

    #[test]
    fn grpc_cluster_reads_a_grpc_service_or_a_bare_name() {
        let service = |name: &str| {
            let mut inner = vec![0x0a, name.len() as u8];
            inner.extend_from_slice(name.as_bytes());
            let mut outer = vec![0x0a, inner.len() as u8];
            outer.extend(inner);
            outer
        };
        assert_eq!(grpc_cluster(&service("ratelimit")), "ratelimit");
        assert_eq!(grpc_cluster(b"ratelimit"), "ratelimit");
        // A truncated or trailing-garbage message is a (strange) bare name, as in Envoy.
        let mut long = service("ratelimit");
        long.push(0);
        assert_eq!(grpc_cluster(&long), String::from_utf8_lossy(&long));
        assert_eq!(grpc_cluster(&service("ratelimit")[..5]).len(), 5);
        assert_eq!(grpc_cluster(&[]), "");
    }
}
