//! Arbitrary bytes as a JWKS, fetched (remote policy) or from the configuration (inline).
//!
//! Invariant: parsing is a function of the bytes (same keys, same skipped entries).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_filter::jwt::keys::{KeyPolicy, KeySet};

fn summary(set: &Result<KeySet, portcullis_filter::jwt::keys::KeyError>) -> String {
    match set {
        Ok(set) => format!(
            "{} keys {:?}, skipped {:?}",
            set.keys.len(),
            set.keys
                .iter()
                .map(|k| (&k.kid, k.is_symmetric()))
                .collect::<Vec<_>>(),
            set.skipped
        ),
        Err(e) => format!("error {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    for (policy, depth) in [(KeyPolicy::Remote, 16), (KeyPolicy::Inline, 32)] {
        let first = KeySet::parse(data, policy, depth);
        assert_eq!(
            summary(&first),
            summary(&KeySet::parse(data, policy, depth))
        );
        // `from_value` is the path of a JWKS object inlined in the configuration.
        if let (Ok(set), Ok(value)) = (&first, serde_json::from_slice::<serde_json::Value>(data)) {
            let via_value = KeySet::from_value(&value, policy);
            assert_eq!(
                via_value.as_ref().map(|s| s.keys.len()).ok(),
                Some(set.keys.len())
            );
        }
    }
});
