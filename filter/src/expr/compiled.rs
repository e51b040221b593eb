//! The compiled expression and its errors: parsing, checking (see [`super::checker`]) and
//! evaluation entry points.

use super::activation::Activation;
use super::checker::Checker;
use super::env::{build_env, shared_env};
use super::{fast, literal_regex};
use crate::attributes::Attribute;
use cel::common::ast::IdedExpr;
use cel::common::types::CelBool;
use cel::common::value::CowVal;
use cel::common::value::Val;
use cel::context::VariableResolver;
use cel::{Env, ExecutionError};
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

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

/// A compiled expression.
pub struct Expr {
    /// The parsed expression with literal-pattern `matches` calls bound to regexes
    /// compiled at configure time (see [`literal_regex`]); this is what runs.
    expression: IdedExpr,
    env: Arc<Env>,
    host_attributes: Vec<Attribute>,
    uses_jwt: bool,
    /// A native evaluator for the common shapes (see [`fast`]); `None` when the expression
    /// has another shape. It answers only when sure, else the interpreter runs.
    pub(super) fast: Option<fast::Fast>,
    /// The literal patterns of `matches`, compiled; the rewritten calls name them by index.
    regexes: Vec<Arc<Regex>>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expr")
            .field("expression", &self.expression)
            .field("host_attributes", &self.host_attributes)
            .field("uses_jwt", &self.uses_jwt)
            .finish()
    }
}

/// 1-based (line, column in characters) of the character at byte `offset` (the parser's
/// source positions are byte offsets) in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

pub(super) fn parse_error(source: &ExprSource, errors: &cel::ParseErrors) -> ExprError {
    let first = errors.errors.first();
    let (line, column) = first
        .map(|e| {
            (
                usize::try_from(e.pos.0).unwrap_or(1).max(1),
                usize::try_from(e.pos.1).unwrap_or(0).saturating_add(1),
            )
        })
        .unwrap_or((1, 1));
    let message = first
        .map(|e| {
            // The parser's own messages may already start with "Syntax error:".
            let msg = e.msg.trim();
            let msg = msg
                .strip_prefix("Syntax error:")
                .or_else(|| msg.strip_prefix("syntax error:"))
                .map_or(msg, str::trim_start);
            format!("syntax error: {msg}")
        })
        .unwrap_or_else(|| "syntax error".to_owned());
    ExprError {
        file: source.file().map(str::to_owned),
        line,
        column,
        message,
    }
}

impl Expr {
    pub fn compile(source: &ExprSource) -> Result<Expr, ExprError> {
        let env = shared_env().map_err(|message| ExprError {
            file: source.file().map(str::to_owned),
            line: 1,
            column: 1,
            message,
        })?;
        let text = source.text();
        if text.trim().is_empty() || strip_comments(text).trim().is_empty() {
            return Err(ExprError {
                file: source.file().map(str::to_owned),
                line: 1,
                column: 1,
                message: "empty expression".into(),
            });
        }
        let (parsed, source_info) = parse(&env, text).map_err(|e| parse_error(source, &e))?;
        let mut checker = Checker {
            bound: Vec::new(),
            host: BTreeSet::new(),
            uses_jwt: false,
            error: None,
        };
        checker.walk(&parsed);
        // An error at AST node `id` (shifted by `shift` characters), located in the source.
        let error_at = |id: u64, shift: isize, message: String| {
            let offset = source_info
                .offset_for(id)
                .map(|(start, _)| (start as usize).saturating_add_signed(shift))
                .unwrap_or(0);
            let (line, column) = line_col(text, offset);
            ExprError {
                file: source.file().map(str::to_owned),
                line,
                column,
                message,
            }
        };
        if let Some((id, shift, message)) = checker.error {
            return Err(error_at(id, shift, message));
        }
        let host_attributes = checker.host.into_iter().collect();
        let uses_jwt = checker.uses_jwt;
        let mut expression = parsed;
        let mut patterns = Vec::new();
        if let Err((id, message)) = literal_regex::bind(&mut expression, &mut patterns) {
            return Err(error_at(id, 0, message));
        }
        let regexes: Vec<Arc<Regex>> = patterns.into_iter().map(|(_, regex)| regex).collect();
        let fast = fast::compile(&expression, &regexes);
        Ok(Expr {
            expression,
            env,
            host_attributes,
            uses_jwt,
            regexes,
            fast,
        })
    }

    /// The host attributes this expression reads (fetched per request only if some expression needs them).
    pub fn host_attributes(&self) -> Vec<Attribute> {
        self.host_attributes.clone()
    }

