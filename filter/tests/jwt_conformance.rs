//! JWS conformance: the filter's own verification code (`jwt::jws`, `jwt::keys`) over the
//! Wycheproof vectors and the JOSE RFC examples in `filter/tests/conformance` (vendored; see each set's `SOURCE.md`).
//!
//! Every vector runs twice: with no host crypto (pure Rust) and with an emulation of Envoy's
//! `verify_signature` host function (RustCrypto parsing the DER SubjectPublicKeyInfo the
//! filter builds, PKCS#1 v1.5 for RSA and DER ECDSA signatures, as the host does). Both paths
//! must agree on every vector. Failures must be listed, with a reason, in
//! `jwt_conformance_known_failures.txt`; a new failure fails the test, and so does a listed
//! one that now passes.
//!
//! The data is required: if `filter/tests/conformance` is missing the test fails.

use portcullis_filter::jwt::jws::{b64url_encode, verify_compact, verify_signature, Alg};
use portcullis_filter::jwt::keys::{parse_jwk, KeyPolicy, KeySet};
use portcullis_filter::ports::{HostCrypto, NoHostCrypto};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn load(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "conformance data missing: {} ({e}); it is required, never skipped",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// What Envoy's `verify_signature` does, natively: parse the SubjectPublicKeyInfo, hash the
/// text with `hash`, verify PKCS#1 v1.5 (RSA) or a DER ECDSA signature. A key or signature it
/// can't parse is a failed verification (`Some(false)`), as the host reports it.
struct EmulatedHost;

impl HostCrypto for EmulatedHost {
    fn verify_signature(&self, hash: &str, spki: &[u8], sig: &[u8], text: &[u8]) -> Option<bool> {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
        use rsa::Pkcs1v15Sign;
        let hash = hash.to_ascii_lowercase();
        if let Ok(pk) = rsa::PublicKey::from_public_key_der(spki) {
            let ok = match hash.as_str() {
                "sha256" => pk.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(text), sig),
                "sha384" => pk.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(text), sig),
                "sha512" => pk.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(text), sig),
                _ => return None,
            };
            return Some(ok.is_ok());
        }
        if let Ok(vk) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
            use p256::ecdsa::signature::Verifier;
            if hash != "sha256" {
                return None;
            }
            return Some(
                p256::ecdsa::Signature::from_der(sig)
                    .map(|s| vk.verify(text, &s).is_ok())
                    .unwrap_or(false),
            );
        }
        if let Ok(vk) = p384::ecdsa::VerifyingKey::from_public_key_der(spki) {
            use p384::ecdsa::signature::Verifier;
            if hash != "sha384" {
                return None;
            }
            return Some(
                p384::ecdsa::Signature::from_der(sig)
                    .map(|s| vk.verify(text, &s).is_ok())
                    .unwrap_or(false),
            );
        }
        Some(false)
    }
}

#[derive(Default)]
struct FileStats {
    total: usize,
    not_applicable: usize,
    passed: usize,
    acceptable: usize,
    /// "acceptable" vectors that verified (the rest were rejected).
    acceptable_verified: usize,
    failed: usize,
}

#[derive(Default)]
struct Report {
    files: BTreeMap<String, FileStats>,
    failures: BTreeMap<String, String>,
    disagreements: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Valid,
    Invalid,
    Acceptable,
}

impl Expect {
    fn from(result: &str) -> Expect {
        match result {
            "valid" => Expect::Valid,
            "invalid" => Expect::Invalid,
            "acceptable" => Expect::Acceptable,
            other => panic!("unknown result {other}"),
        }
    }
}

impl Report {
    fn skip(&mut self, file: &str, n: usize) {
        let s = self.files.entry(file.to_owned()).or_default();
        s.total += n;
        s.not_applicable += n;
    }

