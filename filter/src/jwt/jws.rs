//! JWS compact serialization: strict parsing and signature verification.
//!
//! Crypto choice: the RustCrypto crates directly (`rsa`, `p256`, `p384`, `ed25519-dalek`,
//! `hmac` — the very crates `jsonwebtoken`'s `rust_crypto` backend wraps) because keys are
//! decoded once per key set here, whereas `jsonwebtoken::crypto::verify` rebuilds the key
//! and re-decodes base64 on every call (costly on wasm32, where every µs counts).

pub use super::alg::Alg;
use super::der::ecdsa_raw_to_der;
pub use super::invalid::{Cause, Invalid};
pub use super::json::{b64url_decode, b64url_encode, json_depth_ok};
use super::json::{parse_object, JsonError};
use super::keys::{Jwk, KeyMaterial};
use crate::ports::HostCrypto;
use serde_json::{Map, Value};

/// A compact JWS, split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct ParsedJws<'t> {
    /// `header_b64 "." payload_b64`, exactly as received (what the signature covers).
    pub signing_input: &'t str,
    pub header: Map<String, Value>,
    pub alg: Alg,
    pub kid: Option<String>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Header parameters this filter understands well enough to be listed in `crit`: none.
/// (`b64: false` (RFC 7797) is refused; `jwk`/`jku`/`x5u`/`x5c` are never trusted.)
const UNDERSTOOD_CRIT: &[&str] = &[];

/// Parses a decoded header or payload: one JSON object, no member name repeated at any
/// depth (see [`super::json`]). `part` names the segment in the reason.
pub fn parse_json_object(bytes: &[u8], part: &str) -> Result<Map<String, Value>, Invalid> {
    parse_object(bytes).map_err(|e| match e {
        JsonError::DuplicateMember => Invalid::new(
            Cause::DuplicateMember,
            format!("{part} repeats a member name"),
        ),
        JsonError::NotAnObject => {
            Invalid::new(Cause::Malformed, format!("{part} is not a JSON object"))
        }
    })
}

/// A JSON type a registered header parameter may have.
#[derive(Clone, Copy)]
enum ParamType {
    String,
    /// A non-empty array of strings.
    Strings,
    Object,
    Bool,
}

impl ParamType {
    fn fits(self, value: &Value) -> bool {
        match self {
            ParamType::String => value.is_string(),
            ParamType::Strings => value
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string)),
            ParamType::Object => value.is_object(),
            ParamType::Bool => value.is_boolean(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Strings => "a non-empty array of strings",
            ParamType::Object => "an object",
            ParamType::Bool => "a boolean",
        }
    }
}

/// Registered header parameters and their types (RFC 7515 4.1, RFC 7797 3).
const HEADER_TYPES: [(&str, ParamType); 12] = [
    ("alg", ParamType::String),
    ("kid", ParamType::String),
    ("typ", ParamType::String),
    ("cty", ParamType::String),
    ("jku", ParamType::String),
    ("x5u", ParamType::String),
    ("x5t", ParamType::String),
    ("x5t#S256", ParamType::String),
    ("jwk", ParamType::Object),
    ("x5c", ParamType::Strings),
    ("crit", ParamType::Strings),
    ("b64", ParamType::Bool),
];

/// A registered header parameter of another type is malformed, even one this filter never
/// reads (`jku`, `x5c`...): another JOSE library in the request's path might read it.
fn check_header_types(header: &Map<String, Value>) -> Result<(), Invalid> {
    for (name, kind) in HEADER_TYPES {
        if header.get(name).is_some_and(|v| !kind.fits(v)) {
            return Err(Invalid::new(
                Cause::Malformed,
                format!("{name} must be {}", kind.describe()),
            ));
        }
    }
    Ok(())
}

