//! Envoy's rate-limit service protocol (`envoy.service.ratelimit.v3`), the two messages the
//! filter needs, on the protobuf wire format by hand: a generated-code crate (prost and the
//! Envoy protos) would cost the module far more bytes than these two hundred lines.
//! The encoding is tested natively against the prost types of the `envoy-types` crate.
//!
//! `RateLimitRequest { string domain = 1; repeated RateLimitDescriptor descriptors = 2; }`,
//! `RateLimitDescriptor { repeated Entry entries = 1; google.protobuf.UInt64Value hits_addend = 3; }`,
//! `Entry { string key = 1; string value = 2; }`.
//!
//! `RateLimitResponse { Code overall_code = 1; repeated DescriptorStatus statuses = 2;
//! repeated HeaderValue response_headers_to_add = 3; repeated HeaderValue request_headers_to_add = 4; … }`,
//! `DescriptorStatus { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
//! google.protobuf.Duration duration_until_reset = 4; … }`,
//! `RateLimit { uint32 requests_per_unit = 1; Unit unit = 2; string name = 3; }`,
//! `HeaderValue { string key = 1; string value = 2; bytes raw_value = 3; }`.
//! Unknown fields are skipped, as protobuf requires.

/// `service/method` of the call, as `proxy_dispatch_grpc_call` takes them.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// The `upstream` of `proxy_dispatch_grpc_call` for an Envoy cluster: a serialized
/// `envoy.config.core.v3.GrpcService { envoy_grpc: { cluster_name } }`, not the bare name.
/// Envoy takes either; for a bare name it looks the cluster up first and answers an unknown one
/// with `BadArgument`, a status the proxy-wasm SDK's `dispatch_grpc_call` panics on (a trap
/// that would kill the worker's VM). For a `GrpcService` Envoy skips that lookup, and a missing
/// cluster fails the call like any unreachable service. `None` for a name of 120 bytes or more
/// (its length prefix would not be one byte, and so not UTF-8 text).
pub fn grpc_service_for_cluster(cluster: &str) -> Option<String> {
    let name_len = u8::try_from(cluster.len()).ok().filter(|n| *n < 120)?;
    let mut out = String::with_capacity(cluster.len() + 4);
    out.push('\u{a}'); // field 1 (envoy_grpc), length-delimited
    out.push(char::from(name_len + 2));
    out.push('\u{a}'); // EnvoyGrpc field 1 (cluster_name), length-delimited
    out.push(char::from(name_len));
    out.push_str(cluster);
    Some(out)
}

