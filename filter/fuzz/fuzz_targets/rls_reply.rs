//! A rate-limit service's reply (`RateLimitResponse`, rls.rs): any bytes decode to a response
//! or to `Malformed`, never a panic; what decodes re-encodes and decodes to the same response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_filter::rls::{decode_response, encode_response};

fuzz_target!(|data: &[u8]| {
    let Ok(response) = decode_response(data) else {
        return;
    };
    let again = decode_response(&encode_response(&response)).expect("our own encoding decodes");
    // Units the encoder cannot name (months, years, weeks) come back as unknown; the rest agrees.
    assert_eq!(again.overall_code, response.overall_code);
    assert_eq!(again.statuses.len(), response.statuses.len());
    assert_eq!(again.response_headers_to_add, response.response_headers_to_add);
    assert_eq!(again.request_headers_to_add, response.request_headers_to_add);
});