/// Splits and decodes a compact JWS and checks its header. Limits: `max_bytes` on the whole
/// token, `max_depth` on the header's JSON nesting.
pub fn parse_compact(
    token: &str,
    max_bytes: usize,
    max_depth: usize,
) -> Result<ParsedJws<'_>, Invalid> {
    if token.len() > max_bytes {
        return Err(Invalid::new(Cause::TooLarge, "token too large"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid::new(Cause::Malformed, "not a compact JWS"));
    };
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or_else(|| Invalid::new(Cause::Malformed, "not a compact JWS"))?;
    let header_bytes = b64url_decode(h)
        .ok_or_else(|| Invalid::new(Cause::Malformed, "header is not base64url"))?;
    if !json_depth_ok(&header_bytes, max_depth.min(8)) {
        return Err(Invalid::new(Cause::Malformed, "header nests too deeply"));
    }
    let header = parse_json_object(&header_bytes, "header")?;
    // From here on, a registered parameter that is present has its type: a `kid` that is
    // not a string, say, has already been refused rather than read as absent.
    check_header_types(&header)?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => {
            if name.eq_ignore_ascii_case("none") {
                return Err(Invalid::new(
                    Cause::AlgNone,
                    "unsigned tokens are not accepted",
                ));
            }
            Alg::parse(name)
                .ok_or_else(|| Invalid::new(Cause::UnsupportedAlg, "unsupported algorithm"))?
        }
        _ => return Err(Invalid::new(Cause::Malformed, "header has no alg")),
    };
    let kid = match header.get("kid") {
        Some(Value::String(kid)) => Some(kid.clone()),
        _ => None,
    };
    if let Some(Value::Array(names)) = header.get("crit") {
        for name in names {
            if !UNDERSTOOD_CRIT.contains(&name.as_str().unwrap_or_default()) {
                return Err(Invalid::new(
                    Cause::UnsupportedCrit,
                    "unsupported critical header parameter",
                ));
            }
        }
    }
    if header.get("b64") == Some(&Value::Bool(false)) {
        return Err(Invalid::new(
            Cause::UnsupportedCrit,
            "unencoded payloads are not accepted",
        ));
    }
    let payload = b64url_decode(p)
        .ok_or_else(|| Invalid::new(Cause::Malformed, "payload is not base64url"))?;
    let signature = b64url_decode(s)
        .ok_or_else(|| Invalid::new(Cause::Malformed, "signature is not base64url"))?;
    Ok(ParsedJws {
        signing_input,
        header,
        alg,
        kid,
        payload,
        signature,
    })
}

/// Picks the candidate keys for `alg`/`kid` in `keys`.
///
/// With a `kid`: keys with that kid, plus keys without any kid (as Envoy's jwt_verify_lib);
/// more than one kid-matching key that fits `alg` is ambiguous and rejected. Without a
/// `kid`: every key that fits.
pub fn select_keys<'k>(
    keys: &'k [Jwk],
    alg: Alg,
    kid: Option<&str>,
) -> Result<Vec<&'k Jwk>, Invalid> {
    match kid {
        Some(kid) => {
            let named: Vec<&Jwk> = keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            let fitting_named: Vec<&Jwk> = named.iter().copied().filter(|k| k.fits(alg)).collect();
            if fitting_named.len() > 1 {
                return Err(Invalid::new(
                    Cause::AmbiguousKid,
                    "several keys share the token's kid",
                ));
            }
            let mut candidates = fitting_named;
            candidates.extend(keys.iter().filter(|k| k.kid.is_none() && k.fits(alg)));
            if candidates.is_empty() {
                return Err(if named.is_empty() {
                    Invalid::new(Cause::UnknownKid, "no key with the token's kid")
                } else {
                    Invalid::new(
                        Cause::KeyMismatch,
                        "the token's key does not allow its algorithm",
                    )
                });
            }
            Ok(candidates)
        }
        None => {
            let candidates: Vec<&Jwk> = keys.iter().filter(|k| k.fits(alg)).collect();
            if candidates.is_empty() {
                return Err(Invalid::new(
                    Cause::NoMatchingKey,
                    "no key for the token's algorithm",
                ));
            }
            Ok(candidates)
        }
    }
}

