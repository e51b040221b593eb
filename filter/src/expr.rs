//! CEL expressions: compiled and checked once at configure time, evaluated per request
//! against an [`Activation`] built from the [`RequestView`] and the verified token.
//!
//! STUB: interface fixed, implementation owned by the CEL work.

use crate::request::{HostAttribute, RequestView};
use serde::Deserialize;
use std::fmt;

/// Where an expression's text comes from: inline in the config, or a `.cel` file that
/// `portcullis bundle` inlined (the file name is kept for error messages).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ExprSource {
    Inline(String),
    File { file: String, source: String },
}

impl ExprSource {
    pub fn text(&self) -> &str {
        match self {
            ExprSource::Inline(s) => s,
            ExprSource::File { source, .. } => source,
        }
    }
    pub fn file(&self) -> Option<&str> {
        match self {
            ExprSource::Inline(_) => None,
            ExprSource::File { file, .. } => Some(file),
        }
    }
}

/// A compile-time error, located in the expression text (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub file: Option<String>,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(
                f,
                "{}:{}:{}: {}",
                file, self.line, self.column, self.message
            ),
            None => write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            ),
        }
    }
}

/// A runtime evaluation error (e.g. a missing claim). Never contains secret values.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The verified token's attributes as CEL values, converted once per verified token.
#[derive(Debug, Clone)]
pub struct JwtAttributes {
    pub provider: String,
    pub claims: cel::Value,
    pub header: cel::Value,
}

impl JwtAttributes {
    pub fn from_json(
        provider: &str,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> JwtAttributes {
        JwtAttributes {
            provider: provider.to_owned(),
            claims: json_to_cel(claims),
            header: json_to_cel(header),
        }
    }
}

/// Converts JSON to a CEL value (numbers: integers stay `int`, others `double`).
pub fn json_to_cel(value: &serde_json::Value) -> cel::Value {
    cel::to_value(value).unwrap_or(cel::Value::Null)
}

/// A compiled expression.
#[derive(Debug)]
pub struct Expr {
    program: cel::Program,
}

impl Expr {
    pub fn compile(source: &ExprSource) -> Result<Expr, ExprError> {
        let program = cel::Program::compile(source.text()).map_err(|e| ExprError {
            file: source.file().map(str::to_owned),
            line: 1,
            column: 1,
            message: e.to_string(),
        })?;
        Ok(Expr { program })
    }

    /// The host attributes this expression reads (fetched per request only if some expression needs them).
    pub fn host_attributes(&self) -> Vec<HostAttribute> {
        Vec::new()
    }

    /// Whether the expression reads `jwt.*`.
    pub fn uses_jwt(&self) -> bool {
        self.program.references().has_variable("jwt")
    }

    pub fn eval(&self, activation: &Activation<'_>) -> Result<cel::Value, EvalError> {
        let _ = activation;
        let ctx = cel::Context::default();
        self.program
            .execute(&ctx)
            .map_err(|e| EvalError(e.to_string()))
    }

    pub fn eval_bool(&self, activation: &Activation<'_>) -> Result<bool, EvalError> {
        match self.eval(activation)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(EvalError(format!(
                "expected bool, got {:?}",
                other.type_of()
            ))),
        }
    }

    /// Evaluates to a string key (ints, uints, bools and strings are accepted and rendered).
    pub fn eval_string(&self, activation: &Activation<'_>) -> Result<String, EvalError> {
        match self.eval(activation)? {
            cel::Value::String(s) => Ok(s.to_string()),
            cel::Value::Int(i) => Ok(i.to_string()),
            cel::Value::UInt(u) => Ok(u.to_string()),
            cel::Value::Bool(b) => Ok(b.to_string()),
            other => Err(EvalError(format!(
                "expected string, got {:?}",
                other.type_of()
            ))),
        }
    }
}

/// Everything one request's expressions may read.
#[derive(Debug)]
pub struct Activation<'a> {
    pub request: &'a RequestView,
    pub jwt: Option<&'a JwtAttributes>,
}

impl<'a> Activation<'a> {
    pub fn new(request: &'a RequestView) -> Activation<'a> {
        Activation { request, jwt: None }
    }

    pub fn with_jwt(mut self, jwt: Option<&'a JwtAttributes>) -> Activation<'a> {
        self.jwt = jwt;
        self
    }
}
