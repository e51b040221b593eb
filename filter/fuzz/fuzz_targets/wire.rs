//! The byte formats the host hands the filter: the proxy-wasm header-map serialisation,
//! property values (`proxy_get_property`), and Envoy's `verify_signature` reply.
//!
//! Invariants: never a panic; the two header-map parsers agree (names lower-cased in
//! `Headers`); what parsed re-serialises and parses to the same pairs; a decoded property
//! re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_filter::request::{AttributeKind, AttributeValue, HostAttribute, RequestView};
use portcullis_filter::wire::{
    deserialize_headers, deserialize_map, serialize_map, verify_signature_result,
};
use std::time::UNIX_EPOCH;

fn header_maps(data: &[u8]) {
    let pairs = deserialize_map(data);
    let headers = deserialize_headers(data);
    let lowered: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let got: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(got, lowered);
    assert_eq!(headers.len(), pairs.len());
    assert_eq!(deserialize_map(&serialize_map(&pairs)), pairs);
    // Lookups walk the same spans as iteration: every pair's name finds its first value.
    for (name, _) in &lowered {
        let first = lowered
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str());
        assert_eq!(headers.get(name), first);
        assert_eq!(
            headers.values(name).count(),
            lowered.iter().filter(|(n, _)| n == name).count()
        );
    }
    let request = RequestView {
        headers,
        attributes: Vec::new(),
    };
    let _ = (
        request.method(),
        request.path(),
        request.header("authorization"),
    );
}

fn properties(data: &[u8]) {
    for attribute in HostAttribute::ALL {
        let _ = attribute.property_path();
        let decoded = AttributeValue::decode(attribute.kind(), data);
        match (attribute.kind(), decoded) {
            (AttributeKind::String, Some(AttributeValue::String(s))) => {
                assert_eq!(s.as_bytes(), data)
            }
            (AttributeKind::Int, Some(AttributeValue::Int(i))) => assert_eq!(i.to_le_bytes(), data),
            (AttributeKind::Bool, Some(AttributeValue::Bool(b))) => {
                assert_eq!(data.len(), 1);
                assert_eq!(b, data[0] != 0);
            }
            (AttributeKind::Timestamp, Some(AttributeValue::Timestamp(t))) => {
                let nanos = t
                    .duration_since(UNIX_EPOCH)
                    .expect("after the epoch")
                    .as_nanos();
                assert_eq!(i64::try_from(nanos).expect("fits").to_le_bytes(), data);
            }
            (_, None) => {}
            (kind, Some(value)) => panic!("{kind:?} decoded as {value:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    header_maps(data);
    properties(data);
    assert_eq!(
        verify_signature_result(data),
        data.starts_with(&[0x08, 0x01])
    );
});
