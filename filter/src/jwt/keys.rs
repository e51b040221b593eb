//! JSON Web Keys: parsed and decoded once (at configure time, or when a remote key set
//! arrives), never per request. Each usable key keeps both its RustCrypto form (pure-Rust
//! fallback) and, for RSA and EC keys, a DER SubjectPublicKeyInfo to hand to the host's
//! `verify_signature`.

use super::alg::Alg;
use super::der::{ec_spki, rsa_spki, strip_leading_zeros, OID_P256, OID_P384};
use super::json::{b64url_decode, json_depth_ok};
use serde_json::Value;
use std::fmt;

/// Smallest RSA modulus accepted (RFC 7518 3.3: 2048 bits or larger).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (bounds the cost of one verification).
pub const MAX_RSA_BITS: usize = 8192;

/// Decoded public (or, for `oct`, secret) key material.
pub enum KeyMaterial {
    Rsa {
        key: Box<rsa::PublicKey>,
        spki: Vec<u8>,
        bits: usize,
    },
    P256 {
        key: p256::ecdsa::VerifyingKey,
        spki: Vec<u8>,
    },
    P384 {
        key: p384::ecdsa::VerifyingKey,
        spki: Vec<u8>,
    },
    Ed25519(ed25519_dalek::VerifyingKey),
    /// An HMAC secret. Only usable when configured inline and HS* is listed explicitly.
    Oct(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key bytes (an oct key is a secret).
        match self {
            KeyMaterial::Rsa { bits, .. } => write!(f, "Rsa({bits} bits)"),
            KeyMaterial::P256 { .. } => f.write_str("P-256"),
            KeyMaterial::P384 { .. } => f.write_str("P-384"),
            KeyMaterial::Ed25519(_) => f.write_str("Ed25519"),
            KeyMaterial::Oct(k) => write!(f, "Oct({} bytes)", k.len()),
        }
    }
}