/// Verifies `signature` over `message` with `key` under `alg`.
///
/// RS* and ES256/ES384 go to the host first (`HostCrypto::verify_signature`, with the key's
/// DER SubjectPublicKeyInfo; ES signatures converted from raw `r||s` to DER); if the host
/// can't (`None`), and for PS*, EdDSA and HS*, pure Rust decides. Returns `false` when the
/// key does not fit the algorithm.
pub fn verify_signature(
    alg: Alg,
    key: &Jwk,
    message: &[u8],
    signature: &[u8],
    host: &dyn HostCrypto,
) -> bool {
    if !key.fits(alg) {
        return false;
    }
    match (&key.material, alg) {
        (KeyMaterial::Rsa { key: pk, spki, .. }, Alg::RS256 | Alg::RS384 | Alg::RS512) => {
            if signature.len() != pk_size(pk) {
                return false;
            }
            let hash = match alg {
                Alg::RS256 => "sha256",
                Alg::RS384 => "sha384",
                _ => "sha512",
            };
            if let Some(valid) = host.verify_signature(hash, spki, signature, message) {
                return valid;
            }
            rsa_pkcs1_verify(pk, alg, message, signature)
        }
        (KeyMaterial::Rsa { key: pk, .. }, Alg::PS256 | Alg::PS384 | Alg::PS512) => {
            if signature.len() != pk_size(pk) {
                return false;
            }
            rsa_pss_verify(pk, alg, message, signature)
        }
        (KeyMaterial::P256 { key: vk, spki }, Alg::ES256) => {
            let Some(der) = ecdsa_raw_to_der(signature, 32) else {
                return false;
            };
            if let Some(valid) = host.verify_signature("sha256", spki, &der, message) {
                return valid;
            }
            use p256::ecdsa::signature::Verifier;
            match p256::ecdsa::Signature::from_slice(signature) {
                Ok(sig) => vk.verify(message, &sig).is_ok(),
                Err(_) => false,
            }
        }
        (KeyMaterial::P384 { key: vk, spki }, Alg::ES384) => {
            let Some(der) = ecdsa_raw_to_der(signature, 48) else {
                return false;
            };
            if let Some(valid) = host.verify_signature("sha384", spki, &der, message) {
                return valid;
            }
            use p384::ecdsa::signature::Verifier;
            match p384::ecdsa::Signature::from_slice(signature) {
                Ok(sig) => vk.verify(message, &sig).is_ok(),
                Err(_) => false,
            }
        }
        (KeyMaterial::Ed25519(vk), Alg::EdDSA) => {
            match ed25519_dalek::Signature::from_slice(signature) {
                Ok(sig) => vk.verify_strict(message, &sig).is_ok(),
                Err(_) => false,
            }
        }
        (KeyMaterial::Oct(secret), Alg::HS256 | Alg::HS384 | Alg::HS512) => {
            hmac_verify(secret, alg, message, signature)
        }
        _ => false,
    }
}

fn pk_size(pk: &rsa::PublicKey) -> usize {
    use rsa::traits::PublicKeyParts;
    pk.size()
}

fn rsa_pkcs1_verify(pk: &rsa::PublicKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
    use rsa::Pkcs1v15Sign;
    match alg {
        Alg::RS256 => pk
            .verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(message),
                signature,
            )
            .is_ok(),
        Alg::RS384 => pk
            .verify(
                Pkcs1v15Sign::new::<Sha384>(),
                &Sha384::digest(message),
                signature,
            )
            .is_ok(),
        Alg::RS512 => pk
            .verify(
                Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(message),
                signature,
            )
            .is_ok(),
        _ => false,
    }
}

fn rsa_pss_verify(pk: &rsa::PublicKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
    use rsa::Pss;
    // RFC 7518 3.5: MGF1 with the same hash, salt length = hash length.
    match alg {
        Alg::PS256 => pk
            .verify(Pss::<Sha256>::new(), &Sha256::digest(message), signature)
            .is_ok(),
        Alg::PS384 => pk
            .verify(Pss::<Sha384>::new(), &Sha384::digest(message), signature)
            .is_ok(),
        Alg::PS512 => pk
            .verify(Pss::<Sha512>::new(), &Sha512::digest(message), signature)
            .is_ok(),
        _ => false,
    }
}

