//! # portcullis-tools
//!
//! The part of the `portcullis` tooling that runs no `.wasm`, so that it builds without
//! wasmtime (seconds, not minutes): [`bundle`] turns a YAML configuration with `.cel` and JWKS
//! file references into the plugin configuration JSON, validated exactly as the filter's
//! `on_configure` does; [`token`] signs test JWTs from a private JWKS. The harness
//! (`portcullis-harness`) re-exports both; the `portcullis-config` binary is their CLI, used
//! by `scripts/up.sh`. [`lint`] reviews configurations for risky settings (`portcullis lint`).

pub mod bundle;
pub mod cli;
pub mod lint;
pub mod locate;
pub mod token;