/// One usable verification key.
#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's `alg`, if it declared one (always a supported JWS algorithm).
    pub alg: Option<Alg>,
    pub material: KeyMaterial,
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`: the key type (and curve) fit,
    /// the key's own `alg` (if any) is `alg`, and an HMAC secret is at least as long as the
    /// hash output (RFC 7518 3.2).
    pub fn fits(&self, alg: Alg) -> bool {
        if let Some(own) = self.alg {
            if own != alg {
                return false;
            }
        }
        match (&self.material, alg) {
            (
                KeyMaterial::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
            ) => true,
            (KeyMaterial::P256 { .. }, Alg::ES256) => true,
            (KeyMaterial::P384 { .. }, Alg::ES384) => true,
            (KeyMaterial::Ed25519(_), Alg::EdDSA) => true,
            (KeyMaterial::Oct(k), Alg::HS256) => k.len() >= 32,
            (KeyMaterial::Oct(k), Alg::HS384) => k.len() >= 48,
            (KeyMaterial::Oct(k), Alg::HS512) => k.len() >= 64,
            _ => false,
        }
    }

    pub fn is_symmetric(&self) -> bool {
        matches!(self.material, KeyMaterial::Oct(_))
    }
}

/// A parsed JWK Set. Keys that can't be used for JWS verification are skipped (and noted).
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
    /// Why keys were skipped (`keys[2]: unsupported kty "foo"`), for logs and counters.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> KeyError {
    KeyError(msg.into())
}

/// Which keys a key set may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Inline configuration: `oct` secrets allowed (but never mixed with public keys).
    Inline,
    /// Fetched from an endpoint: `oct` keys are ignored (a secret must never come from a URL).
    Remote,
}

impl KeySet {
    /// Parses a JWK Set (`{"keys": [...]}`) or a single JWK, from JSON text.
    pub fn parse(bytes: &[u8], policy: KeyPolicy, max_depth: usize) -> Result<KeySet, KeyError> {
        if !json_depth_ok(bytes, max_depth) {
            return Err(err("JWKS nests too deeply"));
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("JWKS is not JSON: {e}")))?;
        KeySet::from_value(&value, policy)
    }

    /// Parses a JWK Set or a single JWK, already JSON. A key set with no usable key, one that
    /// mixes secrets with public keys, or (inline) one with a malformed key is an error.
    pub fn from_value(value: &Value, policy: KeyPolicy) -> Result<KeySet, KeyError> {
        let obj = value
            .as_object()
            .ok_or_else(|| err("JWKS must be a JSON object"))?;
        let single;
        let entries: &[Value] = match obj.get("keys") {
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err(err("`keys` must be an array")),
            None if obj.contains_key("kty") => {
                single = [value.clone()];
                &single
            }
            None => return Err(err("JWKS has no `keys`")),
        };
        let mut set = KeySet::default();
        for (i, entry) in entries.iter().enumerate() {
            match parse_jwk(entry) {
                Ok(Some(key)) => {
                    if key.is_symmetric() && policy == KeyPolicy::Remote {
                        set.skipped
                            .push(format!("keys[{i}]: oct key ignored in a remote JWKS"));
                    } else {
                        set.keys.push(key);
                    }
                }
                Ok(None) => set
                    .skipped
                    .push(format!("keys[{i}]: not a signature verification key")),
                Err(e) => match policy {
                    KeyPolicy::Inline => return Err(err(format!("keys[{i}]: {e}"))),
                    KeyPolicy::Remote => set.skipped.push(format!("keys[{i}]: {e}")),
                },
            }
        }
        if set.keys.is_empty() {
            return Err(err("no usable signature verification key"));
        }
        let symmetric = set.keys.iter().filter(|k| k.is_symmetric()).count();
        if symmetric != 0 && symmetric != set.keys.len() {
            return Err(err(
                "a key set must not mix `oct` secrets with public keys (algorithm confusion)",
            ));
        }
        Ok(set)
    }
}

fn str_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, KeyError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(format!("`{name}` must be a string"))),
    }
}

fn bytes_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, KeyError> {
    let text = str_field(obj, name)?.ok_or_else(|| err(format!("missing `{name}`")))?;
    b64url_decode(text).ok_or_else(|| err(format!("`{name}` is not base64url")))
}

/// Parses one JWK. `Ok(None)`: a well-formed key that is not for signature verification
/// (`use` other than `sig`, `key_ops` without `verify`, an encryption `alg`, or a key type /
/// curve / algorithm this filter does not verify with).
pub fn parse_jwk(value: &Value) -> Result<Option<Jwk>, KeyError> {
    let obj = value
        .as_object()
        .ok_or_else(|| err("a JWK must be a JSON object"))?;
    let kty = str_field(obj, "kty")?.ok_or_else(|| err("missing `kty`"))?;
    let kid = str_field(obj, "kid")?.map(str::to_owned);
    if let Some(use_) = str_field(obj, "use")? {
        if use_ != "sig" {
            return Ok(None);
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops
            .as_array()
            .ok_or_else(|| err("`key_ops` must be an array"))?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let alg = match str_field(obj, "alg")? {
        None => None,
        Some(name) => match Alg::parse(name) {
            Some(alg) => Some(alg),
            // An encryption or unsupported signature algorithm: not a key we can use.
            None => return Ok(None),
        },
    };
    let material = match kty {
        "RSA" => {
            let n = bytes_field(obj, "n")?;
            let e = bytes_field(obj, "e")?;
            let n = strip_leading_zeros(&n);
            let e = strip_leading_zeros(&e);
            let bits = bit_length(n);
            if bits < MIN_RSA_BITS {
                return Err(err(format!(
                    "RSA modulus of {bits} bits is below {MIN_RSA_BITS}"
                )));
            }
            if bits > MAX_RSA_BITS {
                return Err(err(format!("RSA modulus of {bits} bits is too large")));
            }
            if e.len() > 8 {
                return Err(err("RSA exponent too large"));
            }
            let key = rsa::PublicKey::new_with_size_limits(
                rsa::BoxedUint::from_be_slice_vartime(n),
                rsa::BoxedUint::from_be_slice_vartime(e),
                MIN_RSA_BITS..=MAX_RSA_BITS,
            )
            .map_err(|e| err(format!("bad RSA key: {e}")))?;
            if let Some(a) = alg {
                if !a.is_rsa() {
                    return Err(err("`alg` does not fit an RSA key"));
                }
            }
            KeyMaterial::Rsa {
                key: Box::new(key),
                spki: rsa_spki(n, e),
                bits,
            }
        }
        "EC" => {
            let crv = str_field(obj, "crv")?.ok_or_else(|| err("missing `crv`"))?;
            let x = bytes_field(obj, "x")?;
            let y = bytes_field(obj, "y")?;
            let (size, fits) = match crv {
                "P-256" => (32, matches!(alg, None | Some(Alg::ES256))),
                "P-384" => (48, matches!(alg, None | Some(Alg::ES384))),
                // P-521 / secp256k1: well-formed maybe, but not verified by this filter.
                _ => return Ok(None),
            };
            if !fits {
                return Err(err(format!("`alg` does not fit curve {crv}")));
            }
            if x.len() != size || y.len() != size {
                return Err(err(format!("`x`/`y` must be {size} bytes for {crv}")));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if size == 32 {
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| err("EC point is not on P-256"))?;
                KeyMaterial::P256 {
                    key,
                    spki: ec_spki(OID_P256, &point),
                }
            } else {
                let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| err("EC point is not on P-384"))?;
                KeyMaterial::P384 {
                    key,
                    spki: ec_spki(OID_P384, &point),
                }
            }
        }
        "OKP" => {
            let crv = str_field(obj, "crv")?.ok_or_else(|| err("missing `crv`"))?;
            if crv != "Ed25519" {
                return Ok(None);
            }
            if !matches!(alg, None | Some(Alg::EdDSA)) {
                return Err(err("`alg` does not fit an Ed25519 key"));
            }
            let x = bytes_field(obj, "x")?;
            let x: [u8; 32] = x
                .as_slice()
                .try_into()
                .map_err(|_| err("Ed25519 `x` must be 32 bytes"))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| err("Ed25519 `x` is not a valid point"))?;
            KeyMaterial::Ed25519(key)
        }
        "oct" => {
            let k = bytes_field(obj, "k")?;
            if k.is_empty() {
                return Err(err("empty `k`"));
            }
            if let Some(a) = alg {
                if !a.is_hmac() {
                    return Err(err("`alg` does not fit an oct key"));
                }
            }
            KeyMaterial::Oct(k)
        }
        _ => return Ok(None),
    };
    Ok(Some(Jwk { kid, alg, material }))
}

fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_mixed_and_empty_sets() {
        let mixed = serde_json::json!({"keys": [
            {"kty": "oct", "k": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]});
        assert!(KeySet::from_value(&mixed, KeyPolicy::Inline).is_err());
        let remote = KeySet::from_value(&mixed, KeyPolicy::Remote).unwrap_or_default();
        assert_eq!(remote.keys.len(), 1);
        assert!(KeySet::from_value(&serde_json::json!({"keys": []}), KeyPolicy::Inline).is_err());
    }
}