    /// Records one vector, run through `check` with both host emulations.
    fn record(
        &mut self,
        file: &str,
        id: &str,
        expect: Expect,
        comment: &str,
        check: impl Fn(&dyn HostCrypto) -> bool,
    ) {
        let pure = check(&NoHostCrypto);
        let host = check(&EmulatedHost);
        let key = format!("{file}#{id}");
        if pure != host {
            self.disagreements.push(format!(
                "{key}: pure Rust says {pure}, host path says {host} ({comment})"
            ));
        }
        let s = self.files.entry(file.to_owned()).or_default();
        s.total += 1;
        let ok = match expect {
            Expect::Valid => pure && host,
            Expect::Invalid => !pure && !host,
            Expect::Acceptable => {
                s.acceptable += 1;
                if pure {
                    s.acceptable_verified += 1;
                }
                true
            }
        };
        if ok {
            s.passed += 1;
        } else {
            s.failed += 1;
            self.failures.insert(
                key,
                format!(
                    "expected {}, got {pure} ({comment})",
                    if expect == Expect::Valid {
                        "valid"
                    } else {
                        "invalid"
                    }
                ),
            );
        }
    }
}

fn wycheproof(report: &mut Report, file: &str) {
    let data = load(
        conformance_dir()
            .join("wycheproof/testvectors_v1")
            .join(file),
    );
    let groups = data["testGroups"].as_array().expect("testGroups");
    for group in groups {
        let tests = group["tests"].as_array().expect("tests");
        let (alg, jwk) = if file.starts_with("hmac_") {
            let bits: usize = file[8..11].parse().expect("hmac size");
            if group["tagSize"].as_u64() != Some(bits as u64) {
                // JWS always uses the full-length tag.
                report.skip(file, tests.len());
                continue;
            }
            let alg = match bits {
                256 => Alg::HS256,
                384 => Alg::HS384,
                _ => Alg::HS512,
            };
            (alg, None)
        } else {
            let sha = group["sha"].as_str().unwrap_or("");
            let alg = if file.starts_with("rsa_signature_") {
                match sha {
                    "SHA-256" => Alg::RS256,
                    "SHA-384" => Alg::RS384,
                    _ => Alg::RS512,
                }
            } else if file.starts_with("rsa_pss_") {
                assert_eq!(
                    group["mgfSha"], group["sha"],
                    "{file}: JWS PSS uses the same hash for MGF1"
                );
                match sha {
                    "SHA-256" => Alg::PS256,
                    "SHA-384" => Alg::PS384,
                    _ => Alg::PS512,
                }
            } else if file.starts_with("ecdsa_secp256r1") {
                Alg::ES256
            } else if file.starts_with("ecdsa_secp384r1") {
                Alg::ES384
            } else {
                Alg::EdDSA
            };
            let jwk = match group.get("publicKeyJwk").or_else(|| group.get("keyJwk")) {
                Some(jwk) => jwk.clone(),
                // A few ECDSA groups have no JWK (keys a JWK can't carry): build one from the
                // uncompressed point; the filter's key parsing then decides.
                None => {
                    let point = hex(group["publicKey"]["uncompressed"].as_str().expect("point"));
                    let (crv, size) = if alg == Alg::ES256 {
                        ("P-256", 32)
                    } else {
                        ("P-384", 48)
                    };
                    let coords = point.get(1..).unwrap_or_default();
                    let (x, y) = coords.split_at(coords.len().min(size));
                    serde_json::json!({"kty": "EC", "crv": crv, "x": b64url_encode(x), "y": b64url_encode(y)})
                }
            };
            (alg, Some(jwk))
        };
        for test in tests {
            let id = test["tcId"].to_string();
            let expect = Expect::from(test["result"].as_str().expect("result"));
            let comment = test["comment"].as_str().unwrap_or("").to_owned();
            let msg = hex(test["msg"].as_str().expect("msg"));
            let (key, sig) = match &jwk {
                Some(jwk) => (parse_jwk(jwk), hex(test["sig"].as_str().expect("sig"))),
                None => {
                    let k = b64url_encode(&hex(test["key"].as_str().expect("key")));
                    (
                        parse_jwk(&serde_json::json!({"kty": "oct", "k": k})),
                        hex(test["tag"].as_str().expect("tag")),
                    )
                }
            };
            let key = match key {
                Ok(Some(key)) => Some(key),
                _ => None,
            };
            report.record(file, &id, expect, &comment, |host| {
                key.as_ref()
                    .is_some_and(|k| verify_signature(alg, k, &msg, &sig, host))
            });
        }
    }
}

