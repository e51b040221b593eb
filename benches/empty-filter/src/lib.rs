//! The empty proxy-wasm filter: it creates an HTTP context per stream and lets every callback
//! continue. Variant (b) of `benches/envoy/envoy_load.py` loads it to measure what *any* Wasm
//! filter costs in Envoy (VM entry and exit for each callback, context creation), so the
//! Portcullis variants can be read as "floor + our work".

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot) });
}}

struct EmptyRoot;

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EmptyStream))
    }
}

struct EmptyStream;

impl Context for EmptyStream {}

impl HttpContext for EmptyStream {}
