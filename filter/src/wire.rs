//! Byte formats of the proxy-wasm ABI and of Envoy's `verify_signature` foreign function,
//! kept host-independent so they are tested (and property-tested) natively.

use crate::request::Headers;

/// The ABI's header-map serialisation: count, (key size, value size)*, then each key and
/// value NUL-terminated.
pub fn serialize_map(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        4 + pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum::<usize>(),
    );
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses the ABI's header-map serialisation; malformed input yields the pairs read so far.
pub fn deserialize_map(bytes: &[u8]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    visit_map(bytes, |k, v| pairs.push((k.to_owned(), v.to_owned())));
    pairs
}

/// The same parse into one [`Headers`] buffer (names lower-cased), without an allocation per
/// name and value.
pub fn deserialize_headers(bytes: &[u8]) -> Headers {
    let mut headers = Headers::with_capacity(
        bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, |b| u32::from_le_bytes(b).min(256) as usize),
        bytes.len(),
    );
    visit_map(bytes, |k, v| headers.push(k, v));
    headers
}

/// Calls `each(name, value)` for every pair; values that are not UTF-8 are decoded lossily
/// (U+FFFD). Stops at the first malformed pair.
fn visit_map(bytes: &[u8], mut each: impl FnMut(&str, &str)) {
    let u32_at = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let Some(count) = u32_at(0) else {
        return;
    };
    let Some(mut at) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return;
    };
    for n in 0..count {
        let sizes = n.checked_mul(8).and_then(|o| o.checked_add(4));
        let (Some(key_len), Some(value_len)) = (
            sizes.and_then(u32_at),
            sizes.and_then(|o| o.checked_add(4)).and_then(u32_at),
        ) else {
            break;
        };
        let mut take = |len: usize| -> Option<std::borrow::Cow<'_, str>> {
            let end = at.checked_add(len)?;
            let raw = bytes.get(at..end)?;
            // `from_utf8` checks ASCII a word at a time; the lossy decoder goes byte by byte,
            // which shows over a ~700-byte bearer token (docs/benchmarks.md).
            let text = match std::str::from_utf8(raw) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(raw),
            };
            at = end.checked_add(1)?;
            Some(text)
        };
        let (Some(key), Some(value)) = (take(key_len), take(value_len)) else {
            break;
        };
        each(&key, &value);
    }
}

/// Encodes `VerifySignatureArguments { string hash_function = 1; bytes public_key = 2;
/// bytes signature = 3; bytes text = 4; }` (protobuf wire format, length-delimited fields).
pub fn verify_signature_arguments(
    hash: &str,
    public_key_der: &[u8],
    signature: &[u8],
    message: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        16 + hash.len() + public_key_der.len() + signature.len() + message.len(),
    );
    for (field, bytes) in [
        (1u8, hash.as_bytes()),
        (2, public_key_der),
        (3, signature),
        (4, message),
    ] {
        out.push((field << 3) | 2);
        let mut len = bytes.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    out
}

/// `VerifySignatureResult { bool result = 1; string error = 2; }`: valid iff field 1 is true.
/// A failure omits field 1 (proto3 default), so anything but `08 01` first is "invalid".
pub fn verify_signature_result(reply: &[u8]) -> bool {
    matches!(reply, [0x08, 0x01, ..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_maps_round_trip() {
        let pairs = vec![
            (":path".to_owned(), "/a?b".to_owned()),
            ("x".to_owned(), String::new()),
        ];
        assert_eq!(deserialize_map(&serialize_map(&pairs)), pairs);
        assert!(deserialize_map(&[]).is_empty());
    }

    #[test]
    fn non_utf8_values_are_decoded_lossily_not_fatally() {
        let mut bytes = serialize_map(&[("x-bin".to_owned(), "ab".to_owned())]);
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        assert_eq!(
            deserialize_map(&bytes),
            vec![("x-bin".to_owned(), "\u{fffd}b".to_owned())]
        );
    }

    #[test]
    fn verify_signature_wire_format() {
        let args = verify_signature_arguments("sha256", &[1, 2], &[3], b"msg");
        assert_eq!(
            args,
            [
                &[0x0a, 6][..],
                b"sha256",
                &[0x12, 2, 1, 2, 0x1a, 1, 3, 0x22, 3],
                b"msg"
            ]
            .concat()
        );
        assert!(verify_signature_result(&[0x08, 0x01]));
        assert!(!verify_signature_result(&[0x12, 0x02, b'n', b'o']));
        assert!(!verify_signature_result(&[]));
        let long = vec![7u8; 300];
        let args = verify_signature_arguments("", &long, &[], &[]);
        assert_eq!(&args[..5], &[0x0a, 0, 0x12, 0xac, 0x02]);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = deserialize_map(&bytes);
        }

        #[test]
        fn any_pairs_round_trip(pairs in proptest::collection::vec(("[a-z:-]{0,12}", "[ -~]{0,40}"), 0..16)) {
            let pairs: Vec<(String, String)> = pairs;
            prop_assert_eq!(deserialize_map(&serialize_map(&pairs)), pairs);
        }

        #[test]
        fn headers_parse_like_the_map_with_names_lower_cased(
            pairs in proptest::collection::vec(("[A-Za-z:-]{0,12}", "\\PC{0,40}"), 0..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let pairs: Vec<(String, String)> = pairs;
            let mut bytes = serialize_map(&pairs);
            // Also when truncated anywhere: the same prefix of pairs, never a panic.
            bytes.truncate(cut.index(bytes.len() + 1));
            let expected: Vec<(String, String)> = deserialize_map(&bytes)
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let headers = deserialize_headers(&bytes);
            let got: Vec<(String, String)> =
                headers.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