/// A whole compact JWS against a key set, through the filter's JWS layer. Every algorithm
/// is allowed here (the key's own `alg` still applies), as a provider listing them all.
fn verify_jws(keys: &Value, jws: &Value, host: &dyn HostCrypto) -> bool {
    let Some(token) = jws.as_str() else {
        return false; // JSON serialization: not accepted by the filter.
    };
    let Ok(set) = KeySet::from_value(keys, KeyPolicy::Inline) else {
        return false;
    };
    verify_compact(token, &set.keys, &Alg::ALL, host, 1 << 20, 32).is_ok()
}

fn wycheproof_jose(report: &mut Report, file: &str) {
    let data = load(
        conformance_dir()
            .join("wycheproof/testvectors_v1")
            .join(file),
    );
    for group in data["testGroups"].as_array().expect("testGroups") {
        let tests = group["tests"].as_array().expect("tests");
        if group["comment"].as_str().unwrap_or("").starts_with("jwe") {
            report.skip(file, tests.len());
            continue;
        }
        let keys = group.get("public").unwrap_or(&group["private"]).clone();
        for test in tests {
            let id = test["tcId"].to_string();
            let expect = Expect::from(test["result"].as_str().expect("result"));
            let comment = test["comment"].as_str().unwrap_or("").to_owned();
            let jws = test["jws"].clone();
            report.record(file, &id, expect, &comment, |host| {
                verify_jws(&keys, &jws, host)
            });
        }
    }
}

fn rfc_examples(report: &mut Report) {
    let file = "rfc-examples.json";
    let data = load(conformance_dir().join("jose").join(file));
    for entry in data.as_array().expect("array") {
        let name = entry["name"].as_str().expect("name").to_owned();
        let expect = if entry["expect_valid"] == Value::Bool(true) {
            Expect::Valid
        } else {
            Expect::Invalid
        };
        let kind = entry["kind"].as_str().unwrap_or("").to_owned();
        let jwk = entry["jwk"].clone();
        let token = entry["token"].clone();
        let comment = format!("{kind} {}", entry["alg"]);
        match kind.as_str() {
            "jwk" => report.record(file, &name, expect, &comment, |_| {
                // Well-formed: parsed (or recognised as a key this filter does not verify with).
                parse_jwk(&jwk).is_ok()
            }),
            "jwks" => report.record(file, &name, expect, &comment, |_| {
                jwk["keys"]
                    .as_array()
                    .is_some_and(|keys| keys.iter().all(|k| parse_jwk(k).is_ok()))
            }),
            "jws-compact" | "jws-compact-detached" | "jws-json" => {
                report.record(file, &name, expect, &comment, |host| {
                    if kind == "jws-compact-detached" || jwk.is_array() {
                        return false; // detached content / multi-signature: not supported
                    }
                    verify_jws(&jwk, &token, host)
                })
            }
            other => panic!("unknown kind {other}"),
        }
    }
}

fn known_failures() -> BTreeMap<String, String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/jwt_conformance_known_failures.txt");
    let text = std::fs::read_to_string(&path).expect("known failures list");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, reason) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            assert!(
                !reason.trim().is_empty(),
                "known failure {id} needs a reason"
            );
            (id.to_owned(), reason.trim().to_owned())
        })
        .collect()
}

