//! The `verify_signature` emulation, directly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use portcullis_harness::foreign::{decode_result, verify_signature, VerifySignatureArguments};
use portcullis_harness::token::SigningKeys;

fn keys() -> SigningKeys {
    SigningKeys::load(&common::workspace_root().join("policies/keys/private.jwks.json")).unwrap()
}

fn run(a: &VerifySignatureArguments) -> (bool, String) {
    decode_result(&verify_signature(&a.encode())).unwrap()
}

#[test]
fn rsa_pkcs1v15_sha256() {
    let (der, sig, text) = keys().rsa_test_vector("demo-rsa-1", b"payload").unwrap();
    let mut a = VerifySignatureArguments {
        hash_function: "sha256".into(),
        public_key: der,
        signature: sig,
        text,
        public_key_pem: String::new(),
    };
    assert_eq!(verify_signature(&a.encode()), vec![0x08, 0x01]);
    a.text = b"other".to_vec();
    assert_eq!(
        run(&a),
        (false, "Failed to verify digest. Error code: 0".into())
    );
    a.hash_function = "md5".into();
    assert_eq!(run(&a), (false, "md5 is not supported.".into()));
}

#[test]
fn ecdsa_p256_der_signature_and_pem_key() {
    use base64::Engine;
    let (der, sig, text) = keys().ec_test_vector("demo-ec-1", b"payload").unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
    let a = VerifySignatureArguments {
        hash_function: "sha256".into(),
        public_key: Vec::new(),
        signature: sig.clone(),
        text: text.clone(),
        public_key_pem: pem,
    };
    assert_eq!(run(&a), (true, String::new()));
    // A raw r||s signature is not DER: refused like Envoy.
    let raw = VerifySignatureArguments {
        hash_function: "sha256".into(),
        public_key: der,
        signature: vec![1; 64],
        text,
        public_key_pem: String::new(),
    };
    assert!(!run(&raw).0);
}

#[test]
fn unusable_key() {
    let a = VerifySignatureArguments {
        hash_function: "sha256".into(),
        public_key: b"not a key".to_vec(),
        signature: vec![1],
        text: b"x".to_vec(),
        public_key_pem: String::new(),
    };
    assert_eq!(
        run(&a),
        (false, "Failed to initialize digest verify.".into())
    );
}
