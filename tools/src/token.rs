//! Signing test JWTs from a private JWKS with the `jsonwebtoken` crate — an implementation
//! independent of the filter's verifier, so policy cases cross-check the two. Every
//! algorithm the filter verifies: RSA keys sign RS256/384/512 or PS256/384/512 (the JWK's
//! `alg`, default RS256), EC P-256/P-384 keys ES256/ES384, OKP Ed25519 keys EdDSA, and
//! `oct` keys HS256/384/512 (default HS256).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::str::FromStr;

/// `(SPKI DER public key, signature, signed text)`.
pub type TestVector = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The key material the `verify_signature` test vectors need (RSA, P-256).
enum KeyKind {
    Rsa(Box<rsa::PrivateKey>),
    Ec(Box<p256::ecdsa::SigningKey>),
    Other,
}

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    kind: KeyKind,
}

/// The private keys of a JWKS, by `kid`.
pub struct SigningKeys {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("SigningKeys").field("kids", &kids).finish()
    }
}

fn b64(field: &Value, name: &str) -> Result<Vec<u8>, String> {
    let s = field
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JWK lacks `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("JWK `{name}`: {e}"))
}

/// The PKCS#8 wrapping of an Ed25519 seed (RFC 8410): a fixed prefix and the 32 bytes.
fn ed25519_pkcs8(seed: &[u8]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

fn algorithm(name: &str, kid: &str) -> Result<Algorithm, String> {
    Algorithm::from_str(name).map_err(|_| format!("key {kid}: unknown alg `{name}`"))
}

impl SigningKeys {
    pub fn load(path: &Path) -> Result<SigningKeys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let jwks: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        SigningKeys::from_jwks(&jwks).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_jwks(jwks: &Value) -> Result<SigningKeys, String> {
        use p256::pkcs8::EncodePrivateKey;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let list = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("a JWKS needs `keys`")?;
        let mut keys = Vec::new();
        for (i, k) in list.iter().enumerate() {
            let kid = k
                .get("kid")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("key-{i}"));
            let kty = k.get("kty").and_then(Value::as_str).unwrap_or("");
            let crv = k.get("crv").and_then(Value::as_str).unwrap_or("");
            let alg = k.get("alg").and_then(Value::as_str);
            let (alg, encoding, kind) = match (kty, crv) {
                ("RSA", _) => {
                    let u = |n: &str| -> Result<rsa::BoxedUint, String> {
                        Ok(rsa::BoxedUint::from_be_slice_vartime(&b64(k, n)?))
                    };
                    let key = rsa::PrivateKey::from_components(
                        u("n")?,
                        u("e")?,
                        u("d")?,
                        vec![u("p")?, u("q")?],
                    )
                    .map_err(|e| format!("RSA key {kid}: {e}"))?;
                    let der = key
                        .to_pkcs1_der()
                        .map_err(|e| format!("RSA key {kid}: {e}"))?;
                    (
                        algorithm(alg.unwrap_or("RS256"), &kid)?,
                        EncodingKey::from_rsa_der(der.as_bytes()),
                        KeyKind::Rsa(Box::new(key)),
                    )
                }
                ("EC", "P-256") => {
                    let key = p256::ecdsa::SigningKey::from_slice(&b64(k, "d")?)
                        .map_err(|e| format!("EC key {kid}: {e}"))?;
                    let der = key
                        .to_pkcs8_der()
                        .map_err(|e| format!("EC key {kid}: {e}"))?;
                    (
                        algorithm(alg.unwrap_or("ES256"), &kid)?,
                        EncodingKey::from_ec_der(der.as_bytes()),
                        KeyKind::Ec(Box::new(key)),
                    )
                }
                ("EC", "P-384") => {
                    let key = p384::ecdsa::SigningKey::from_slice(&b64(k, "d")?)
                        .map_err(|e| format!("EC key {kid}: {e}"))?;
                    let der = key
                        .to_pkcs8_der()
                        .map_err(|e| format!("EC key {kid}: {e}"))?;
                    (
                        algorithm(alg.unwrap_or("ES384"), &kid)?,
                        EncodingKey::from_ec_der(der.as_bytes()),
                        KeyKind::Other,
                    )
                }
                ("OKP", "Ed25519") => (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_der(&ed25519_pkcs8(&b64(k, "d")?)),
                    KeyKind::Other,
                ),
                ("oct", _) => (
                    algorithm(alg.unwrap_or("HS256"), &kid)?,
                    EncodingKey::from_secret(&b64(k, "k")?)
                        .map_err(|e| format!("oct key {kid}: {e}"))?,
                    KeyKind::Other,
                ),
                (kty, crv) => {
                    return Err(format!(
                        "key {kid}: kty {kty} {crv} not supported for signing"
                    ))
                }
            };
            keys.push(SigningKey {
                kid,
                alg,
                encoding,
                kind,
            });
        }
        Ok(SigningKeys { keys })
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.kid.clone()).collect()
    }

    /// Signs `claims` with key `kid` (the first key if `None`). `extra_header` fields are
    /// merged into the JOSE header; an `alg` there is written as given, and the signature is
    /// made with it when `jsonwebtoken` knows it and it suits the key (else with the key's
    /// own algorithm: a token the filter must refuse).
    pub fn sign(
        &self,
        kid: Option<&str>,
        claims: &Value,
        extra_header: Option<&Value>,
    ) -> Result<String, String> {
        let key = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid == kid).ok_or_else(|| {
                format!(
                    "no signing key with kid `{kid}` (have: {})",
                    self.kids().join(", ")
                )
            })?,
            None => self.keys.first().ok_or("the JWKS has no keys")?,
        };
        let mut header = json!({"alg": format!("{:?}", key.alg), "typ": "JWT", "kid": key.kid});
        if let (Some(Value::Object(extra)), Value::Object(h)) = (extra_header, &mut header) {
            for (k, v) in extra {
                h.insert(k.clone(), v.clone());
            }
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let asked = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| Algorithm::from_str(a).ok())
            .filter(|a| a.family() == key.alg.family());
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &key.encoding,
            asked.unwrap_or(key.alg),
        )
        .map_err(|e| format!("signing with {}: {e}", key.kid))?;
        Ok(format!("{signing_input}.{signature}"))
    }

    /// `(SPKI DER public key, DER ECDSA-SHA256 signature, text)` for testing `verify_signature`.
    pub fn ec_test_vector(&self, kid: &str, text: &[u8]) -> Result<TestVector, String> {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::EncodePublicKey;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or("no such kid")?;
        match &key.kind {
            KeyKind::Ec(k) => {
                let s: p256::ecdsa::Signature = k.sign(text);
                let der = k
                    .verifying_key()
                    .to_public_key_der()
                    .map_err(|e| e.to_string())?;
                Ok((
                    der.as_bytes().to_vec(),
                    s.to_der().as_bytes().to_vec(),
                    text.to_vec(),
                ))
            }
            _ => Err("not a P-256 key".into()),
        }
    }

    /// `(SPKI DER public key, PKCS#1 v1.5 SHA-256 signature, text)`.
    pub fn rsa_test_vector(&self, kid: &str, text: &[u8]) -> Result<TestVector, String> {
        use rsa::pkcs8::EncodePublicKey;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or("no such kid")?;
        match &key.kind {
            KeyKind::Rsa(k) => {
                let digest = Sha256::digest(text);
                let sig = k
                    .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest)
                    .map_err(|e| e.to_string())?;
                let der = k
                    .to_public_key()
                    .to_public_key_der()
                    .map_err(|e| e.to_string())?;
                Ok((der.as_bytes().to_vec(), sig, text.to_vec()))
            }
            _ => Err("not an RSA key".into()),
        }
    }
}