const PRIMITIVE_FILES: &[&str] = &[
    "rsa_signature_2048_sha256_test.json",
    "rsa_signature_2048_sha384_test.json",
    "rsa_signature_2048_sha512_test.json",
    "rsa_signature_3072_sha256_test.json",
    "rsa_signature_3072_sha384_test.json",
    "rsa_signature_3072_sha512_test.json",
    "rsa_signature_4096_sha256_test.json",
    "rsa_signature_4096_sha384_test.json",
    "rsa_signature_4096_sha512_test.json",
    "rsa_pss_2048_sha256_mgf1_32_test.json",
    "rsa_pss_2048_sha384_mgf1_48_test.json",
    "rsa_pss_3072_sha256_mgf1_32_test.json",
    "rsa_pss_4096_sha256_mgf1_32_test.json",
    "rsa_pss_4096_sha384_mgf1_48_test.json",
    "rsa_pss_4096_sha512_mgf1_64_test.json",
    "ecdsa_secp256r1_sha256_p1363_test.json",
    "ecdsa_secp384r1_sha384_p1363_test.json",
    "ed25519_test.json",
    "hmac_sha256_test.json",
    "hmac_sha384_test.json",
    "hmac_sha512_test.json",
];

const JOSE_FILES: &[&str] = &[
    "json_web_signature_test.json",
    "json_web_key_test.json",
    "json_web_crypto_test.json",
];

#[test]
fn jws_conformance() {
    let dir = conformance_dir();
    assert!(
        dir.join("wycheproof/testvectors_v1").is_dir()
            && dir.join("jose/rfc-examples.json").is_file(),
        "conformance data missing at {}: required, never skipped",
        dir.display()
    );
    let mut report = Report::default();
    for file in PRIMITIVE_FILES {
        wycheproof(&mut report, file);
    }
    for file in JOSE_FILES {
        wycheproof_jose(&mut report, file);
    }
    rfc_examples(&mut report);
    // ES512 (P-521) is not a supported algorithm: the file is there for the RFC examples.
    let es512 = load(dir.join("wycheproof/testvectors_v1/ecdsa_secp521r1_sha512_p1363_test.json"));
    report.skip(
        "ecdsa_secp521r1_sha512_p1363_test.json",
        es512["numberOfTests"].as_u64().unwrap_or(0) as usize,
    );

    let known = known_failures();
    println!(
        "{:<42} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "file", "total", "n/a", "pass", "accept", "known"
    );
    let (mut total, mut na, mut passed, mut failed, mut acc, mut acc_ok) = (0, 0, 0, 0, 0, 0);
    for (file, s) in &report.files {
        println!(
            "{:<42} {:>6} {:>6} {:>6} {:>6} {:>6}",
            file, s.total, s.not_applicable, s.passed, s.acceptable, s.failed
        );
        total += s.total;
        na += s.not_applicable;
        passed += s.passed;
        failed += s.failed;
        acc += s.acceptable;
        acc_ok += s.acceptable_verified;
    }
    println!("acceptable vectors: {acc}, of which verified: {acc_ok}");
    println!(
        "JWS conformance: {total} vectors, {} applicable, {passed} passed on both paths (pure Rust and emulated host), {failed} known failures, {na} not applicable",
        total - na
    );

    let new: Vec<String> = report
        .failures
        .iter()
        .filter(|(id, _)| !known.contains_key(*id))
        .map(|(id, why)| format!("{id}  {why}"))
        .collect();
    let fixed: Vec<&String> = known
        .keys()
        .filter(|id| !report.failures.contains_key(*id))
        .collect();
    assert!(
        report.disagreements.is_empty(),
        "pure Rust and host path disagree:\n{}",
        report.disagreements.join("\n")
    );
    assert!(
        new.is_empty(),
        "new conformance failures:\n{}",
        new.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "listed as known failures but now pass (remove them from the list): {fixed:?}"
    );
    let _: BTreeSet<&String> = known.keys().collect();
}
