//! The proxy-wasm host.