fn hmac_verify(secret: &[u8], alg: Alg, message: &[u8], tag: &[u8]) -> bool {
    use hmac::{Hmac, KeyInit, Mac};
    use rsa::sha2::{Sha256, Sha384, Sha512};
    // `verify_slice` compares in constant time and requires the full-length tag.
    match alg {
        Alg::HS256 => Hmac::<Sha256>::new_from_slice(secret)
            .map(|m| m.chain_update(message).verify_slice(tag).is_ok())
            .unwrap_or(false),
        Alg::HS384 => Hmac::<Sha384>::new_from_slice(secret)
            .map(|m| m.chain_update(message).verify_slice(tag).is_ok())
            .unwrap_or(false),
        Alg::HS512 => Hmac::<Sha512>::new_from_slice(secret)
            .map(|m| m.chain_update(message).verify_slice(tag).is_ok())
            .unwrap_or(false),
        _ => false,
    }
}

/// A compact JWS whose signature checked out with one of the keys.
#[derive(Debug)]
pub struct VerifiedJws {
    pub header: Map<String, Value>,
    pub alg: Alg,
    pub payload: Vec<u8>,
    /// The payload segment as received (base64url).
    pub payload_b64: String,
}

/// Parses `token`, checks `alg` against `allowed`, picks keys and verifies the signature.
/// This is the whole JWS layer the filter runs (claims are checked afterwards).
pub fn verify_compact(
    token: &str,
    keys: &[Jwk],
    allowed: &[Alg],
    host: &dyn HostCrypto,
    max_bytes: usize,
    max_depth: usize,
) -> Result<VerifiedJws, Invalid> {
    verify_compact_with(token, keys, allowed, host, max_bytes, max_depth, |_| Ok(()))
        .map(|(jws, ())| jws)
}

