//! A minimal DER writer for SubjectPublicKeyInfo (RFC 5280, RFC 3279, RFC 5480) and
//! ECDSA signatures: what the host's `verify_signature` takes.

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

pub fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    der_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding the unsigned big-endian `bytes` (minimal, positive).
pub fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let bytes = strip_leading_zeros(bytes);
    let mut content = Vec::with_capacity(bytes.len() + 1);
    match bytes.first() {
        None => content.push(0),
        Some(first) if *first >= 0x80 => {
            content.push(0);
            content.extend_from_slice(bytes);
        }
        Some(_) => content.extend_from_slice(bytes),
    }
    der(0x02, &content)
}

fn bit_string(content: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(content.len() + 1);
    inner.push(0);
    inner.extend_from_slice(content);
    der(0x03, &inner)
}

pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut alg = der(0x06, OID_RSA_ENCRYPTION);
    alg.extend_from_slice(&[0x05, 0x00]);
    let mut rsa_key = der_uint(n);
    rsa_key.extend(der_uint(e));
    let mut spki = der(0x30, &alg);
    spki.extend(bit_string(&der(0x30, &rsa_key)));
    der(0x30, &spki)
}

pub fn ec_spki(curve: &[u8], point: &[u8]) -> Vec<u8> {
    let mut alg = der(0x06, OID_EC_PUBLIC_KEY);
    alg.extend(der(0x06, curve));
    let mut spki = der(0x30, &alg);
    spki.extend(bit_string(point));
    der(0x30, &spki)
}

/// JWS ECDSA signature (raw `r || s`, RFC 7518 3.4) → DER `ECDSA-Sig-Value`, as the host wants.
/// `None` if the length is not exactly twice the field size.
pub fn ecdsa_raw_to_der(raw: &[u8], field_bytes: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * field_bytes {
        return None;
    }
    let (r, s) = raw.split_at(field_bytes);
    let mut seq = der_uint(r);
    seq.extend(der_uint(s));
    Some(der(0x30, &seq))
}

pub fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_positive() {
        assert_eq!(der_uint(&[0, 0, 1]), vec![2, 1, 1]);
        assert_eq!(der_uint(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(der_uint(&[]), vec![2, 1, 0]);
        assert_eq!(der_uint(&[0, 0]), vec![2, 1, 0]);
    }

    #[test]
    fn long_lengths() {
        let v = der(0x04, &[0u8; 300]);
        assert_eq!(v.get(..4), Some(&[0x04, 0x82, 0x01, 0x2c][..]));
    }

    #[test]
    fn raw_to_der_checks_length() {
        assert!(ecdsa_raw_to_der(&[1u8; 63], 32).is_none());
        let d = ecdsa_raw_to_der(&[0xffu8; 64], 32).unwrap_or_default();
        assert_eq!(d.len(), 2 + 2 * (2 + 33));
    }
}
