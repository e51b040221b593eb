//! proxy-wasm shell (todo)