/// [`verify_compact`] with a cheap `pre_check` run after parsing and before any crypto (the
/// filter parses the claims there and drops tokens of another issuer without a signature
/// check). Its result is handed back with the verified JWS.
pub fn verify_compact_with<T>(
    token: &str,
    keys: &[Jwk],
    allowed: &[Alg],
    host: &dyn HostCrypto,
    max_bytes: usize,
    max_depth: usize,
    pre_check: impl FnOnce(&ParsedJws<'_>) -> Result<T, Invalid>,
) -> Result<(VerifiedJws, T), Invalid> {
    let jws = parse_compact(token, max_bytes, max_depth)?;
    if !allowed.contains(&jws.alg) {
        return Err(Invalid::new(Cause::AlgNotAllowed, "algorithm not allowed"));
    }
    let checked = pre_check(&jws)?;
    let candidates = select_keys(keys, jws.alg, jws.kid.as_deref())?;
    let ok = candidates.iter().any(|key| {
        verify_signature(
            jws.alg,
            key,
            jws.signing_input.as_bytes(),
            &jws.signature,
            host,
        )
    });
    if !ok {
        return Err(Invalid::new(
            Cause::BadSignature,
            "signature verification failed",
        ));
    }
    let payload_b64 = jws
        .signing_input
        .split_once('.')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default();
    Ok((
        VerifiedJws {
            header: jws.header,
            alg: jws.alg,
            payload: jws.payload,
            payload_b64,
        },
        checked,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_never_accepted() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = b64url_encode(format!("{{\"alg\":\"{alg}\"}}").as_bytes());
            let token = format!("{header}.e30.");
            let err = parse_compact(&token, 8192, 32).err();
            assert_eq!(err.map(|e| e.code.as_str()), Some("alg_none"));
        }
    }

    #[test]
    fn strict_base64() {
        assert!(b64url_decode("e30=").is_none());
        assert!(b64url_decode("e3 0").is_none());
        assert!(b64url_decode("e31").is_none()); // non-canonical trailing bits
        assert_eq!(b64url_decode("e30"), Some(b"{}".to_vec()));
    }

    #[test]
    fn depth_limit() {
        assert!(json_depth_ok(b"[[[]]]", 3));
        assert!(!json_depth_ok(b"[[[[]]]]", 3));
        assert!(json_depth_ok(br#"{"a":"[[[[[[["}"#, 1));
        assert!(json_depth_ok(br#"{"a":"\"[[[[[[["}"#, 1));
    }

    #[test]
    fn unknown_crit_rejected() {
        let header = b64url_encode(br#"{"alg":"HS256","crit":["exp"],"exp":1}"#);
        let token = format!("{header}.e30.AAAA");
        assert_eq!(
            parse_compact(&token, 8192, 32)
                .err()
                .map(|e| e.code.as_str()),
            Some("unsupported_crit")
        );
    }

    fn header_code(header: &str) -> Result<Alg, &'static str> {
        let token = format!("{}.e30.AAAA", b64url_encode(header.as_bytes()));
        parse_compact(&token, 8192, 32)
            .map(|jws| jws.alg)
            .map_err(|e| e.code.as_str())
    }

    #[test]
    fn a_header_repeating_a_member_is_refused() {
        for header in [
            r#"{"alg":"HS256","alg":"RS256"}"#,
            r#"{"alg":"RS256","kid":"nope","kid":"k1"}"#,
            r#"{"alg":"RS256","kid":"a","kid":"b"}"#,
            r#"{"alg":"RS256","jwk":{"kty":"oct","kty":"RSA"}}"#,
            r#"{"alg":"RS256","typ":"JWT","typ":"JWT"}"#,
        ] {
            assert_eq!(header_code(header), Err("duplicate_member"), "{header}");
        }
        let token = format!(
            "{}.e30.AAAA",
            b64url_encode(br#"{"alg":"RS256","alg":"RS256"}"#)
        );
        assert_eq!(
            parse_compact(&token, 8192, 32).err().map(|e| e.detail),
            Some("header repeats a member name".to_owned())
        );
        assert_eq!(header_code(r#"{"alg":"RS256","kid":"k1"}"#), Ok(Alg::RS256));
    }

    #[test]
    fn registered_header_parameters_of_a_wrong_type_are_malformed() {
        for header in [
            r#"{"alg":["RS256"]}"#,
            r#"{"alg":"RS256","kid":5}"#,
            r#"{"alg":"RS256","kid":null}"#,
            r#"{"alg":"RS256","typ":1}"#,
            r#"{"alg":"RS256","cty":["JWT"]}"#,
            r#"{"alg":"RS256","jku":{}}"#,
            r#"{"alg":"RS256","x5u":false}"#,
            r#"{"alg":"RS256","x5t":1}"#,
            r#"{"alg":"RS256","x5t#S256":null}"#,
            r#"{"alg":"RS256","jwk":"key"}"#,
            r#"{"alg":"RS256","x5c":"MII"}"#,
            r#"{"alg":"RS256","x5c":[]}"#,
            r#"{"alg":"RS256","x5c":["MII",1]}"#,
            r#"{"alg":"RS256","crit":[]}"#,
            r#"{"alg":"RS256","crit":"exp"}"#,
            r#"{"alg":"RS256","crit":["b64",1]}"#,
            r#"{"alg":"RS256","b64":"false"}"#,
            r#"{"alg":"RS256","b64":0}"#,
        ] {
            assert_eq!(header_code(header), Err("malformed"), "{header}");
        }
        // Right types: parameters the filter does not use are not refused for existing.
        assert_eq!(
            header_code(
                r#"{"alg":"ES256","kid":"k","typ":"JWT","cty":"x","jku":"https://a","x5u":"https://b","x5t":"t","x5t#S256":"t","x5c":["MII"],"jwk":{},"b64":true}"#
            ),
            Ok(Alg::ES256)
        );
        assert_eq!(
            header_code(r#"{"alg":"RS256","b64":false}"#),
            Err("unsupported_crit")
        );
    }

    #[test]
    fn wrong_segment_counts() {
        for t in ["a", "a.b", "a.b.c.d", "a.b.c.d.e", ""] {
            assert_eq!(
                parse_compact(t, 8192, 32).err().map(|e| e.code.as_str()),
                Some("malformed")
            );
        }
    }
}
