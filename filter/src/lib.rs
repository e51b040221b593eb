//! # Portcullis
//!
//! A policy engine that runs inside the proxies people already operate: a proxy-wasm HTTP
//! filter that verifies JWTs, authorizes requests with CEL policies and rate limits them with
//! token buckets shared by every worker thread.
//!
//! ## Design
//!
//! The crate is a **sans-host decision core** with a thin proxy-wasm shell:
//!
//! ```text
//!            proxy-wasm shell (glue.rs, wasm32 only)
//!   headers, properties ─┐                         ┌─ continue / local response
//!                        ▼                         │
//!   RequestView ──► extract ─► authenticate ─► authorize ─► rate-limit ─► Decision
//!                     (jwt)       (jwt)        (policy)    (ratelimit)
//!                        ▲            ▲            ▲            ▲
//!   ports: clock (SystemTime), HostCrypto, SharedStore, Counters
//! ```
//!
//! Every stage is a pure function of the request view, the compiled [`config::Config`] and
//! the [`pipeline::Env`]. Everything that can be parsed or compiled is, once, at configure
//! time; bad configuration is rejected then, with the field's path.
//!
//! Non-goals: reading files (the Wasm VM can't; `portcullis bundle` inlines `.cel` files),
//! talking to an external rate-limit service (see the docs for the mapping).
//!
//! The request path never panics: a trap would kill the worker's VM.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod attributes;
pub mod bytes;
pub mod canonical;
pub mod config;
pub mod decision;
pub mod error;
pub mod expr;
mod guard_index;
pub mod jwt;
pub mod mode;
pub mod pipeline;
pub mod policy;
pub mod ports;
pub mod ratelimit;
pub mod request;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod glue;
