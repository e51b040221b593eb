//! CEL expressions: compiled and checked once at configure time, evaluated per request
//! against an [`Activation`] built from the [`RequestView`] and the verified token.
//!
//! # How evaluation is kept cheap
//!
//! * One shared [`cel::Env`] (standard library + extensions) is built once per process and
//!   shared by every compiled expression through an `Arc`.
//! * Per request there is no variable map at all: the [`Activation`] is the context's
//!   variable resolver. The interpreter resolves a qualified name such as `request.path`
//!   by asking for the longest name first, so `request.path` is answered directly with a
//!   string that borrows the request's header bytes, without building a `request` map.
//!   Only a dynamic use of a whole root (`request`, `has(source.address)`, ...) builds a map.
//! * Derived values that are costly (the header map, the query parameters, the token's
//!   claims as CEL values) are computed at most once per request and cached in the
//!   activation (`OnceLock`), then lent out by reference.
//! * `jwt.claims.<name>` is answered straight from the token's pre-converted
//!   [`cel::Value`] tree: only the selected claim is turned into an interpreter value.
//!
//! # Checking
//!
//! [`Expr::compile`] parses once and then walks the AST: every free identifier must be one
//! of the roots (`request`, `source`, `destination`, `connection`, `jwt`) or a variable bound
//! by a macro, every `root.member` must be a known attribute, and every called function must
//! be one the runtime registers. Errors carry the 1-based line and column.
//!
//! # Layout (cel-go's seams)
//!
//! | file | what |
//! | --- | --- |
//! | `compiled.rs` | [`Expr`]: parse, check, bind, evaluate; [`ExprSource`], [`ExprError`], [`EvalError`] |
//! | `checker.rs` | free identifiers, attributes ([`crate::attributes`]) and functions are known |
//! | `activation.rs` | [`Activation`]: one request's variables, resolved on demand |
//! | `fast.rs` | the native evaluator for common shapes, checked against the interpreter |
//! | `env.rs` | the shared [`cel::Env`], known functions and types |
//! | `network.rs`, `encoders.rs`, `bindings.rs`, `literal_regex.rs`, `macros.rs` | extensions |
//! | `tests.rs` | unit tests |
//!
//! [`RequestView`]: crate::request::RequestView

mod activation;
mod bindings;
mod checker;
mod compiled;
mod encoders;
mod env;
mod fast;
mod literal_regex;
mod macros;
pub mod network;
#[cfg(test)]
mod tests;

pub use crate::jwt::attributes::{json_to_cel, JwtAttributes};
pub use activation::Activation;
pub(crate) use activation::{hex_digit, percent_decode};
pub use compiled::{eval_unchecked, eval_unchecked_in, EvalError, Expr, ExprError, ExprSource};
pub use env::shared_env;
