//! The host calls the filter makes after start-up, straight on the proxy-wasm 0.2.1 ABI.
//!
//! The SDK's wrappers panic on any status they don't expect, and its header-map reader
//! unwraps UTF-8 — a header value with an obs-text byte (`\xff`, which Envoy accepts) would
//! trap the VM and kill every later request on the worker. Here every status becomes a
//! value and every host-provided buffer is parsed with bounds checks.
#![allow(unsafe_code)]

use crate::ports::{HostCrypto, SharedStore, StoreError};
use crate::request::Headers;
use crate::wire::{
    deserialize_headers, serialize_map, verify_signature_arguments, verify_signature_result,
};
use std::ptr::{null, null_mut};

// proxy-wasm ABI 0.2.1 status codes we distinguish.
const STATUS_OK: u32 = 0;
const STATUS_CAS_MISMATCH: u32 = 8;

// Map and stream types of the ABI.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const HTTP_CALL_RESPONSE_BODY: u32 = 4;
const GRPC_RECEIVE_BUFFER: u32 = 5;
const STREAM_HTTP_REQUEST: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;

    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_call_foreign_function(
        function_name: *const u8,
        function_name_size: usize,
        arguments: *const u8,
        arguments_size: usize,
        results: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`
/// (the SDK's allocator, i.e. a `Vec<u8>` with capacity == size).
fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into memory it obtained from our allocator.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Calls an ABI function that returns a host-allocated buffer; `None` unless the status is Ok.
fn with_host_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let status = call(&mut data, &mut size);
    let bytes = take_host_buffer(data, size);
    (status == STATUS_OK).then_some(bytes)
}

/// All pairs of a header map, names lower-cased. Values that are not UTF-8 are decoded lossily
/// (U+FFFD).
pub fn headers(map_type: u32) -> Headers {
    // SAFETY: out-pointers are valid for the call.
    let bytes = with_host_buffer(|d, s| unsafe { proxy_get_header_map_pairs(map_type, d, s) });
    bytes.map(|b| deserialize_headers(&b)).unwrap_or_default()
}

pub fn header_value(map_type: u32, name: &str) -> Option<String> {
    // SAFETY: pointers are valid for the call.
    let bytes = with_host_buffer(|d, s| unsafe {
        proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), d, s)
    })?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn replace_header(map_type: u32, name: &str, value: &str) -> bool {
    // SAFETY: pointers are valid for the call.
    let status = unsafe {
        proxy_replace_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    status == STATUS_OK
}

pub fn add_header(map_type: u32, name: &str, value: &str) -> bool {
    // SAFETY: pointers are valid for the call.
    let status = unsafe {
        proxy_add_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    status == STATUS_OK
}

pub fn remove_header(map_type: u32, name: &str) -> bool {
    // SAFETY: pointers are valid for the call.
    let status = unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) };
    status == STATUS_OK
}

pub fn send_local_response(status: u32, headers: &[(String, String)], body: &str) -> bool {
    let headers = serialize_map(headers);
    let details = "portcullis";
    // SAFETY: pointers are valid for the call.
    let status = unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    status == STATUS_OK
}

/// Resumes the (effective) context's paused request.
pub fn continue_request() -> bool {
    // SAFETY: no pointers.
    (unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) }) == STATUS_OK
}

pub fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: no pointers.
    (unsafe { proxy_set_effective_context(context_id) }) == STATUS_OK
}

/// A property by path (`["source", "address"]`), serialised as the ABI wants: NUL-separated.
pub fn get_property(path: &[&str]) -> Option<Vec<u8>> {
    let joined = path.join("\0");
    // SAFETY: pointers are valid for the call.
    with_host_buffer(|d, s| unsafe { proxy_get_property(joined.as_ptr(), joined.len(), d, s) })
}

/// The host clock; `None` if the host refuses.
pub fn now_nanos() -> Option<u64> {
    let mut nanos = 0u64;
    // SAFETY: the out-pointer is valid for the call.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    (status == STATUS_OK).then_some(nanos)
}

/// `level`: 0 trace, 1 debug, 2 info, 3 warn, 4 error, 5 critical.
pub fn log(level: u32, message: &str) {
    // SAFETY: pointers are valid for the call.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// `kind`: 0 counter, 1 gauge, 2 histogram.
pub fn define_metric(kind: u32, name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: pointers are valid for the call.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == STATUS_OK).then_some(id)
}

pub fn increment_metric(id: u32, by: i64) {
    // SAFETY: no pointers.
    let _ = unsafe { proxy_increment_metric(id, by) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers.
    let _ = unsafe { proxy_record_metric(id, value) };
}

pub fn http_call_response_body(size: usize) -> Option<Vec<u8>> {
    // SAFETY: out-pointers are valid for the call.
    with_host_buffer(|d, s| unsafe {
        proxy_get_buffer_bytes(HTTP_CALL_RESPONSE_BODY, 0, size, d, s)
    })
}

pub fn grpc_call_response_body(size: usize) -> Option<Vec<u8>> {
    // SAFETY: out-pointers are valid for the call.
    with_host_buffer(|d, s| unsafe { proxy_get_buffer_bytes(GRPC_RECEIVE_BUFFER, 0, size, d, s) })
}

/// Sets a one-segment property (Envoy: filter state `wasm.<name>`). The SDK's wrapper
/// panics on any status but Ok; a failure here only loses an access-log field.
pub fn set_property(name: &str, value: &str) -> bool {
    // SAFETY: pointers are valid for the duration of the call.
    let status =
        unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
    status == STATUS_OK
}

/// Proxy-wide shared data.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: pointers are valid for the call; the result buffer is taken over below.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        let value = take_host_buffer(data, size);
        (status == STATUS_OK).then_some((value, cas))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        // SAFETY: pointers are valid for the duration of the call.
        let status = unsafe {
            proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        };
        match status {
            STATUS_OK => Ok(()),
            STATUS_CAS_MISMATCH => Err(StoreError::CasMismatch),
            _ => Err(StoreError::Unavailable),
        }
    }
}

/// Envoy's `verify_signature` foreign function (BoringSSL), about 20x faster than pure Rust
/// RSA inside V8.
pub struct HostVerifier;

impl HostCrypto for HostVerifier {
    fn verify_signature(
        &self,
        hash: &str,
        public_key_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool> {
        let args = verify_signature_arguments(hash, public_key_der, signature, message);
        let name = "verify_signature";
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        // SAFETY: pointers are valid for the call; the result buffer is taken over below.
        let status = unsafe {
            proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                if args.is_empty() {
                    null()
                } else {
                    args.as_ptr()
                },
                args.len(),
                &mut data,
                &mut size,
            )
        };
        let reply = take_host_buffer(data, size);
        if status != STATUS_OK {
            return None;
        }
        Some(verify_signature_result(&reply))
    }
}
