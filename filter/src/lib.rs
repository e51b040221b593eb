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
//! the [`pipeline::Env`], and returns `Result<T, `[`decision::Stop`]`>`: [`pipeline::decide`]
//! chains them with `?`. A refusal carries a typed [`decision::DenyReason`];
//! [`decision::Refusal::answer`] maps every reason to its status, headers and body in one
//! `match`. Side effects are outputs: counters, and refetch requests left in the
//! [`jwt::RemoteKeys`] the shell lends; compiling a configuration is deterministic.
//! Everything that can be parsed or compiled is, once, at configure time; bad configuration
//! is rejected then, with the field's path.
//!
//! ## Layout, in pipeline order
//!
//! | module | what |
//! | --- | --- |
//! | [`pipeline`] | `decide`: the stages in order |
//! | [`decision`] | what the core decides: `Decision`, `Outcome`, `Stop`, `DenyReason` |
//! | [`decision_log`] | one JSON record per request for a SIEM; what may be logged of a token |
//! | [`request`] | the request view the shell builds |
//! | [`attributes`] | the attribute table: names, CEL types, sources |
//! | [`canonical`] | refusals before any policy reads the request |
//! | [`jwt`] | compile (`compile.rs`), extract (`extract.rs`), evaluate requirements (`mod.rs`) |
//! | [`expr`] | CEL: compiled expression, checker, activation, fast path, environment, extensions |
//! | [`policy`] (+ `guard_index`) | authorization rules |
//! | [`ratelimit`] | shared token buckets |
//! | [`global`], [`rls`] | global limits: the rate-limit service's request and answer, failure modes, breaker |
//! | [`config`], [`error`], [`mode`] | configuration, why it is refused, enforce/shadow |
//! | [`ports`], [`wire`], [`bytes`] | narrow ports; host wire formats; fast equality |
//! | [`metrics`] | every metric's name and labels; Envoy's tag-extraction rules |
//! | `glue` (wasm32 only) | the proxy-wasm shell and its checked ABI layer |
//!
//! Non-goals: reading files (the Wasm VM can't; `portcullis bundle` inlines `.cel` files).
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
pub mod decision_log;
pub mod error;
pub mod expr;
pub mod global;
mod guard_index;
pub mod jwt;
pub mod metrics;
pub mod mode;
pub mod pipeline;
pub mod policy;
pub mod ports;
pub mod ratelimit;
pub mod request;
pub mod rls;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod glue;
