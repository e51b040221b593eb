//! Arbitrary bytes as a (remote or inline) JWKS.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_filter::jwt::keys::{KeyPolicy, KeySet};

fuzz_target!(|data: &[u8]| {
    let _ = KeySet::parse(data, KeyPolicy::Remote, 16);
    let _ = KeySet::parse(data, KeyPolicy::Inline, 32);
});