    /// The headers and query parameters the expression reads (see [`crate::canonical`]).
    pub fn reads(&self) -> crate::canonical::Reads {
        crate::canonical::reads_of(&self.expression)
    }

    /// The checked AST that runs, for configure-time analysis ([`crate::guard_index`]).
    pub(crate) fn ast(&self) -> &IdedExpr {
        &self.expression
    }

    /// Whether the expression reads `jwt.*`.
    pub fn uses_jwt(&self) -> bool {
        self.uses_jwt
    }

    /// Whether the expression has a native fast path (it still falls back to the
    /// interpreter whenever a value is absent or of an unexpected type).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    fn resolver<'x, 'a>(&'x self, activation: &'x Activation<'a>) -> Variables<'x, 'a> {
        Variables {
            activation,
            regexes: &self.regexes,
        }
    }

    fn context<'x>(&self, variables: &'x Variables<'_, '_>) -> cel::Context<'x, 'x> {
        let mut ctx = cel::Context::with_env(Arc::clone(&self.env));
        ctx.set_variable_resolver(variables);
        ctx
    }

    pub fn eval(&self, activation: &Activation<'_>) -> Result<cel::Value, EvalError> {
        let variables = self.resolver(activation);
        let ctx = self.context(&variables);
        cel::Value::resolve(&self.expression, &ctx).map_err(|e| sanitize(&e))
    }

    pub fn eval_bool(&self, activation: &Activation<'_>) -> Result<bool, EvalError> {
        if let Some(fast::FVal::Bool(b)) = self.fast.as_ref().and_then(|f| f.eval(activation)) {
            return Ok(b);
        }
        self.eval_bool_interpreted(activation)
    }

    /// [`Expr::eval_bool`] without the native fast path (for tests and benchmarks).
    pub fn eval_bool_interpreted(&self, activation: &Activation<'_>) -> Result<bool, EvalError> {
        let variables = self.resolver(activation);
        let ctx = self.context(&variables);
        let value = cel::Value::resolve_val(&self.expression, &ctx).map_err(|e| sanitize(&e))?;
        match value.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(EvalError(format!(
                "expected bool, got {}",
                value.get_type().name()
            ))),
        }
    }

    /// Evaluates to a string key (ints, uints, bools and strings are accepted and rendered).
    pub fn eval_string(&self, activation: &Activation<'_>) -> Result<String, EvalError> {
        match self.fast.as_ref().and_then(|f| f.eval(activation)) {
            Some(fast::FVal::Str(s)) => return Ok(s.into_owned()),
            Some(fast::FVal::Int(i)) => return Ok(i.to_string()),
            Some(fast::FVal::Bool(b)) => return Ok(b.to_string()),
            None => {}
        }
        match self.eval(activation)? {
            cel::Value::String(s) => Ok(s.to_string()),
            cel::Value::Int(i) => Ok(i.to_string()),
            cel::Value::UInt(u) => Ok(u.to_string()),
            cel::Value::Bool(b) => Ok(b.to_string()),
            other => Err(EvalError(format!(
                "expected string, got {}",
                other.type_of()
            ))),
        }
    }
}

/// What an expression's evaluation reads: the request's activation, and the expression's
/// own compiled regexes under their reserved names.
struct Variables<'x, 'a> {
    activation: &'x Activation<'a>,
    regexes: &'x [Arc<Regex>],
}

impl VariableResolver for Variables<'_, '_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        if let Some(index) = literal_regex::variable_index(variable) {
            let regex = self.regexes.get(index)?;
            return Some(CowVal::owned(literal_regex::CompiledRegex(Arc::clone(
                regex,
            ))));
        }
        self.activation.resolve(variable)
    }
}

/// Compiles `text` with the filter's environment (macros, functions, extensions) and
/// evaluates it with the given variables, skipping Portcullis' attribute checker. This is
/// what the conformance suite runs: the same evaluator the filter uses.
///
/// `Err(Err(_))` is a parse error, `Err(Ok(_))` a runtime error.
pub fn eval_unchecked(
    text: &str,
    variables: &[(&str, cel::Value)],
) -> Result<cel::Value, Result<String, String>> {
    eval_unchecked_in("", text, variables)
}

