//! Host calls whose SDK wrappers would panic on a status they don't expect (shared data,
//! foreign functions). A panic traps the VM and kills every later request on the worker,
//! so these call the ABI directly and turn every status into a value.
#![allow(unsafe_code)]

use crate::ports::{HostCrypto, SharedStore, StoreError};
use std::ptr::{null, null_mut};

// proxy-wasm ABI 0.2.1 status codes we distinguish.
const STATUS_OK: u32 = 0;
const STATUS_CAS_MISMATCH: u32 = 8;

#[link(wasm_import_module = "env")]
extern "C" {
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

/// Encodes `VerifySignatureArguments { string hash_function = 1; bytes public_key = 2;
/// bytes signature = 3; bytes text = 4; }` (protobuf wire format, length-delimited fields).
pub fn verify_signature_arguments(
    hash: &str,
    public_key_der: &[u8],
    signature: &[u8],
    message: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        16 + hash.len() + public_key_der.len() + signature.len() + message.len(),
    );
    for (field, bytes) in [
        (1u8, hash.as_bytes()),
        (2, public_key_der),
        (3, signature),
        (4, message),
    ] {
        out.push((field << 3) | 2);
        let mut len = bytes.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    out
}

/// `VerifySignatureResult { bool result = 1; string error = 2; }`: valid iff field 1 is true.
/// A failure omits field 1 (proto3 default), so anything but `08 01` first is "invalid".
pub fn verify_signature_result(reply: &[u8]) -> bool {
    matches!(reply, [0x08, 0x01, ..])
}
