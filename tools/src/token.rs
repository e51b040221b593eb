//! Signing test JWTs from a private JWKS (RSA → RS256/384/512, EC P-256 → ES256).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::path::Path;

/// `(SPKI DER public key, signature, signed text)`.
pub type TestVector = (Vec<u8>, Vec<u8>, Vec<u8>);

enum KeyKind {
    Rsa(Box<rsa::PrivateKey>),
    Ec(Box<p256::ecdsa::SigningKey>),
}

struct SigningKey {
    kid: String,
    alg: String,
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

impl SigningKeys {
    pub fn load(path: &Path) -> Result<SigningKeys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let jwks: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        SigningKeys::from_jwks(&jwks).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_jwks(jwks: &Value) -> Result<SigningKeys, String> {
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
            let (alg, kind) = match kty {
                "RSA" => {
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
                    ("RS256", KeyKind::Rsa(Box::new(key)))
                }
                "EC" => {
                    let crv = k.get("crv").and_then(Value::as_str).unwrap_or("");
                    if crv != "P-256" {
                        return Err(format!(
                            "EC key {kid}: curve {crv} not supported for signing"
                        ));
                    }
                    let d = b64(k, "d")?;
                    let key = p256::ecdsa::SigningKey::from_slice(&d)
                        .map_err(|e| format!("EC key {kid}: {e}"))?;
                    ("ES256", KeyKind::Ec(Box::new(key)))
                }
                other => return Err(format!("key {kid}: kty {other} not supported for signing")),
            };
            let alg = k
                .get("alg")
                .and_then(Value::as_str)
                .unwrap_or(alg)
                .to_owned();
            keys.push(SigningKey { kid, alg, kind });
        }
        Ok(SigningKeys { keys })
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.kid.clone()).collect()
    }

    /// Signs `claims` with key `kid` (the first key if `None`). `extra_header` fields are
    /// merged into the JOSE header.
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
        let mut header = json!({"alg": key.alg, "typ": "JWT", "kid": key.kid});
        if let (Some(Value::Object(extra)), Value::Object(h)) = (extra_header, &mut header) {
            for (k, v) in extra {
                h.insert(k.clone(), v.clone());
            }
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match &key.kind {
            KeyKind::Rsa(k) => {
                let (scheme, digest) = match alg.as_str() {
                    "RS384" => (
                        rsa::Pkcs1v15Sign::new::<Sha384>(),
                        Sha384::digest(signing_input.as_bytes()).to_vec(),
                    ),
                    "RS512" => (
                        rsa::Pkcs1v15Sign::new::<Sha512>(),
                        Sha512::digest(signing_input.as_bytes()).to_vec(),
                    ),
                    _ => (
                        rsa::Pkcs1v15Sign::new::<Sha256>(),
                        Sha256::digest(signing_input.as_bytes()).to_vec(),
                    ),
                };
                k.sign(scheme, &digest).map_err(|e| e.to_string())?
            }
            KeyKind::Ec(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(signing_input.as_bytes());
                s.to_bytes().to_vec()
            }
        };
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
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
            KeyKind::Rsa(_) => Err("not an EC key".into()),
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
            KeyKind::Ec(_) => Err("not an RSA key".into()),
        }
    }
}