/// [`eval_unchecked`], with names resolved against `container` (e.g. `cel.expr`); an empty
/// container is the filter's own environment, a non-empty one builds a copy of it.
pub fn eval_unchecked_in(
    container: &str,
    text: &str,
    variables: &[(&str, cel::Value)],
) -> Result<cel::Value, Result<String, String>> {
    let env = if container.is_empty() {
        shared_env().map_err(Err)?
    } else {
        let mut env = build_env().map_err(Err)?;
        env.set_container(container)
            .map_err(|e| Err(e.to_string()))?;
        Arc::new(env)
    };
    let (expression, _) = parse(&env, text).map_err(|e| Err(e.to_string()))?;
    let mut ctx = cel::Context::with_env(env);
    for (name, value) in variables {
        let val: Box<dyn Val> = value
            .clone()
            .try_into()
            .map_err(|e: ExecutionError| Err(e.to_string()))?;
        ctx.add_variable_as_val(*name, val);
    }
    cel::Value::resolve(&expression, &ctx).map_err(|e| Ok(e.to_string()))
}

/// Parses with the environment's macros and with backquoted field names
/// (``jwt.claims.`example.com/roles` ``: namespaced claim names are common), which
/// [`Env::compile`] leaves off. The parser is the `cel` crate's hand-written Pratt parser: the
/// generated ANTLR parser is then never referenced and not linked (docs/benchmarks.md, "Size
/// and memory"). Its error positions are (line, 1-based byte column); they become the 0-based
/// character columns the error reporting reads.
pub(super) fn parse(
    env: &Env,
    text: &str,
) -> Result<(IdedExpr, cel::common::ast::SourceInfo), cel::ParseErrors> {
    env.pratt_parser()
        .enable_ident_escape_syntax(true)
        .parse_with_source_info(text)
        .map_err(|mut errors| {
            for error in &mut errors.errors {
                let line = usize::try_from(error.pos.0.max(1) - 1).unwrap_or(0);
                let bytes = usize::try_from(error.pos.1.max(1) - 1).unwrap_or(0);
                let chars = text
                    .split_inclusive('\n')
                    .nth(line)
                    .map_or(0, |l| l.get(..bytes).map_or(bytes, |p| p.chars().count()));
                error.pos.1 = isize::try_from(chars).unwrap_or(0);
            }
            errors
        })
}

/// An evaluation error as a message that names types and keys, never values (which may be
/// header contents or token claims).
pub(super) fn sanitize(error: &ExecutionError) -> EvalError {
    let msg = match error {
        ExecutionError::NoSuchKey(key) => format!("no such key: {key}"),
        ExecutionError::UndeclaredReference(name) => format!("undeclared reference to '{name}'"),
        ExecutionError::NoSuchOverload(o) => o.to_string(),
        ExecutionError::UnexpectedType { got, want } => {
            format!("unexpected type: got '{got}', want '{want}'")
        }
        ExecutionError::InvalidArgumentCount { expected, actual } => {
            format!("invalid argument count: expected {expected}, got {actual}")
        }
        ExecutionError::ValuesNotComparable(a, b) => {
            format!("{} can not be compared to {}", a.type_of(), b.type_of())
        }
        ExecutionError::UnsupportedBinaryOperator(op, a, b) => format!(
            "unsupported binary operator '{op}': {}, {}",
            a.type_of(),
            b.type_of()
        ),
        ExecutionError::DivisionByZero(_) => "division by zero".into(),
        ExecutionError::RemainderByZero(_) => "remainder by zero".into(),
        ExecutionError::Overflow(op, _, _) => format!("overflow in '{op}'"),
        ExecutionError::IndexOutOfBounds(_) => "index out of bounds".into(),
        ExecutionError::FunctionError { function, .. } => {
            format!("error executing function '{function}'")
        }
        ExecutionError::UnsupportedKeyType(v) => {
            format!("unsupported map key type {}", v.type_of())
        }
        ExecutionError::UnsupportedIndex(a, b) => {
            format!("cannot index {} with {}", b.type_of(), a.type_of())
        }
        ExecutionError::MissingArgumentOrTarget => "missing argument or target".into(),
        ExecutionError::DuplicateKey(_) => "duplicate map key".into(),
        _ => "evaluation error".into(),
    };
    EvalError(msg)
}

/// Strips `//` comments (outside string literals), keeping every other character in place.
/// Used only to detect comment-only expressions; the parser skips comments itself.
pub(super) fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None => {
                if c == '/' && chars.peek() == Some(&'/') {
                    for n in chars.by_ref() {
                        if n == '\n' {
                            out.push('\n');
                            break;
                        }
                        out.push(' ');
                    }
                    continue;
                }
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}
