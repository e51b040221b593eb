//! Envoy's `verify_signature` foreign function, emulated with RustCrypto.
//!
//! Arguments: protobuf `VerifySignatureArguments { string hash_function = 1; bytes public_key = 2
//! (SubjectPublicKeyInfo DER); bytes signature = 3; bytes text = 4; string public_key_pem = 5; }`.
//! Result: `VerifySignatureResult { bool result = 1; string error = 2; }` — valid is exactly the
//! bytes `08 01`.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The fields of `VerifySignatureArguments`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VerifySignatureArguments {
    pub hash_function: String,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
    pub text: Vec<u8>,
    pub public_key_pem: String,
}

impl VerifySignatureArguments {
    /// Protobuf encoding (what a plugin sends).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, 1, self.hash_function.as_bytes());
        put_bytes(&mut out, 2, &self.public_key);
        put_bytes(&mut out, 3, &self.signature);
        put_bytes(&mut out, 4, &self.text);
        put_bytes(&mut out, 5, self.public_key_pem.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<VerifySignatureArguments> {
        let mut a = VerifySignatureArguments::default();
        for (field, value) in parse_fields(bytes)? {
            match (field, value) {
                (1, Value::Bytes(v)) => a.hash_function = String::from_utf8(v).ok()?,
                (2, Value::Bytes(v)) => a.public_key = v,
                (3, Value::Bytes(v)) => a.signature = v,
                (4, Value::Bytes(v)) => a.text = v,
                (5, Value::Bytes(v)) => a.public_key_pem = String::from_utf8(v).ok()?,
                _ => {}
            }
        }
        Some(a)
    }
}

/// Decodes a `VerifySignatureResult`: `(result, error)`.
pub fn decode_result(bytes: &[u8]) -> Option<(bool, String)> {
    let mut result = false;
    let mut error = String::new();
    for (field, value) in parse_fields(bytes)? {
        match (field, value) {
            (1, Value::Varint(v)) => result = v != 0,
            (2, Value::Bytes(v)) => error = String::from_utf8_lossy(&v).into_owned(),
            _ => {}
        }
    }
    Some((result, error))
}

/// Runs `verify_signature` on protobuf arguments and returns the protobuf result.
pub fn verify_signature(args: &[u8]) -> Vec<u8> {
    let outcome = match VerifySignatureArguments::decode(args) {
        Some(a) => verify(&a),
        None => Err("Failed to parse arguments.".to_owned()),
    };
    encode_result(outcome)
}

fn encode_result(outcome: Result<(), String>) -> Vec<u8> {
    let mut out = Vec::new();
    match outcome {
        Ok(()) => out.extend_from_slice(&[0x08, 0x01]),
        Err(e) => put_bytes(&mut out, 2, e.as_bytes()),
    }
    out
}

const VERIFY_FAILED: &str = "Failed to verify digest. Error code: 0";

fn verify(a: &VerifySignatureArguments) -> Result<(), String> {
    let digest: Vec<u8> = match a.hash_function.as_str() {
        "sha256" => Sha256::digest(&a.text).to_vec(),
        "sha384" => Sha384::digest(&a.text).to_vec(),
        "sha512" => Sha512::digest(&a.text).to_vec(),
        other => return Err(format!("{other} is not supported.")),
    };
    let der = if !a.public_key.is_empty() {
        a.public_key.clone()
    } else {
        pem_to_der(&a.public_key_pem).ok_or("Failed to initialize digest verify.")?
    };
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der.as_slice())
        .map_err(|_| "Failed to initialize digest verify.".to_owned())?;
    let alg = spki.algorithm.oid.to_string();
    match alg.as_str() {
        // rsaEncryption
        "1.2.840.113549.1.1.1" => {
            use spki::DecodePublicKey;
            let key = rsa::PublicKey::from_public_key_der(&der)
                .map_err(|_| "Failed to initialize digest verify.".to_owned())?;
            let scheme = match a.hash_function.as_str() {
                "sha256" => rsa::Pkcs1v15Sign::new::<Sha256>(),
                "sha384" => rsa::Pkcs1v15Sign::new::<Sha384>(),
                _ => rsa::Pkcs1v15Sign::new::<Sha512>(),
            };
            key.verify(scheme, &digest, &a.signature)
                .map_err(|_| VERIFY_FAILED.to_owned())
        }
        // id-ecPublicKey
        "1.2.840.10045.2.1" => {
            use ecdsa::signature::hazmat::PrehashVerifier;
            use spki::DecodePublicKey;
            let curve = spki
                .algorithm
                .parameters_oid()
                .map(|o| o.to_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => {
                    let key = p256::ecdsa::VerifyingKey::from_public_key_der(&der)
                        .map_err(|_| "Failed to initialize digest verify.".to_owned())?;
                    let sig = p256::ecdsa::DerSignature::try_from(a.signature.as_slice())
                        .map_err(|_| VERIFY_FAILED.to_owned())?;
                    key.verify_prehash(&digest, &sig)
                        .map_err(|_| VERIFY_FAILED.to_owned())
                }
                "1.3.132.0.34" => {
                    let key = p384::ecdsa::VerifyingKey::from_public_key_der(&der)
                        .map_err(|_| "Failed to initialize digest verify.".to_owned())?;
                    let sig = p384::ecdsa::DerSignature::try_from(a.signature.as_slice())
                        .map_err(|_| VERIFY_FAILED.to_owned())?;
                    key.verify_prehash(&digest, &sig)
                        .map_err(|_| VERIFY_FAILED.to_owned())
                }
                _ => Err("Failed to initialize digest verify.".to_owned()),
            }
        }
        _ => Err("Failed to initialize digest verify.".to_owned()),
    }
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

// ---- minimal protobuf wire format ----

pub(crate) enum Value {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A protobuf message's fields, in order; `None` unless the whole input is well-formed.
pub(crate) fn parse_fields(bytes: &[u8]) -> Option<Vec<(u64, Value)>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((field, Value::Varint(varint(bytes, &mut at)?))),
            2 => {
                let len = varint(bytes, &mut at)? as usize;
                let v = bytes.get(at..at.checked_add(len)?)?.to_vec();
                at += len;
                out.push((field, Value::Bytes(v)));
            }
            1 => at += 8,
            5 => at += 4,
            _ => return None,
        }
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, field: u64, v: &[u8]) {
    if v.is_empty() {
        return; // proto3 omits defaults
    }
    put_varint(out, (field << 3) | 2);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}