/// One descriptor: its entries, in order, and an optional per-descriptor hit count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    pub hits_addend: Option<u64>,
}

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Code {
    #[default]
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(value: u64) -> Code {
        match value {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.RateLimit`: the limit the service applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CurrentLimit {
    pub name: String,
    pub requests_per_unit: u32,
    /// The unit in seconds (`0` for an unknown unit).
    pub unit_s: u64,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorStatus {
    pub code: Code,
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u32,
    /// `duration_until_reset`, in whole seconds rounded up; `None` if absent.
    pub reset_s: Option<u64>,
}

/// `RateLimitResponse`, the fields Envoy's own filter acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
    pub response_headers_to_add: Vec<(String, String)>,
    pub request_headers_to_add: Vec<(String, String)>,
}

/// Why a reply could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Deepest message nesting a reply may use (the response is three levels deep).
const MAX_DEPTH: usize = 4;

/// Seconds of `RateLimit.Unit`: SECOND=1, MINUTE=2, HOUR=3, DAY=4, MONTH=5, YEAR=6, WEEK=7.
fn unit_seconds(unit: u64) -> u64 {
    match unit {
        1 => 1,
        2 => 60,
        3 => 3600,
        4 => 86_400,
        5 => 30 * 86_400,
        6 => 365 * 86_400,
        7 => 7 * 86_400,
        _ => 0,
    }
}

// ---- encoding ----

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A nested message: encoded into a scratch buffer first, then length-prefixed.
fn put_message(out: &mut Vec<u8>, field: u32, encode: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    encode(&mut inner);
    put_bytes(out, field, &inner);
}

/// `RateLimitRequest { domain, descriptors }` in protobuf wire format, byte for byte what
/// prost writes (proto3: empty strings and zero values are omitted).
pub fn encode_request(domain: &str, descriptors: &[Descriptor]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    if !domain.is_empty() {
        put_bytes(&mut out, 1, domain.as_bytes());
    }
    for descriptor in descriptors {
        put_message(&mut out, 2, |d| {
            for (key, value) in &descriptor.entries {
                put_message(d, 1, |e| {
                    for (field, text) in [(1, key), (2, value)] {
                        if !text.is_empty() {
                            put_bytes(e, field, text.as_bytes());
                        }
                    }
                });
            }
            if let Some(hits) = descriptor.hits_addend {
                put_message(d, 3, |w| {
                    if hits != 0 {
                        put_tag(w, 1, 0);
                        put_varint(w, hits);
                    }
                });
            }
        });
    }
    out
}

// ---- decoding ----

/// One field of a message: its number and its value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32/64-bit values: skipped by every message here.
    Fixed,
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first().ok_or(Malformed)?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Malformed> {
        if len > self.rest.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    /// The next field, or `None` at the end of the message.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, Malformed> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 {
            return Err(Malformed);
        }
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            // Groups (3, 4) are not used by these protos; 6 and 7 do not exist.
            _ => return Err(Malformed),
        };
        Ok(Some((number, value)))
    }
}

/// Calls `each` for every field of `bytes`.
fn fields<'a>(
    bytes: &'a [u8],
    mut each: impl FnMut(u64, Value<'a>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    let mut reader = Reader::new(bytes);
    while let Some((number, value)) = reader.field()? {
        each(number, value)?;
    }
    Ok(())
}

fn string(bytes: &[u8]) -> Result<String, Malformed> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| Malformed)
}

fn header_value(bytes: &[u8], depth: usize) -> Result<(String, String), Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    let (mut key, mut value, mut raw) = (String::new(), String::new(), None);
    fields(bytes, |number, v| {
        match (number, v) {
            (1, Value::Bytes(b)) => key = string(b)?,
            (2, Value::Bytes(b)) => value = string(b)?,
            (3, Value::Bytes(b)) => raw = Some(string(b)?),
            (1..=3, _) => return Err(Malformed),
            _ => {}
        }
        Ok(())
    })?;
    // Envoy prefers `raw_value` when it is set.
    Ok((key, raw.filter(|r| !r.is_empty()).unwrap_or(value)))
}

fn current_limit(bytes: &[u8]) -> Result<CurrentLimit, Malformed> {
    let mut limit = CurrentLimit::default();
    fields(bytes, |number, v| {
        match (number, v) {
            (1, Value::Varint(n)) => limit.requests_per_unit = n as u32,
            (2, Value::Varint(n)) => limit.unit_s = unit_seconds(n),
            (3, Value::Bytes(b)) => limit.name = string(b)?,
            (1..=3, _) => return Err(Malformed),
            _ => {}
        }
        Ok(())
    })?;
    Ok(limit)
}

/// `google.protobuf.Duration` → whole seconds, rounded up; negative durations are zero.
fn duration_s(bytes: &[u8]) -> Result<u64, Malformed> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    fields(bytes, |number, v| {
        match (number, v) {
            (1, Value::Varint(n)) => seconds = n as i64,
            (2, Value::Varint(n)) => nanos = i64::from(n as i32),
            (1 | 2, _) => return Err(Malformed),
            _ => {}
        }
        Ok(())
    })?;
    let whole = u64::try_from(seconds).unwrap_or(0);
    Ok(if nanos > 0 {
        whole.saturating_add(1)
    } else {
        whole
    })
}

fn descriptor_status(bytes: &[u8]) -> Result<DescriptorStatus, Malformed> {
    let mut status = DescriptorStatus::default();
    fields(bytes, |number, v| {
        match (number, v) {
            (1, Value::Varint(n)) => status.code = Code::from_wire(n),
            (2, Value::Bytes(b)) => status.current_limit = Some(current_limit(b)?),
            (3, Value::Varint(n)) => status.limit_remaining = n as u32,
            (4, Value::Bytes(b)) => status.reset_s = Some(duration_s(b)?),
            (1..=4, _) => return Err(Malformed),
            _ => {}
        }
        Ok(())
    })?;
    Ok(status)
}

/// Most statuses and headers a reply may carry: a reply is about one request's descriptors.
const MAX_REPEATED: usize = 256;

/// Reads a `RateLimitResponse`. Anything that is not one (truncated, wrong wire types, bad
/// UTF-8, too many entries) is [`Malformed`].
pub fn decode_response(bytes: &[u8]) -> Result<Response, Malformed> {
    let mut response = Response::default();
    fields(bytes, |number, v| {
        match (number, v) {
            (1, Value::Varint(n)) => response.overall_code = Code::from_wire(n),
            (2, Value::Bytes(b)) => response.statuses.push(descriptor_status(b)?),
            (3, Value::Bytes(b)) => response.response_headers_to_add.push(header_value(b, 1)?),
            (4, Value::Bytes(b)) => response.request_headers_to_add.push(header_value(b, 1)?),
            (1..=4, _) => return Err(Malformed),
            _ => {}
        }
        let repeated = response.statuses.len()
            + response.response_headers_to_add.len()
            + response.request_headers_to_add.len();
        if repeated > MAX_REPEATED {
            return Err(Malformed);
        }
        Ok(())
    })?;
    Ok(response)
}

/// A `RateLimitResponse` in wire format, for tests of the filter and the harness.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let code = |c: Code| match c {
        Code::Unknown => 0,
        Code::Ok => 1,
        Code::OverLimit => 2,
    };
    let mut out = Vec::new();
    if response.overall_code != Code::Unknown {
        put_tag(&mut out, 1, 0);
        put_varint(&mut out, code(response.overall_code));
    }
    for status in &response.statuses {
        put_message(&mut out, 2, |s| {
            put_tag(s, 1, 0);
            put_varint(s, code(status.code));
            if let Some(limit) = &status.current_limit {
                put_message(s, 2, |l| {
                    put_tag(l, 1, 0);
                    put_varint(l, u64::from(limit.requests_per_unit));
                    let unit = match limit.unit_s {
                        1 => 1,
                        60 => 2,
                        3600 => 3,
                        86_400 => 4,
                        _ => 0,
                    };
                    put_tag(l, 2, 0);
                    put_varint(l, unit);
                    put_bytes(l, 3, limit.name.as_bytes());
                });
            }
            put_tag(s, 3, 0);
            put_varint(s, u64::from(status.limit_remaining));
            if let Some(reset) = status.reset_s {
                put_message(s, 4, |d| {
                    put_tag(d, 1, 0);
                    put_varint(d, reset);
                });
            }
        });
    }
    for (field, headers) in [
        (3, &response.response_headers_to_add),
        (4, &response.request_headers_to_add),
    ] {
        for (key, value) in headers {
            put_message(&mut out, field, |h| {
                put_bytes(h, 1, key.as_bytes());
                put_bytes(h, 2, value.as_bytes());
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::Entry, RateLimitDescriptor,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::{
        rate_limit_response::{self, rate_limit::Unit, DescriptorStatus as PbStatus},
        RateLimitRequest, RateLimitResponse,
    };
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt64Value};
    use proptest::prelude::*;
    use prost::Message;

    fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> Descriptor {
        Descriptor {
            entries: entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            hits_addend: hits,
        }
    }

    #[test]
    fn the_upstream_is_envoys_grpc_service() {
        use envoy_types::pb::envoy::config::core::v3::{grpc_service, GrpcService};
        let upstream = grpc_service_for_cluster("ratelimit").unwrap();
        let service = GrpcService::decode(upstream.as_bytes()).unwrap();
        let Some(grpc_service::TargetSpecifier::EnvoyGrpc(envoy)) = service.target_specifier else {
            panic!("{service:?}")
        };
        assert_eq!(envoy.cluster_name, "ratelimit");
        let long = "c".repeat(119);
        let service = GrpcService::decode(grpc_service_for_cluster(&long).unwrap().as_bytes());
        assert!(service.is_ok());
        assert_eq!(grpc_service_for_cluster(&"c".repeat(120)), None);
    }

    #[test]
    fn request_decodes_as_envoys_proto() {
        let bytes = encode_request(
            "portcullis",
            &[
                descriptor(&[("tenant", "acme"), ("path", "/api/ü")], None),
                descriptor(&[("user", "")], Some(7)),
            ],
        );
        let decoded = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        let expected = RateLimitRequest {
            domain: "portcullis".into(),
            descriptors: vec![
                RateLimitDescriptor {
                    entries: vec![
                        Entry {
                            key: "tenant".into(),
                            value: "acme".into(),
                        },
                        Entry {
                            key: "path".into(),
                            value: "/api/ü".into(),
                        },
                    ],
                    ..Default::default()
                },
                RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "user".into(),
                        value: String::new(),
                    }],
                    hits_addend: Some(UInt64Value { value: 7 }),
                    ..Default::default()
                },
            ],
            hits_addend: 0,
        };
        assert_eq!(decoded, expected);
        // Byte-identical to prost's own encoding (same field order, proto3 defaults omitted).
        assert_eq!(bytes, expected.encode_to_vec());
    }

    #[test]
    fn response_from_envoys_proto_is_read() {
        let pb = RateLimitResponse {
            overall_code: rate_limit_response::Code::OverLimit as i32,
            statuses: vec![
                PbStatus {
                    code: rate_limit_response::Code::Ok as i32,
                    limit_remaining: 9,
                    ..Default::default()
                },
                PbStatus {
                    code: rate_limit_response::Code::OverLimit as i32,
                    current_limit: Some(rate_limit_response::RateLimit {
                        name: "per-tenant".into(),
                        requests_per_unit: 100,
                        unit: Unit::Minute as i32,
                    }),
                    limit_remaining: 0,
                    duration_until_reset: Some(PbDuration {
                        seconds: 41,
                        nanos: 500,
                    }),
                    ..Default::default()
                },
            ],
            response_headers_to_add: vec![HeaderValue {
                key: "x-rls".into(),
                value: "yes".into(),
                ..Default::default()
            }],
            request_headers_to_add: vec![HeaderValue {
                key: "x-raw".into(),
                value: "ignored".into(),
                raw_value: b"raw".to_vec(),
            }],
            ..Default::default()
        };
        let response = decode_response(&pb.encode_to_vec()).unwrap();
        assert_eq!(response.overall_code, Code::OverLimit);
        assert_eq!(
            response.statuses,
            vec![
                DescriptorStatus {
                    code: Code::Ok,
                    current_limit: None,
                    limit_remaining: 9,
                    reset_s: None,
                },
                DescriptorStatus {
                    code: Code::OverLimit,
                    current_limit: Some(CurrentLimit {
                        name: "per-tenant".into(),
                        requests_per_unit: 100,
                        unit_s: 60,
                    }),
                    limit_remaining: 0,
                    reset_s: Some(42),
                },
            ]
        );
        assert_eq!(
            response.response_headers_to_add,
            vec![("x-rls".to_owned(), "yes".to_owned())]
        );
        assert_eq!(
            response.request_headers_to_add,
            vec![("x-raw".to_owned(), "raw".to_owned())]
        );
    }

    #[test]
    fn every_unit_is_known() {
        for (unit, seconds) in [
            (Unit::Second, 1),
            (Unit::Minute, 60),
            (Unit::Hour, 3600),
            (Unit::Day, 86_400),
            (Unit::Week, 604_800),
            (Unit::Month, 2_592_000),
            (Unit::Year, 31_536_000),
            (Unit::Unknown, 0),
        ] {
            assert_eq!(unit_seconds(unit as u64), seconds, "{unit:?}");
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [
            &b"\x0a"[..],                // a length-delimited field with no length
            b"\x12\x05abc",              // a status longer than the message
            b"\x08",                     // a varint with no value
            b"\x0b",                     // a group
            b"\x00\x01",                 // field number 0
            b"\x12\x02\x08",             // a truncated status
            b"\x1a\x04\x0a\x02\xff\xfe", // a header key that is not UTF-8
            b"\x10\x01",                 // statuses as a varint
        ] {
            assert_eq!(decode_response(bytes), Err(Malformed), "{bytes:?}");
        }
        assert_eq!(decode_response(b""), Ok(Response::default()));
    }

    #[test]
    fn too_many_statuses_are_malformed() {
        let response = Response {
            overall_code: Code::Ok,
            statuses: vec![DescriptorStatus::default(); MAX_REPEATED + 1],
            ..Default::default()
        };
        assert_eq!(decode_response(&encode_response(&response)), Err(Malformed));
    }

    fn arb_code() -> impl Strategy<Value = Code> {
        prop_oneof![Just(Code::Unknown), Just(Code::Ok), Just(Code::OverLimit)]
    }

    fn arb_status() -> impl Strategy<Value = DescriptorStatus> {
        (
            arb_code(),
            proptest::option::of((
                "[a-z-]{0,12}",
                any::<u32>(),
                prop_oneof![Just(1u64), Just(60), Just(3600), Just(86_400)],
            )),
            any::<u32>(),
            proptest::option::of(0u64..1_000_000),
        )
            .prop_map(|(code, limit, limit_remaining, reset_s)| DescriptorStatus {
                code,
                current_limit: limit.map(|(name, requests_per_unit, unit_s)| CurrentLimit {
                    name,
                    requests_per_unit,
                    unit_s,
                }),
                limit_remaining,
                reset_s,
            })
    }

    proptest! {
        #[test]
        fn requests_round_trip_through_prost(
            domain in "[a-z]{0,10}",
            descriptors in proptest::collection::vec(
                (proptest::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..4), proptest::option::of(any::<u64>())),
                0..4,
            ),
        ) {
            let descriptors: Vec<Descriptor> = descriptors
                .into_iter()
                .map(|(entries, hits_addend)| Descriptor { entries, hits_addend })
                .collect();
            let decoded = RateLimitRequest::decode(encode_request(&domain, &descriptors).as_slice()).unwrap();
            prop_assert_eq!(&decoded.domain, &domain);
            prop_assert_eq!(decoded.descriptors.len(), descriptors.len());
            for (pb, ours) in decoded.descriptors.iter().zip(&descriptors) {
                let entries: Vec<(String, String)> =
                    pb.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
                prop_assert_eq!(&entries, &ours.entries);
                prop_assert_eq!(pb.hits_addend.as_ref().map(|h| h.value), ours.hits_addend);
            }
        }

        #[test]
        fn responses_round_trip(
            overall_code in arb_code(),
            statuses in proptest::collection::vec(arb_status(), 0..4),
            headers in proptest::collection::vec(("[a-z-]{1,8}", "\\PC{0,8}"), 0..3),
        ) {
            let response = Response {
                overall_code,
                statuses,
                response_headers_to_add: headers.clone(),
                request_headers_to_add: headers,
            };
            let bytes = encode_response(&response);
            prop_assert_eq!(decode_response(&bytes), Ok(response.clone()));
            // prost reads what we write the same way.
            let pb = RateLimitResponse::decode(bytes.as_slice()).unwrap();
            prop_assert_eq!(pb.statuses.len(), response.statuses.len());
            prop_assert_eq!(pb.response_headers_to_add.len(), response.response_headers_to_add.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_response(&bytes);
        }
    }
}
