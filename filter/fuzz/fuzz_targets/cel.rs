//! CEL: compile an expression, then evaluate it over a random activation (request, host
//! attributes, token header and claims). Input: the expression text, a NUL, then the bytes
//! the activation is built from.
//!
//! Invariants: compiling is deterministic; evaluation never panics; the native fast path
//! agrees with the interpreter whenever it answers.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use portcullis_filter::expr::{Activation, Expr, ExprSource, JwtAttributes};

fuzz_target!(|data: &[u8]| {
    let (text, rest) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let source = ExprSource::Inline(text.to_owned());
    let expr = match Expr::compile(&source) {
        Ok(expr) => expr,
        Err(error) => {
            let again = Expr::compile(&source).err();
            assert_eq!(
                again.as_ref().map(ToString::to_string),
                Some(error.to_string())
            );
            return;
        }
    };
    let again = Expr::compile(&source).expect("compiled once, so compiles again");
    assert_eq!(again.host_attributes(), expr.host_attributes());
    assert_eq!(again.uses_jwt(), expr.uses_jwt());
    assert_eq!(again.has_fast_path(), expr.has_fast_path());

    let mut u = Unstructured::new(rest);
    let Ok(request) = common::request(&mut u) else {
        return;
    };
    let jwt = match u.arbitrary::<bool>() {
        Ok(true) => {
            let (Ok(header), Ok(claims)) = (common::object(&mut u, 2), common::object(&mut u, 3))
            else {
                return;
            };
            Some(JwtAttributes::from_json(
                "fuzz",
                &serde_json::Value::Object(header),
                &serde_json::Value::Object(claims),
            ))
        }
        _ => None,
    };
    // A fresh activation for each evaluation: the activation caches derived values, and a
    // cache must never change an answer.
    let act = || Activation::new(&request).with_jwt(jwt.as_ref());
    let value = expr.eval(&act());
    let fast = expr.eval_bool(&act());
    let interpreted = expr.eval_bool_interpreted(&act());
    if expr.has_fast_path() {
        assert_eq!(
            fast.as_ref().ok(),
            interpreted.as_ref().ok(),
            "fast path {fast:?} vs interpreter {interpreted:?} for {text:?}"
        );
    }
    if let Ok(cel::Value::Bool(b)) = &value {
        assert_eq!(interpreted.as_ref().ok(), Some(b));
    }
    let key = expr.eval_string(&act());
    let expected = match &value {
        Ok(cel::Value::String(s)) => Some(s.to_string()),
        Ok(cel::Value::Int(i)) => Some(i.to_string()),
        Ok(cel::Value::UInt(u)) => Some(u.to_string()),
        Ok(cel::Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    };
    if expected.is_some() || !expr.has_fast_path() {
        assert_eq!(key.ok(), expected, "eval_string vs eval for {text:?}");
    }
});
