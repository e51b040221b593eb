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

use crate::attributes::{Attribute, Derived, Source, ROOTS};
use crate::request::{query_of, AttributeValue, RequestView};
use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr};
use cel::common::types::{
    CelBool, CelInt, CelMap, CelMapKey, CelString, Type, BOOL_TYPE, INT_TYPE, STRING_TYPE,
};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::context::VariableResolver;
use cel::{Env, ExecutionError};
use serde::Deserialize;
use std::any::Any;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

mod macros;

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

    /// [`JwtAttributes::from_json`] consuming the JSON: strings move into the CEL values
    /// instead of being copied (the verification path has no further use for them).
    pub fn from_json_owned(
        provider: &str,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> JwtAttributes {
        JwtAttributes {
            provider: provider.to_owned(),
            claims: json_into_cel(claims),
            header: json_into_cel(header),
        }
    }
}

/// [`json_to_cel`] by value.
pub fn json_into_cel(value: serde_json::Value) -> cel::Value {
    match value {
        serde_json::Value::String(s) => cel::Value::String(Arc::new(s)),
        serde_json::Value::Array(items) => {
            cel::Value::List(Arc::new(items.into_iter().map(json_into_cel).collect()))
        }
        serde_json::Value::Object(entries) => {
            let map: HashMap<cel::objects::Key, cel::Value> = entries
                .into_iter()
                .map(|(k, v)| (cel::objects::Key::from(k), json_into_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
        scalar => json_to_cel(&scalar),
    }
}

/// Converts JSON to a CEL value (numbers: integers stay `int`, others `double`).
pub fn json_to_cel(value: &serde_json::Value) -> cel::Value {
    match value {
        serde_json::Value::Null => cel::Value::Null,
        serde_json::Value::Bool(b) => cel::Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect()))
        }
        serde_json::Value::Object(entries) => {
            let map: HashMap<cel::objects::Key, cel::Value> = entries
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.as_str()), json_to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

// ---------------------------------------------------------------------------------------
// The environment: standard library + extensions, built once.
// ---------------------------------------------------------------------------------------

static ENV: OnceLock<Result<Arc<Env>, String>> = OnceLock::new();

/// The shared evaluation environment: the CEL standard library, the `strings`, `math` and
/// `lists` extensions of the `cel` crate, and Portcullis' network extension.
pub fn shared_env() -> Result<Arc<Env>, String> {
    ENV.get_or_init(|| build_env().map(Arc::new))
        .as_ref()
        .map(Arc::clone)
        .map_err(Clone::clone)
}

fn build_env() -> Result<Env, String> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)
        .map_err(|e| e.to_string())?;
    env.add_extension(cel::extensions::math)
        .map_err(|e| e.to_string())?;
    env.add_extension(cel::extensions::lists)
        .map_err(|e| e.to_string())?;
    env.add_extension(network::extension)
        .map_err(|e| e.to_string())?;
    env.add_extension(encoders).map_err(|e| e.to_string())?;
    env.add_extension(literal_regex::extension)
        .map_err(|e| e.to_string())?;
    env.add_macro(cel::parser::Macro::receiver("bind", 3, bind_macro))
        .map_err(|e| e.to_string())?;
    macros::add(&mut env).map_err(|e| e.to_string())?;
    Ok(env)
}

/// `base64.encode(bytes)` and `base64.decode(string)` (padding optional when decoding), as
/// in cel-go's encoders extension: the `cel` crate's own is behind a feature this
/// workspace leaves off.
fn encoders(env: &mut Env) -> Result<(), cel::DeclarationError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine;
    use cel::common::types::{CelBytes, BYTES_TYPE};
    fn encode<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
        let bytes = args
            .first()
            .and_then(|a| a.downcast_ref::<CelBytes>())
            .ok_or_else(|| ExecutionError::function_error("base64.encode", "expected bytes"))?;
        Ok(CowVal::owned(CelString::from(
            STANDARD.encode(bytes.inner()),
        )))
    }
    fn decode<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
        let text = args
            .first()
            .and_then(|a| a.downcast_ref::<CelString>())
            .ok_or_else(|| ExecutionError::function_error("base64.decode", "expected a string"))?;
        let text = text.inner().trim_end_matches('=');
        let bytes = STANDARD_NO_PAD
            .decode(text)
            .map_err(|e| ExecutionError::function_error("base64.decode", e))?;
        Ok(CowVal::owned(CelBytes::from(bytes)))
    }
    env.add_overload(
        "base64.encode",
        "base64_encode_bytes",
        vec![BYTES_TYPE],
        encode,
    )?;
    env.add_overload(
        "base64.decode",
        "base64_decode_string",
        vec![STRING_TYPE],
        decode,
    )?;
    Ok(())
}

/// `cel.bind(name, init, expr)`: `expr` with `name` bound to the value of `init` (evaluated
/// once), as in cel-go's bindings extension. Expanded at parse time into a comprehension
/// over no elements whose accumulator is `name`.
fn bind_macro(
    helper: &mut cel::parser::MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, cel::ParseError> {
    if !matches!(target.as_ref().map(|t| &t.expr), Some(Ast::Ident(n)) if n == "cel") {
        return Ok(None);
    }
    let var = match args.first().map(|a| &a.expr) {
        Some(Ast::Ident(v)) => v.clone(),
        _ => {
            let id = args.first().map_or(0, |a| a.id);
            return Err(
                helper.new_error(id, "cel.bind() variable name must be a simple identifier")
            );
        }
    };
    let (Some(result), Some(init)) = (args.pop(), args.pop()) else {
        return Ok(None);
    };
    Ok(Some(macros::bind(helper, &var, init, result)))
}

/// Function names the runtime knows (standard library + extensions), for the checker.
/// Kept in sync with [`build_env`] by a unit test that calls each of them.
const KNOWN_FUNCTIONS: &[&str] = &[
    // standard library
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "timestamp",
    "duration",
    "type",
    "dyn",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "hasValue",
    "value",
    "or",
    "orValue",
    // strings extension
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "format",
    "reverse",
    "strings.quote",
    // math extension
    "math.ceil",
    "math.floor",
    "math.round",
    "math.trunc",
    "math.isInf",
    "math.isNaN",
    "math.isFinite",
    "math.abs",
    "math.sign",
    "math.bitAnd",
    "math.bitOr",
    "math.bitXor",
    "math.bitNot",
    "math.bitShiftLeft",
    "math.bitShiftRight",
    "math.sqrt",
    "math.greatest",
    "math.least",
    // lists extension
    "slice",
    "flatten",
    "distinct",
    "sort",
    "lists.range",
    // encoders
    "base64.encode",
    "base64.decode",
    // network extension
    "ip",
    "cidr",
    "isIP",
    "isCIDR",
    "ip.isCanonical",
    "family",
    "isUnspecified",
    "isLoopback",
    "isGlobalUnicast",
    "isLinkLocalMulticast",
    "isLinkLocalUnicast",
    "containsIP",
    "containsCIDR",
    "masked",
    "prefixLength",
];

/// Type names an expression may mention (`type(x) == string`).
const KNOWN_TYPES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "int",
    "uint",
    "string",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "optional_type",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "net.IP",
    "net.CIDR",
];

fn is_operator(name: &str) -> bool {
    name.starts_with('_')
        || name.starts_with('@')
        || name == "!_"
        || name == "-_"
        || name.starts_with("cel.")
}

fn is_known_function(name: &str) -> bool {
    is_operator(name) || KNOWN_FUNCTIONS.contains(&name)
}

// ---------------------------------------------------------------------------------------
// Compiled expressions.
// ---------------------------------------------------------------------------------------

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
    fast: Option<fast::Fast>,
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

/// 1-based (line, column) of the character at `offset` (counted in characters, as the
/// parser counts them) in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for (i, c) in text.chars().enumerate() {
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

fn parse_error(source: &ExprSource, errors: &cel::ParseErrors) -> ExprError {
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
        if let Err((id, message)) = literal_regex::bind(&mut expression) {
            return Err(error_at(id, 0, message));
        }
        let fast = fast::compile(&expression);
        Ok(Expr {
            expression,
            env,
            host_attributes,
            uses_jwt,
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

    fn context<'x>(&self, activation: &'x Activation<'_>) -> cel::Context<'x, 'x> {
        let mut ctx = cel::Context::with_env(Arc::clone(&self.env));
        ctx.set_variable_resolver(activation);
        ctx
    }

    pub fn eval(&self, activation: &Activation<'_>) -> Result<cel::Value, EvalError> {
        let ctx = self.context(activation);
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
        let ctx = self.context(activation);
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
/// [`Env::compile`] leaves off.
fn parse(
    env: &Env,
    text: &str,
) -> Result<(IdedExpr, cel::common::ast::SourceInfo), cel::ParseErrors> {
    env.parser()
        .enable_ident_escape_syntax(true)
        .parse_with_source_info(text)
}

/// An evaluation error as a message that names types and keys, never values (which may be
/// header contents or token claims).
fn sanitize(error: &ExecutionError) -> EvalError {
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
fn strip_comments(text: &str) -> String {
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

// ---------------------------------------------------------------------------------------
// The checker.
// ---------------------------------------------------------------------------------------

struct Checker {
    bound: Vec<String>,
    host: BTreeSet<Attribute>,
    uses_jwt: bool,
    error: Option<(u64, isize, String)>,
}

/// The node ids of a select chain's segments, root first (see [`segments`]).
fn ids(expr: &IdedExpr) -> Vec<u64> {
    let mut out = Vec::new();
    let mut e = expr;
    loop {
        out.push(e.id);
        match &e.expr {
            Ast::Select(s) if !s.test => e = &s.operand,
            _ => break,
        }
    }
    out.reverse();
    out
}

/// The segments of a select chain `a.b.c` (no `has()` test inside), root first.
fn segments(expr: &IdedExpr) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut e = expr;
    loop {
        match &e.expr {
            Ast::Ident(name) => {
                out.push(name.as_str());
                out.reverse();
                return Some(out);
            }
            Ast::Select(s) if !s.test => {
                out.push(s.field.as_str());
                e = &s.operand;
            }
            _ => return None,
        }
    }
}

impl Checker {
    fn fail(&mut self, id: u64, message: String) {
        self.fail_at(id, 0, message);
    }

    /// Records the first error, at the node's offset moved by `shift` characters.
    fn fail_at(&mut self, id: u64, shift: isize, message: String) {
        if self.error.is_none() {
            self.error = Some((id, shift, message));
        }
    }

    fn is_bound(&self, name: &str) -> bool {
        self.bound.iter().any(|b| b == name)
    }

    /// A root used as a whole (`request`, `source[...]`): every attribute under it may be read.
    fn whole_root(&mut self, root: &str) {
        if root == "jwt" {
            self.uses_jwt = true;
        }
        self.host
            .extend(Attribute::members_of(root).filter(|a| a.is_host()));
    }

    /// `root.member...`: checks the member and records what it reads.
    fn root_member(&mut self, id: u64, shift: isize, root: &str, member: &str) {
        if !Attribute::is_root(root) {
            return;
        }
        let Some(attribute) = Attribute::lookup(root, member) else {
            let known: Vec<&str> = Attribute::members_of(root)
                .map(Attribute::cel_name)
                .collect();
            self.fail_at(
                id,
                shift,
                format!(
                    "unknown attribute '{root}.{member}' (known: {})",
                    known.join(", ")
                ),
            );
            return;
        };
        match attribute.source() {
            Source::Token => self.uses_jwt = true,
            Source::Host(_) => {
                self.host.insert(attribute);
            }
            Source::Header(_) | Source::Derived(_) => {}
        }
    }

    /// A qualified name `a.b.c` that is not a bound variable: a root's attribute or a type.
    /// `id` is the node of the chain's root identifier (errors point at it).
    fn qualified(&mut self, ids: &[u64], segs: &[&str]) {
        let (Some(first), Some(id)) = (segs.first().copied(), ids.first().copied()) else {
            return;
        };
        if self.is_bound(first) {
            return;
        }
        if Attribute::is_root(first) {
            match segs.get(1) {
                // a select's offset is its '.': point at the member's name
                Some(member) => {
                    let member_id = ids.get(1).copied().unwrap_or(id);
                    self.root_member(member_id, 1, first, member)
                }
                None => self.whole_root(first),
            }
            return;
        }
        let joined = segs.join(".");
        if KNOWN_TYPES.contains(&joined.as_str()) {
            return;
        }
        self.fail(
            id,
            format!(
                "undeclared reference to '{joined}' (variables are {})",
                ROOTS.join(", ")
            ),
        );
    }

    fn walk(&mut self, e: &IdedExpr) {
        if self.error.is_some() {
            return;
        }
        match &e.expr {
            Ast::Unspecified | Ast::Literal(_) => {}
            Ast::Ident(_) => {
                if let Some(segs) = segments(e) {
                    self.qualified(&ids(e), &segs);
                }
            }
            Ast::Select(s) => {
                if s.test {
                    // has(a.b.c): checks `a.b` and then that `c` is a known member if `a.b` is a root.
                    if let Some(mut segs) = segments(&s.operand) {
                        segs.push(s.field.as_str());
                        let mut ids = ids(&s.operand);
                        ids.push(e.id);
                        self.qualified(&ids, &segs);
                    } else {
                        self.walk(&s.operand);
                    }
                } else if let Some(segs) = segments(e) {
                    self.qualified(&ids(e), &segs);
                } else {
                    self.walk(&s.operand);
                }
            }
            Ast::Call(call) => {
                // `ns.f(x)`: a namespaced function, not a method on the variable `ns`.
                let qualified_fn = call.target.as_ref().and_then(|t| {
                    let segs = segments(t)?;
                    let first = segs.first()?;
                    if self.is_bound(first) || Attribute::is_root(first) {
                        return None;
                    }
                    let name = format!("{}.{}", segs.join("."), call.func_name);
                    KNOWN_FUNCTIONS.contains(&name.as_str()).then_some(name)
                });
                if qualified_fn.is_none() {
                    if !is_known_function(&call.func_name) {
                        // a call's offset is its '(': point at the function's name
                        let shift = -isize::try_from(call.func_name.chars().count()).unwrap_or(0);
                        self.fail_at(
                            e.id,
                            shift,
                            format!("undeclared function '{}'", call.func_name),
                        );
                        return;
                    }
                    if let Some(t) = &call.target {
                        self.walk(t);
                    }
                }
                if call.func_name == "_[_]" {
                    // root["member"] with a literal key is a static member access.
                    if let (Some(target), Some(key)) = (call.args.first(), call.args.get(1)) {
                        if let (
                            Ast::Ident(root),
                            Ast::Literal(cel::common::ast::LiteralValue::String(k)),
                        ) = (&target.expr, &key.expr)
                        {
                            if !self.is_bound(root) && Attribute::is_root(root) {
                                self.root_member(key.id, 0, root, k.inner());
                                return;
                            }
                        }
                    }
                }
                for a in &call.args {
                    self.walk(a);
                }
                self.type_check_call(e.id, &call.func_name, call.target.as_deref(), &call.args);
            }
            Ast::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let n = self.bound.len();
                self.bound.push(c.iter_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    self.bound.push(v2.clone());
                }
                self.bound.push(c.accu_var.clone());
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.bound.truncate(n);
            }
            Ast::List(l) => {
                for el in &l.elements {
                    self.walk(el);
                }
            }
            Ast::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.walk(&me.key);
                        self.walk(&me.value);
                    }
                }
            }
            Ast::Struct(s) => {
                self.fail(
                    e.id,
                    format!(
                        "message construction ('{}{{...}}') is not supported",
                        s.type_name
                    ),
                );
            }
        }
    }

    /// Cheap type errors: an arithmetic or `size` call on literals/attributes of an obviously
    /// wrong type.
    fn type_check_call(
        &mut self,
        id: u64,
        func: &str,
        target: Option<&IdedExpr>,
        args: &[IdedExpr],
    ) {
        let kinds: Vec<Option<&'static str>> = target
            .into_iter()
            .chain(args.iter())
            .map(|a| self.static_type(a))
            .collect();
        let mismatch = match (func, kinds.as_slice()) {
            ("_+_" | "_-_" | "_*_" | "_/_" | "_%_", [Some(a), Some(b)]) => a != b,
            ("_<_" | "_<=_" | "_>_" | "_>=_", [Some(a), Some(b)]) => {
                let numeric = |t: &str| matches!(t, "int" | "uint" | "double");
                a != b && !(numeric(a) && numeric(b))
            }
            ("size", [Some(a)]) => !matches!(*a, "string" | "bytes" | "list" | "map"),
            _ => false,
        };
        if mismatch {
            let types: Vec<&str> = kinds.iter().map(|k| k.unwrap_or("dyn")).collect();
            let shown = match func {
                "_+_" => "+",
                "_-_" => "-",
                "_*_" => "*",
                "_/_" => "/",
                "_%_" => "%",
                "_<_" => "<",
                "_<=_" => "<=",
                "_>_" => ">",
                "_>=_" => ">=",
                other => other,
            };
            self.fail(
                id,
                format!(
                    "type error: no matching overload for '{shown}' applied to ({})",
                    types.join(", ")
                ),
            );
        }
    }

    /// The type of a literal or of a typed attribute, when obvious.
    fn static_type(&self, e: &IdedExpr) -> Option<&'static str> {
        use cel::common::ast::LiteralValue as L;
        match &e.expr {
            Ast::Literal(L::Int(_)) => Some("int"),
            Ast::Literal(L::UInt(_)) => Some("uint"),
            Ast::Literal(L::Double(_)) => Some("double"),
            Ast::Literal(L::String(_)) => Some("string"),
            Ast::Literal(L::Bytes(_)) => Some("bytes"),
            Ast::Literal(L::Boolean(_)) => Some("bool"),
            Ast::Literal(L::Null) => Some("null_type"),
            Ast::List(_) => Some("list"),
            Ast::Map(_) => Some("map"),
            Ast::Select(s) if !s.test => {
                let segs = segments(e)?;
                if segs.len() != 2 || self.is_bound(segs.first()?) {
                    return None;
                }
                let (Some(root), Some(member)) = (segs.first(), segs.get(1)) else {
                    return None;
                };
                Attribute::lookup(root, member).map(|a| a.cel_type().name())
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The activation: one request's variables, resolved on demand.
// ---------------------------------------------------------------------------------------

/// Everything one request's expressions may read.
#[derive(Debug)]
pub struct Activation<'a> {
    pub request: &'a RequestView,
    pub jwt: Option<&'a JwtAttributes>,
    headers: OnceLock<CelMap<'a>>,
    query_params: OnceLock<CelMap<'static>>,
    claims: OnceLock<Option<Box<dyn Val>>>,
    jwt_header: OnceLock<Option<Box<dyn Val>>>,
}

impl<'a> Activation<'a> {
    pub fn new(request: &'a RequestView) -> Activation<'a> {
        Activation {
            request,
            jwt: None,
            headers: OnceLock::new(),
            query_params: OnceLock::new(),
            claims: OnceLock::new(),
            jwt_header: OnceLock::new(),
        }
    }

    pub fn with_jwt(mut self, jwt: Option<&'a JwtAttributes>) -> Activation<'a> {
        self.jwt = jwt;
        self.claims = OnceLock::new();
        self.jwt_header = OnceLock::new();
        self
    }

    fn path(&self) -> Option<&'a str> {
        self.request.header(":path")
    }

    fn headers_map(&self) -> &CelMap<'a> {
        self.headers.get_or_init(|| {
            let headers = &self.request.headers;
            let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> =
                HashMap::with_capacity(headers.len());
            for (name, _) in headers {
                let key = CelMapKey::String(CelString::from(name));
                if let (false, Some(value)) = (map.contains_key(&key), headers.joined(name)) {
                    let value: Box<dyn Val + 'a> = match value {
                        Cow::Borrowed(v) => Box::new(CelString::from(v)),
                        Cow::Owned(v) => Box::new(CelString::from(v)),
                    };
                    map.insert(key, value);
                }
            }
            CelMap::from(map)
        })
    }

    fn query_params_map(&self) -> &CelMap<'static> {
        self.query_params.get_or_init(|| {
            let mut map: HashMap<CelMapKey<'static>, Box<dyn Val>> = HashMap::new();
            let query = query_of(self.path().unwrap_or(""));
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let key = CelMapKey::String(CelString::from(percent_decode(k)));
                map.entry(key)
                    .or_insert_with(|| Box::new(CelString::from(percent_decode(v))));
            }
            CelMap::from(map)
        })
    }

    fn claims_val(&self) -> Option<&(dyn Val + 'static)> {
        self.claims
            .get_or_init(|| match self.jwt {
                Some(j) => j.claims.clone().try_into().ok(),
                None => Some(Box::new(CelMap::from(HashMap::new()))),
            })
            .as_deref()
    }

    fn jwt_header_val(&self) -> Option<&(dyn Val + 'static)> {
        self.jwt_header
            .get_or_init(|| match self.jwt {
                Some(j) => j.header.clone().try_into().ok(),
                None => Some(Box::new(CelMap::from(HashMap::new()))),
            })
            .as_deref()
    }

    fn host(&self, attribute: Attribute) -> Option<Box<dyn Val + 'a>> {
        Some(match self.request.attribute(attribute)? {
            AttributeValue::String(s) => Box::new(CelString::from(s.as_str())),
            AttributeValue::Int(i) => Box::new(CelInt::from(*i)),
            AttributeValue::Bool(b) => Box::new(CelBool::from(*b)),
            AttributeValue::Timestamp(t) => timestamp_val(*t)?,
        })
    }

    /// One attribute's value, from where the attribute table says it comes from.
    fn value(&self, attribute: Attribute) -> Option<CowVal<'_, 'a>> {
        match attribute.source() {
            Source::Header(_)
            | Source::Derived(Derived::UrlPath | Derived::Authority | Derived::Query) => {
                let value = self.request.string_attribute(attribute)?;
                Some(CowVal::owned(CelString::from(value)))
            }
            Source::Derived(Derived::Headers) => Some(CowVal::Borrowed(self.headers_map())),
            Source::Derived(Derived::QueryParams) => {
                Some(CowVal::Borrowed(self.query_params_map()))
            }
            Source::Host(_) => self.host(attribute).map(CowVal::Owned),
            Source::Token => match attribute {
                Attribute::JwtClaims => self.claims_val().map(CowVal::Borrowed),
                Attribute::JwtHeader => self.jwt_header_val().map(CowVal::Borrowed),
                _ => Some(CowVal::owned(CelString::from(
                    self.jwt.map_or("", |j| j.provider.as_str()),
                ))),
            },
        }
    }

    fn member(&self, root: &str, member: &str) -> Option<CowVal<'_, 'a>> {
        self.value(Attribute::lookup(root, member)?)
    }

    /// The whole `root` as a map of the members that are present.
    fn root_map(&self, root: &str) -> Option<CowVal<'_, 'a>> {
        if !Attribute::is_root(root) {
            return None;
        }
        let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::new();
        for attribute in Attribute::members_of(root) {
            if let Some(v) = self.value(attribute) {
                map.insert(
                    CelMapKey::String(CelString::from(attribute.member())),
                    v.into_owned(),
                );
            }
        }
        Some(CowVal::owned(CelMap::from(map)))
    }

    /// `jwt.claims.<name>` / `jwt.header.<name>`: straight from the token's value tree.
    fn jwt_field(&self, which: &str, name: &str) -> Option<CowVal<'_, 'a>> {
        let jwt = self.jwt?;
        let value = match which {
            "claims" => &jwt.claims,
            "header" => &jwt.header,
            _ => return None,
        };
        let cel::Value::Map(map) = value else {
            return None;
        };
        let v = map.get(&cel::objects::KeyRef::String(name))?;
        let val: Box<dyn Val> = v.clone().try_into().ok()?;
        Some(CowVal::Owned(val))
    }
}

impl VariableResolver for Activation<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let (root, rest) = variable.split_once('.').unwrap_or((variable, ""));
        if rest.is_empty() {
            return self.root_map(root);
        }
        match rest.split_once('.') {
            None => self.member(root, rest),
            Some((which, name)) if root == "jwt" && !name.contains('.') => {
                self.jwt_field(which, name)
            }
            Some(_) => None,
        }
    }
}

/// The value of one hexadecimal digit.
pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding: `%XX` and `+` for a space. Invalid escapes
/// are kept as written; invalid UTF-8 is replaced.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let decoded = bytes
                    .get(i + 1)
                    .and_then(|h| hex_digit(*h))
                    .zip(bytes.get(i + 2).and_then(|l| hex_digit(*l)));
                match decoded {
                    Some((h, l)) => {
                        out.push(h * 16 + l);
                        i += 3;
                    }
                    None => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A CEL timestamp for `t`, built with the standard library's own conversions (the filter
/// doesn't depend on chrono directly).
fn timestamp_val<'v>(t: std::time::SystemTime) -> Option<Box<dyn Val + 'v>> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    let env = shared_env().ok()?;
    let secs = i64::try_from(since.as_secs()).ok()?;
    let to_ts = env.find_overload("timestamp", &[CowVal::owned(CelInt::from(secs))])?;
    let ts = to_ts(vec![CowVal::owned(CelInt::from(secs))]).ok()?;
    let nanos = since.subsec_nanos();
    if nanos == 0 {
        return Some(ts.into_owned());
    }
    let text = CelString::from(format!("{nanos}ns"));
    let to_dur = env.find_overload("duration", &[CowVal::owned(text.clone())])?;
    let dur = to_dur(vec![CowVal::owned(text)]).ok()?;
    let sum = ts.as_adder()?.add(dur.as_ref()).ok()?;
    Some(sum.into_owned())
}

/// `matches` with a literal pattern, compiled once at configure time.
///
/// The `cel` crate compiles the pattern on every call: `groups.exists(g, g.matches('.+'))`
/// cost ~70 µs per request in the harness, most of it building the same regex again. At
/// configure time every `x.matches('lit')` / `matches(x, 'lit')` is checked (an invalid
/// pattern rejects the configuration with its line and column) and rewritten to a call of
/// [`FUNCTION`], which finds the compiled regex by its pattern in a process-wide table. The
/// answers are the interpreter's: the same `regex` crate and the same `is_match`.
mod literal_regex {
    use super::{Ast, IdedExpr};
    use cel::common::ast::{EntryExpr, IdedEntryExpr, LiteralValue};
    use cel::common::types::{CelBool, CelString};
    use cel::common::value::CowVal;
    use cel::ExecutionError;
    use regex::Regex;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    /// Not a name users can write: the checker only admits known functions, and this
    /// rewrite runs after it.
    pub const FUNCTION: &str = "__portcullis_matches_literal";

    /// Compiled patterns by source text. Entries are added only at configure time, from the
    /// configuration's own literals, so the table is bounded by the configurations loaded.
    fn table() -> &'static Mutex<HashMap<String, Arc<Regex>>> {
        static TABLE: OnceLock<Mutex<HashMap<String, Arc<Regex>>>> = OnceLock::new();
        TABLE.get_or_init(|| Mutex::new(HashMap::new()))
    }

    /// Compiles (or finds) `pattern`.
    pub fn compile(pattern: &str) -> Result<Arc<Regex>, String> {
        if let Some(found) = get(pattern) {
            return Ok(found);
        }
        let compiled =
            Arc::new(Regex::new(pattern).map_err(|e| format!("invalid regex in matches(): {e}"))?);
        if let Ok(mut table) = table().lock() {
            table.insert(pattern.to_owned(), Arc::clone(&compiled));
        }
        Ok(compiled)
    }

    pub fn get(pattern: &str) -> Option<Arc<Regex>> {
        table().lock().ok()?.get(pattern).cloned()
    }

    fn literal(e: &IdedExpr) -> Option<&str> {
        match &e.expr {
            Ast::Literal(LiteralValue::String(s)) => Some(s.inner()),
            _ => None,
        }
    }

    /// Rewrites every literal-pattern `matches` in `e` (recursively); the error is the id of
    /// the offending pattern and the message.
    pub fn bind(e: &mut IdedExpr) -> Result<(), (u64, String)> {
        match &mut e.expr {
            Ast::Call(call) => {
                if let Some(target) = call.target.as_deref_mut() {
                    bind(target)?;
                }
                for arg in &mut call.args {
                    bind(arg)?;
                }
                if call.func_name != "matches" {
                    return Ok(());
                }
                // Only a literal pattern is bound; anything else is left as it was, for the
                // interpreter's own `matches`.
                let pattern = match (call.target.is_some(), call.args.as_slice()) {
                    (true, [pattern]) | (false, [_, pattern]) => pattern,
                    _ => return Ok(()),
                };
                let (Some(text), id) = (literal(pattern), pattern.id) else {
                    return Ok(());
                };
                compile(text).map_err(|message| (id, message))?;
                if let Some(target) = call.target.take() {
                    call.args.insert(0, *target);
                }
                call.func_name = FUNCTION.to_owned();
                Ok(())
            }
            Ast::Comprehension(c) => {
                for part in [
                    &mut c.iter_range,
                    &mut c.accu_init,
                    &mut c.loop_cond,
                    &mut c.loop_step,
                    &mut c.result,
                ] {
                    bind(part)?;
                }
                Ok(())
            }
            Ast::Select(s) => bind(&mut s.operand),
            Ast::List(l) => l.elements.iter_mut().try_for_each(bind),
            Ast::Map(m) => m.entries.iter_mut().try_for_each(bind_entry),
            Ast::Struct(st) => st.entries.iter_mut().try_for_each(bind_entry),
            Ast::Unspecified | Ast::Ident(_) | Ast::Literal(_) => Ok(()),
        }
    }

    fn bind_entry(entry: &mut IdedEntryExpr) -> Result<(), (u64, String)> {
        match &mut entry.expr {
            EntryExpr::MapEntry(kv) => {
                bind(&mut kv.key)?;
                bind(&mut kv.value)
            }
            EntryExpr::StructField(f) => bind(&mut f.value),
        }
    }

    fn matches_literal<'b, 'v>(
        args: Vec<CowVal<'b, 'v>>,
    ) -> Result<CowVal<'b, 'v>, ExecutionError> {
        let text = args.first().and_then(|a| a.downcast_ref::<CelString>());
        let pattern = args.get(1).and_then(|a| a.downcast_ref::<CelString>());
        let (Some(text), Some(pattern)) = (text, pattern) else {
            let types = args
                .iter()
                .map(|a| a.get_type().name().to_owned())
                .collect();
            return Err(ExecutionError::no_such_overload("matches", types));
        };
        let regex = match get(pattern.inner()) {
            Some(regex) => regex,
            None => compile(pattern.inner())
                .map_err(|e| ExecutionError::function_error("matches", e))?,
        };
        Ok(CowVal::owned(CelBool::from(regex.is_match(text.inner()))))
    }

    pub fn extension(env: &mut cel::Env) -> Result<(), cel::DeclarationError> {
        use cel::common::types::STRING_TYPE;
        env.add_overload(
            FUNCTION,
            FUNCTION,
            vec![STRING_TYPE, STRING_TYPE],
            matches_literal,
        )
    }
}

// ---------------------------------------------------------------------------------------
// The fast path: a native evaluator for the shapes policies are mostly made of.
// ---------------------------------------------------------------------------------------

/// A native evaluator for the common expression shapes: attribute reads, literals, `==`,
/// `!=`, `&&`, `||`, `!`, `in` (list literals, header presence, string-list claims,
/// `claim.split(sep)`), `startsWith`, `endsWith`, `contains`, `has()` on headers and claims.
///
/// It returns `None` ("not sure") whenever a value is absent or of an unexpected type, and
/// the caller then runs the interpreter, which gives CEL's exact answer (or error). So the
/// fast path can only ever agree with the interpreter; a unit test checks that it does.
mod fast {
    use super::{Activation, Ast, IdedExpr};
    use crate::attributes::{Attribute, AttributeKind, Source};
    use crate::request::AttributeValue;
    use cel::common::ast::LiteralValue as L;
    use std::borrow::Cow;

    #[derive(Debug, Clone, PartialEq)]
    pub enum FVal<'a> {
        Bool(bool),
        Str(Cow<'a, str>),
        Int(i64),
    }

    #[derive(Debug)]
    pub enum Fast {
        Lit(FVal<'static>),
        /// A string attribute read from the headers ([`Attribute::is_header_string`]).
        Request(Attribute),
        /// `request.headers["name"]` / `request.headers.name`.
        Header(String),
        /// `"name" in request.headers`, `has(request.headers.name)`.
        HasHeader(String),
        Host(Attribute),
        JwtProvider,
        /// `jwt.claims.name` (a string, int or bool claim).
        Claim(String),
        /// `has(jwt.claims.name)`.
        HasClaim(String),
        /// `x in jwt.claims.name` (a list claim).
        InClaimList(Box<Fast>, String),
        /// `x in jwt.claims.name.split(sep)`.
        InClaimSplit(Box<Fast>, String, String),
        InList(Box<Fast>, Vec<FVal<'static>>),
        Eq(Box<Fast>, Box<Fast>),
        Ne(Box<Fast>, Box<Fast>),
        And(Box<Fast>, Box<Fast>),
        Or(Box<Fast>, Box<Fast>),
        Not(Box<Fast>),
        StartsWith(Box<Fast>, Box<Fast>),
        EndsWith(Box<Fast>, Box<Fast>),
        Contains(Box<Fast>, Box<Fast>),
        /// `cidr("lit").containsIP(ip(x))` / `.containsIP(x)` with `x` a string.
        CidrContains(super::network::Cidr, Box<Fast>),
        /// `ip(x).isLoopback()`.
        IsLoopback(Box<Fast>),
        /// The element an enclosing [`Fast::Quantifier`] is looking at.
        Elem,
        /// `range.exists(x, p)` (`all == false`) or `range.all(x, p)`.
        Quantifier {
            over: QuantifierRange,
            pred: Box<Fast>,
            all: bool,
        },
        /// `x.matches('literal')` (rewritten by `literal_regex`), `x` a string.
        Matches(Box<Fast>, std::sync::Arc<regex::Regex>),
        /// `has(root.member)` for a string/int/bool attribute.
        Has(Box<Fast>),
    }

    fn lit(e: &IdedExpr) -> Option<FVal<'static>> {
        match &e.expr {
            Ast::Literal(L::Boolean(b)) => Some(FVal::Bool(*b.inner())),
            Ast::Literal(L::Int(i)) => Some(FVal::Int(*i.inner())),
            Ast::Literal(L::String(s)) => Some(FVal::Str(Cow::Owned(s.inner().to_owned()))),
            _ => None,
        }
    }

    /// `a.b.c` as segments, root first.
    fn path(e: &IdedExpr) -> Option<Vec<&str>> {
        super::segments(e)
    }

    fn string_lit(e: &IdedExpr) -> Option<String> {
        match &e.expr {
            Ast::Literal(L::String(s)) => Some(s.inner().to_owned()),
            _ => None,
        }
    }

    /// `request.headers["x"]`-style operand: (root path, key).
    fn index_of(e: &IdedExpr) -> Option<(Vec<&str>, String)> {
        let Ast::Call(c) = &e.expr else { return None };
        if c.func_name != "_[_]" || c.target.is_some() {
            return None;
        }
        let (Some(target), Some(key)) = (c.args.first(), c.args.get(1)) else {
            return None;
        };
        Some((path(target)?, string_lit(key)?))
    }

    fn attribute(segs: &[&str]) -> Option<Fast> {
        match segs {
            ["request", "headers", name] => Some(Fast::Header((*name).to_owned())),
            ["jwt", "claims", name] => Some(Fast::Claim((*name).to_owned())),
            [root, member] => {
                let a = Attribute::lookup(root, member)?;
                match a.source() {
                    _ if a.is_header_string() => Some(Fast::Request(a)),
                    // request.time is a timestamp: leave it to the interpreter.
                    Source::Host(kind) => {
                        (kind != AttributeKind::Timestamp).then_some(Fast::Host(a))
                    }
                    Source::Token => (a == Attribute::JwtProvider).then_some(Fast::JwtProvider),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    pub fn compile(e: &IdedExpr) -> Option<Fast> {
        compile_in(e, None)
    }

    /// `var`: the iteration variable of the enclosing `exists`/`all`, if any.
    fn compile_in(e: &IdedExpr, var: Option<&str>) -> Option<Fast> {
        if let Some(v) = lit(e) {
            return Some(Fast::Lit(v));
        }
        match &e.expr {
            Ast::Ident(name) if Some(name.as_str()) == var => Some(Fast::Elem),
            Ast::Comprehension(c) => exists_or_all(c),
            Ast::Select(s) if s.test => {
                let segs = path(&s.operand)?;
                match segs.as_slice() {
                    ["request", "headers"] => Some(Fast::HasHeader(s.field.clone())),
                    ["jwt", "claims"] => Some(Fast::HasClaim(s.field.clone())),
                    // has(request.useragent), has(connection.mtls), ...: present iff readable
                    [root] => match attribute(&[root, s.field.as_str()])? {
                        a @ (Fast::Request(_) | Fast::Host(_) | Fast::JwtProvider) => {
                            Some(Fast::Has(Box::new(a)))
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            Ast::Select(_) => attribute(&path(e)?),
            Ast::Call(c) => {
                let arg = |i: usize| c.args.get(i);
                let bx = |x: Option<&IdedExpr>| compile_in(x?, var).map(Box::new);
                match (c.func_name.as_str(), c.target.as_deref(), c.args.len()) {
                    ("_[_]", None, 2) => {
                        let (segs, key) = index_of(e)?;
                        match segs.as_slice() {
                            ["request", "headers"] => Some(Fast::Header(key)),
                            ["jwt", "claims"] => Some(Fast::Claim(key)),
                            _ => None,
                        }
                    }
                    ("_==_", None, 2) => Some(Fast::Eq(bx(arg(0))?, bx(arg(1))?)),
                    ("_!=_", None, 2) => Some(Fast::Ne(bx(arg(0))?, bx(arg(1))?)),
                    ("_&&_", None, 2) => Some(Fast::And(bx(arg(0))?, bx(arg(1))?)),
                    ("_||_", None, 2) => Some(Fast::Or(bx(arg(0))?, bx(arg(1))?)),
                    ("!_", None, 1) => Some(Fast::Not(bx(arg(0))?)),
                    ("startsWith", Some(t), 1) => Some(Fast::StartsWith(
                        compile_in(t, var).map(Box::new)?,
                        bx(arg(0))?,
                    )),
                    ("endsWith", Some(t), 1) => Some(Fast::EndsWith(
                        compile_in(t, var).map(Box::new)?,
                        bx(arg(0))?,
                    )),
                    ("containsIP", Some(t), 1) => {
                        let Ast::Call(ctor) = &t.expr else {
                            return None;
                        };
                        if ctor.func_name != "cidr" || ctor.target.is_some() {
                            return None;
                        }
                        let net =
                            super::network::parse_cidr(&string_lit(ctor.args.first()?)?).ok()?;
                        let a = arg(0)?;
                        let addr = match &a.expr {
                            Ast::Call(ip) if ip.func_name == "ip" && ip.target.is_none() => {
                                compile_in(ip.args.first()?, var)?
                            }
                            _ => compile_in(a, var)?,
                        };
                        Some(Fast::CidrContains(net, Box::new(addr)))
                    }
                    ("isLoopback", Some(t), 0) => match &t.expr {
                        Ast::Call(ip)
                            if ip.func_name == "ip"
                                && ip.target.is_none()
                                && ip.args.len() == 1 =>
                        {
                            Some(Fast::IsLoopback(Box::new(compile_in(
                                ip.args.first()?,
                                var,
                            )?)))
                        }
                        _ => None,
                    },
                    ("contains", Some(t), 1) => Some(Fast::Contains(
                        compile_in(t, var).map(Box::new)?,
                        bx(arg(0))?,
                    )),
                    (super::literal_regex::FUNCTION, None, 2) => {
                        let regex = super::literal_regex::get(&string_lit(arg(1)?)?)?;
                        Some(Fast::Matches(bx(arg(0))?, regex))
                    }
                    ("@in", None, 2) => {
                        let (needle, hay) = (arg(0)?, arg(1)?);
                        match &hay.expr {
                            Ast::List(l) if l.optional_indices.is_empty() => {
                                let items: Option<Vec<_>> = l.elements.iter().map(lit).collect();
                                let items = items?;
                                // one kind of literal only, so equality is plain equality
                                let same = items.windows(2).all(|w| {
                                    matches!(w, [a, b] if std::mem::discriminant(a) == std::mem::discriminant(b))
                                });
                                same.then_some(())?;
                                Some(Fast::InList(Box::new(compile_in(needle, var)?), items))
                            }
                            Ast::Call(split)
                                if split.func_name == "split" && split.args.len() == 1 =>
                            {
                                let target = path(split.target.as_deref()?)?;
                                let sep = string_lit(split.args.first()?)?;
                                match target.as_slice() {
                                    ["jwt", "claims", name] => Some(Fast::InClaimSplit(
                                        Box::new(compile_in(needle, var)?),
                                        (*name).to_owned(),
                                        sep,
                                    )),
                                    _ => None,
                                }
                            }
                            _ => {
                                let segs = path(hay)?;
                                match segs.as_slice() {
                                    ["request", "headers"] => {
                                        Some(Fast::HasHeader(string_lit(needle)?))
                                    }
                                    ["jwt", "claims", name] => Some(Fast::InClaimList(
                                        Box::new(compile_in(needle, var)?),
                                        (*name).to_owned(),
                                    )),
                                    _ => None,
                                }
                            }
                        }
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// What a [`Fast::Quantifier`] iterates over.
    #[derive(Debug)]
    pub enum QuantifierRange {
        /// A list claim, `jwt.claims.<name>`.
        Claim(String),
        /// A list literal of scalars.
        Literals(Vec<FVal<'static>>),
    }

    /// `jwt.claims.<name>.exists(x, p)` / `.all(x, p)` (or over a list literal) as the `cel`
    /// crate expands them, with `p` on the fast path in terms of `x` alone.
    fn exists_or_all(c: &cel::common::ast::ComprehensionExpr) -> Option<Fast> {
        let accu = c.accu_var.as_str();
        let is_accu = |e: &IdedExpr| matches!(&e.expr, Ast::Ident(n) if n == accu);
        if c.iter_var2.is_some() || !is_accu(&c.result) || Attribute::is_root(&c.iter_var) {
            return None;
        }
        let all = match &c.accu_init.expr {
            Ast::Literal(L::Boolean(b)) => *b.inner(),
            _ => return None,
        };
        let Ast::Call(step) = &c.loop_step.expr else {
            return None;
        };
        let op = if all { "_&&_" } else { "_||_" };
        let (Some(first), Some(pred), 2) = (step.args.first(), step.args.get(1), step.args.len())
        else {
            return None;
        };
        if step.func_name != op || step.target.is_some() || !is_accu(first) {
            return None;
        }
        let over = match &c.iter_range.expr {
            Ast::List(l) if l.optional_indices.is_empty() => {
                QuantifierRange::Literals(l.elements.iter().map(lit).collect::<Option<_>>()?)
            }
            _ => match path(&c.iter_range)?.as_slice() {
                ["jwt", "claims", name] => QuantifierRange::Claim((*name).to_owned()),
                _ => return None,
            },
        };
        let pred = compile_in(pred, Some(c.iter_var.as_str()))?;
        Some(Fast::Quantifier {
            over,
            pred: Box::new(pred),
            all,
        })
    }

    fn claim<'x>(act: &'x Activation<'_>, name: &str) -> Option<&'x cel::Value> {
        let cel::Value::Map(map) = &act.jwt?.claims else {
            return None;
        };
        map.get(&cel::objects::KeyRef::String(name))
    }

    fn scalar(v: &cel::Value) -> Option<FVal<'_>> {
        match v {
            cel::Value::String(s) => Some(FVal::Str(Cow::Borrowed(s.as_str()))),
            cel::Value::Int(i) => Some(FVal::Int(*i)),
            cel::Value::Bool(b) => Some(FVal::Bool(*b)),
            _ => None,
        }
    }

    fn str_of<'x>(v: &'x FVal<'_>) -> Option<&'x str> {
        match v {
            FVal::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `exists` (`all == false`) or `all` of `pred` over `items` (`None`: an element the fast
    /// path can't read). CEL's quantifiers absorb errors when the answer is decided anyway: any
    /// true decides `exists`, any false decides `all`; an element the fast path can't judge
    /// leaves the answer to the interpreter otherwise.
    fn quantify<'x>(
        act: &'x Activation<'_>,
        pred: &'x Fast,
        all: bool,
        items: impl Iterator<Item = Option<FVal<'x>>>,
    ) -> Option<FVal<'x>> {
        let mut unsure = false;
        for item in items {
            let verdict = item.and_then(|v| match pred.eval_with(act, Some(&v))? {
                FVal::Bool(x) => Some(x),
                _ => None,
            });
            match verdict {
                Some(x) if x != all => return Some(FVal::Bool(x)),
                Some(_) => {}
                None => unsure = true,
            }
        }
        (!unsure).then_some(FVal::Bool(all))
    }

    fn borrowed<'x>(v: &'x FVal<'_>) -> FVal<'x> {
        match v {
            FVal::Str(s) => FVal::Str(Cow::Borrowed(s.as_ref())),
            FVal::Int(i) => FVal::Int(*i),
            FVal::Bool(x) => FVal::Bool(*x),
        }
    }

    fn same_kind(a: &FVal<'_>, b: &FVal<'_>) -> bool {
        std::mem::discriminant(a) == std::mem::discriminant(b)
    }

    impl Fast {
        /// The value, or `None` when the interpreter must decide.
        pub fn eval<'x>(&'x self, act: &'x Activation<'_>) -> Option<FVal<'x>> {
            self.eval_with(act, None)
        }

        /// `elem`: the element of the enclosing quantifier, for [`Fast::Elem`].
        fn eval_with<'x>(
            &'x self,
            act: &'x Activation<'_>,
            elem: Option<&FVal<'x>>,
        ) -> Option<FVal<'x>> {
            let b = |x: bool| Some(FVal::Bool(x));
            match self {
                Fast::Lit(v) => Some(borrowed(v)),
                Fast::Request(attribute) => Some(FVal::Str(Cow::Borrowed(
                    act.request.string_attribute(*attribute)?,
                ))),
                Fast::Header(name) => Some(FVal::Str(act.request.headers.joined(name)?)),
                Fast::HasHeader(name) => b(act.request.headers.values(name).next().is_some()),
                Fast::Host(a) => match act.request.attribute(*a)? {
                    AttributeValue::String(s) => Some(FVal::Str(Cow::Borrowed(s))),
                    AttributeValue::Int(i) => Some(FVal::Int(*i)),
                    AttributeValue::Bool(x) => Some(FVal::Bool(*x)),
                    AttributeValue::Timestamp(_) => None,
                },
                Fast::JwtProvider => Some(FVal::Str(Cow::Borrowed(
                    act.jwt.map_or("", |j| j.provider.as_str()),
                ))),
                Fast::Claim(name) => scalar(claim(act, name)?),
                Fast::HasClaim(name) => match act.jwt.map(|j| &j.claims) {
                    None => b(false),
                    Some(cel::Value::Map(map)) => {
                        b(map.get(&cel::objects::KeyRef::String(name)).is_some())
                    }
                    Some(_) => None,
                },
                Fast::InClaimList(needle, name) => {
                    let needle = needle.eval_with(act, elem)?;
                    let cel::Value::List(items) = claim(act, name)? else {
                        return None;
                    };
                    let mut found = false;
                    for item in items.iter() {
                        let item = scalar(item)?;
                        if !same_kind(&item, &needle) {
                            return None;
                        }
                        found |= item == needle;
                    }
                    b(found)
                }
                Fast::InClaimSplit(needle, name, sep) => {
                    let needle = needle.eval_with(act, elem)?;
                    let needle = str_of(&needle)?;
                    let cel::Value::String(text) = claim(act, name)? else {
                        return None;
                    };
                    b(text.split(sep.as_str()).any(|part| part == needle))
                }
                Fast::InList(needle, items) => {
                    let needle = needle.eval_with(act, elem)?;
                    let first = items.first();
                    if first.is_some_and(|f| !same_kind(f, &needle)) {
                        return None;
                    }
                    b(items.contains(&needle))
                }
                Fast::Eq(x, y) | Fast::Ne(x, y) => {
                    let (x, y) = (x.eval_with(act, elem)?, y.eval_with(act, elem)?);
                    if !same_kind(&x, &y) {
                        return None;
                    }
                    b((x == y) == matches!(self, Fast::Eq(..)))
                }
                Fast::And(x, y) => match x.eval_with(act, elem)? {
                    FVal::Bool(false) => b(false),
                    FVal::Bool(true) => match y.eval_with(act, elem)? {
                        FVal::Bool(v) => b(v),
                        _ => None,
                    },
                    _ => None,
                },
                Fast::Or(x, y) => match x.eval_with(act, elem)? {
                    FVal::Bool(true) => b(true),
                    FVal::Bool(false) => match y.eval_with(act, elem)? {
                        FVal::Bool(v) => b(v),
                        _ => None,
                    },
                    _ => None,
                },
                Fast::Not(x) => match x.eval_with(act, elem)? {
                    FVal::Bool(v) => b(!v),
                    _ => None,
                },
                Fast::Has(attribute) => b(attribute.eval_with(act, elem).is_some()),
                Fast::CidrContains(net, addr) => {
                    let addr = addr.eval_with(act, elem)?;
                    let ip = super::network::parse_ip(str_of(&addr)?).ok()?;
                    b(net.contains_ip(ip))
                }
                Fast::IsLoopback(addr) => {
                    let addr = addr.eval_with(act, elem)?;
                    let ip = super::network::parse_ip(str_of(&addr)?).ok()?;
                    b(ip.is_loopback())
                }
                Fast::Elem => elem.cloned(),
                Fast::Quantifier { over, pred, all } => match over {
                    QuantifierRange::Claim(name) => {
                        let cel::Value::List(items) = claim(act, name)? else {
                            return None;
                        };
                        quantify(act, pred, *all, items.iter().map(scalar))
                    }
                    QuantifierRange::Literals(items) => {
                        quantify(act, pred, *all, items.iter().map(|v| Some(borrowed(v))))
                    }
                },
                Fast::Matches(subject, regex) => {
                    let subject = subject.eval_with(act, elem)?;
                    b(regex.is_match(str_of(&subject)?))
                }
                Fast::StartsWith(x, y) | Fast::EndsWith(x, y) | Fast::Contains(x, y) => {
                    let (x, y) = (x.eval_with(act, elem)?, y.eval_with(act, elem)?);
                    let (x, y) = (str_of(&x)?, str_of(&y)?);
                    b(match self {
                        Fast::StartsWith(..) => x.starts_with(y),
                        Fast::EndsWith(..) => x.ends_with(y),
                        _ => x.contains(y),
                    })
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The network extension: ip() and cidr(), after cel-go's `ext.Network()`.
// ---------------------------------------------------------------------------------------

/// The network extension. `ip(s)` and `cidr(s)` build `net.IP` / `net.CIDR` values.
///
/// Unlike cel-go, `ip()` also accepts `"ip:port"` and `"[v6]:port"` (the port is dropped), so
/// Envoy's `source.address` can be passed as is.
pub mod network {
    use super::*;

    pub static IP_TYPE: Type = Type::new_unspecified_type("net.IP");
    pub static CIDR_TYPE: Type = Type::new_unspecified_type("net.CIDR");

    /// An IP address (IPv4-mapped IPv6 addresses are stored as IPv4).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ip(pub IpAddr);

    /// A network: an address and a prefix length (the address is kept as written).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cidr {
        pub ip: IpAddr,
        pub prefix: u8,
    }

    impl Val for Ip {
        fn get_type(&self) -> &Type {
            &IP_TYPE
        }
        fn cel_type() -> &'static Type {
            &IP_TYPE
        }
        fn equals(&self, other: &dyn Val) -> bool {
            other.downcast_ref::<Ip>().is_some_and(|o| o == self)
        }
        fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
            Box::new(*self)
        }
        fn as_any(&self) -> Option<&dyn Any> {
            Some(self)
        }
    }
    impl StaticVal for Ip {}

    impl Val for Cidr {
        fn get_type(&self) -> &Type {
            &CIDR_TYPE
        }
        fn cel_type() -> &'static Type {
            &CIDR_TYPE
        }
        fn equals(&self, other: &dyn Val) -> bool {
            other.downcast_ref::<Cidr>().is_some_and(|o| o == self)
        }
        fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
            Box::new(*self)
        }
        fn as_any(&self) -> Option<&dyn Any> {
            Some(self)
        }
    }
    impl StaticVal for Cidr {}

    fn canonical(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        }
    }

    /// Parses an address as cel-go does (no zones, no dotted IPv4-mapped IPv6), plus
    /// `ip:port` / `[ip]:port`.
    pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
        if s.contains('%') {
            return Err("IP Address with zone value is not allowed".into());
        }
        let ip = match s.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => match s.parse::<SocketAddr>() {
                Ok(sa) => sa.ip(),
                Err(_) => {
                    return Err(format!(
                        "IP Address '{s}' parse error during conversion from string"
                    ))
                }
            },
        };
        if ip.is_ipv6() && s.contains('.') {
            return Err("IPv4-mapped IPv6 address is not allowed".into());
        }
        Ok(canonical(ip))
    }

    pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
        if s.contains('%') {
            return Err("CIDR with zone value is not allowed".into());
        }
        let err = || format!("network address parse error during conversion from string: '{s}'");
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let ip: IpAddr = addr.parse().map_err(|_| err())?;
        if ip.is_ipv6() && addr.contains('.') {
            return Err("IPv4-mapped IPv6 address is not allowed".into());
        }
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { ip, prefix })
    }

    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(width: u8, prefix: u8) -> u128 {
        let host_bits = u32::from(width.saturating_sub(prefix));
        let all: u128 = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        if host_bits >= 128 {
            0
        } else {
            all & !((1u128 << host_bits) - 1)
        }
    }

    impl Cidr {
        pub fn contains_ip(&self, ip: IpAddr) -> bool {
            let (net, w1) = bits(self.ip);
            let (addr, w2) = bits(canonical(ip));
            w1 == w2 && (net & mask(w1, self.prefix)) == (addr & mask(w1, self.prefix))
        }
        pub fn contains_cidr(&self, other: &Cidr) -> bool {
            other.prefix >= self.prefix
                && bits(self.ip).1 == bits(other.ip).1
                && self.contains_ip(other.ip)
        }
        pub fn masked(&self) -> Cidr {
            let (net, w) = bits(self.ip);
            let m = net & mask(w, self.prefix);
            let ip = if w == 32 {
                IpAddr::V4(Ipv4Addr::from(u32::try_from(m).unwrap_or(0)))
            } else {
                IpAddr::V6(Ipv6Addr::from(m))
            };
            Cidr {
                ip,
                prefix: self.prefix,
            }
        }
    }

    fn err(function: &str, message: String) -> ExecutionError {
        ExecutionError::function_error(function, message)
    }

    fn str_arg<'x>(args: &'x [CowVal<'_, '_>], i: usize) -> Result<&'x str, ExecutionError> {
        args.get(i)
            .and_then(|a| a.downcast_ref::<CelString>())
            .map(|s| s.inner())
            .ok_or_else(|| ExecutionError::function_error("network", "expected a string"))
    }

    fn ip_arg(args: &[CowVal<'_, '_>], i: usize) -> Result<Ip, ExecutionError> {
        args.get(i)
            .and_then(|a| a.downcast_ref::<Ip>())
            .copied()
            .ok_or_else(|| ExecutionError::function_error("network", "expected a net.IP"))
    }

    fn cidr_arg(args: &[CowVal<'_, '_>], i: usize) -> Result<Cidr, ExecutionError> {
        args.get(i)
            .and_then(|a| a.downcast_ref::<Cidr>())
            .copied()
            .ok_or_else(|| ExecutionError::function_error("network", "expected a net.CIDR"))
    }

    type R<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

    fn ok<'b, 'v, T: Val + 'v>(v: T) -> R<'b, 'v> {
        Ok(CowVal::owned(v))
    }

    fn ip_from_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        let s = str_arg(&args, 0)?;
        ok(Ip(parse_ip(s).map_err(|m| err("ip", m))?))
    }
    fn cidr_from_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        let s = str_arg(&args, 0)?;
        ok(parse_cidr(s).map_err(|m| err("cidr", m))?)
    }
    fn is_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(CelBool::from(parse_ip(str_arg(&args, 0)?).is_ok()))
    }
    fn is_cidr<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(CelBool::from(parse_cidr(str_arg(&args, 0)?).is_ok()))
    }
    fn is_canonical<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        let s = str_arg(&args, 0)?;
        let ip = s
            .parse::<IpAddr>()
            .map_err(|_| err("ip.isCanonical", format!("IP Address '{s}' parse error")))?;
        ok(CelBool::from(ip.to_string() == s))
    }
    fn ip_to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(CelString::from(ip_arg(&args, 0)?.0.to_string()))
    }
    fn cidr_to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        let c = cidr_arg(&args, 0)?;
        ok(CelString::from(format!("{}/{}", c.ip, c.prefix)))
    }
    fn family<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(CelInt::from(if ip_arg(&args, 0)?.0.is_ipv4() {
            4
        } else {
            6
        }))
    }
    fn is_unspecified<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(CelBool::from(ip_arg(&args, 0)?.0.is_unspecified()))
    }
    fn is_loopback<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(CelBool::from(ip_arg(&args, 0)?.0.is_loopback()))
    }
    fn is_global_unicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        // Go's IP.IsGlobalUnicast: not unspecified, loopback, multicast, link-local or broadcast.
        let ip = ip_arg(&args, 0)?.0;
        let g = match ip {
            IpAddr::V4(v4) => {
                !(v4.is_unspecified()
                    || v4.is_loopback()
                    || v4.is_multicast()
                    || v4.is_link_local()
                    || v4.is_broadcast())
            }
            IpAddr::V6(v6) => {
                let seg0 = v6.segments()[0];
                !(v6.is_unspecified()
                    || v6.is_loopback()
                    || v6.is_multicast()
                    || (seg0 & 0xffc0) == 0xfe80)
            }
        };
        ok(CelBool::from(g))
    }
    fn is_link_local_multicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        let r = match ip_arg(&args, 0)?.0 {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                o[0] == 224 && o[1] == 0 && o[2] == 0
            }
            IpAddr::V6(v6) => (v6.segments()[0] & 0xff0f) == 0xff02,
        };
        ok(CelBool::from(r))
    }
    fn is_link_local_unicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        let r = match ip_arg(&args, 0)?.0 {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        ok(CelBool::from(r))
    }
    fn contains_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        let c = cidr_arg(&args, 0)?;
        let ip = match args.get(1).and_then(|a| a.downcast_ref::<Ip>()) {
            Some(ip) => ip.0,
            None => parse_ip(str_arg(&args, 1)?).map_err(|m| err("containsIP", m))?,
        };
        ok(CelBool::from(c.contains_ip(ip)))
    }
    fn contains_cidr<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        let c = cidr_arg(&args, 0)?;
        let other = match args.get(1).and_then(|a| a.downcast_ref::<Cidr>()) {
            Some(o) => *o,
            None => parse_cidr(str_arg(&args, 1)?).map_err(|m| err("containsCIDR", m))?,
        };
        ok(CelBool::from(c.contains_cidr(&other)))
    }
    fn cidr_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(Ip(canonical(cidr_arg(&args, 0)?.ip)))
    }
    fn cidr_masked<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(cidr_arg(&args, 0)?.masked())
    }
    fn prefix_length<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
        ok(CelInt::from(i64::from(cidr_arg(&args, 0)?.prefix)))
    }

    /// Registers the network extension on `env`.
    pub fn extension(env: &mut Env) -> Result<(), cel::DeclarationError> {
        env.add_type(IP_TYPE.to_owned())?;
        env.add_type(CIDR_TYPE.to_owned())?;
        let ip = || IP_TYPE.to_owned();
        let cidr = || CIDR_TYPE.to_owned();
        env.add_overload("ip", "string_to_ip", vec![STRING_TYPE], ip_from_string)?;
        env.add_overload(
            "cidr",
            "string_to_cidr",
            vec![STRING_TYPE],
            cidr_from_string,
        )?;
        env.add_overload("isIP", "is_ip_string", vec![STRING_TYPE], is_ip)?;
        env.add_overload("isCIDR", "is_cidr_string", vec![STRING_TYPE], is_cidr)?;
        env.add_overload(
            "ip.isCanonical",
            "ip_is_canonical_string",
            vec![STRING_TYPE],
            is_canonical,
        )?;
        env.add_overload("string", "ip_to_string", vec![ip()], ip_to_string)?;
        env.add_overload("string", "cidr_to_string", vec![cidr()], cidr_to_string)?;
        env.add_member_overload("family", "ip_family", ip(), vec![], family)?;
        env.add_member_overload(
            "isUnspecified",
            "ip_is_unspecified",
            ip(),
            vec![],
            is_unspecified,
        )?;
        env.add_member_overload("isLoopback", "ip_is_loopback", ip(), vec![], is_loopback)?;
        env.add_member_overload(
            "isGlobalUnicast",
            "ip_is_global_unicast",
            ip(),
            vec![],
            is_global_unicast,
        )?;
        env.add_member_overload(
            "isLinkLocalMulticast",
            "ip_is_link_local_multicast",
            ip(),
            vec![],
            is_link_local_multicast,
        )?;
        env.add_member_overload(
            "isLinkLocalUnicast",
            "ip_is_link_local_unicast",
            ip(),
            vec![],
            is_link_local_unicast,
        )?;
        env.add_member_overload(
            "containsIP",
            "cidr_contains_ip_ip",
            cidr(),
            vec![ip()],
            contains_ip,
        )?;
        env.add_member_overload(
            "containsIP",
            "cidr_contains_ip_string",
            cidr(),
            vec![STRING_TYPE],
            contains_ip,
        )?;
        env.add_member_overload(
            "containsCIDR",
            "cidr_contains_cidr_cidr",
            cidr(),
            vec![cidr()],
            contains_cidr,
        )?;
        env.add_member_overload(
            "containsCIDR",
            "cidr_contains_cidr_string",
            cidr(),
            vec![STRING_TYPE],
            contains_cidr,
        )?;
        env.add_member_overload("ip", "cidr_ip", cidr(), vec![], cidr_ip)?;
        env.add_member_overload("masked", "cidr_masked", cidr(), vec![], cidr_masked)?;
        env.add_member_overload(
            "prefixLength",
            "cidr_prefix_length",
            cidr(),
            vec![],
            prefix_length,
        )?;
        let _ = (BOOL_TYPE, INT_TYPE);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{AttributeValue, HostAttribute, RequestView};
    use serde_json::json;
    use std::time::Duration;

    fn compile(text: &str) -> Result<Expr, ExprError> {
        Expr::compile(&ExprSource::Inline(text.to_owned()))
    }

    fn request() -> RequestView {
        RequestView::new(
            "GET",
            "/admin/users?x=1&name=a%20b&x=2&plus=c+d",
            &[
                ("x-tenant", "acme"),
                ("user-agent", "curl/8"),
                ("accept", "text/html"),
                ("accept", "application/json"),
                ("x-request-id", "rid-1"),
            ],
        )
        .with_attribute(
            HostAttribute::SourceAddress,
            AttributeValue::String("10.1.2.3:5555".into()),
        )
        .with_attribute(HostAttribute::SourcePort, AttributeValue::Int(5555))
        .with_attribute(HostAttribute::ConnectionMtls, AttributeValue::Bool(true))
        .with_attribute(
            HostAttribute::RequestTime,
            AttributeValue::Timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)),
        )
    }

    fn jwt() -> JwtAttributes {
        JwtAttributes::from_json(
            "local",
            &json!({"alg": "RS256", "kid": "k1"}),
            &json!({"sub": "alice", "tenant": "acme", "groups": ["admin", "dev"],
                    "scope": "read write", "n": 3, "nested": {"a": {"b": true}},
                    "mixed": [1, "a", {"k": 2}, 2.5],
                    "example.com/roles": ["auditor"]}),
        )
    }

    fn eval(text: &str) -> Result<cel::Value, EvalError> {
        let req = request();
        let token = jwt();
        let act = Activation::new(&req).with_jwt(Some(&token));
        compile(text)
            .map_err(|e| EvalError(e.to_string()))?
            .eval(&act)
    }

    fn truth(text: &str) -> bool {
        let req = request();
        let token = jwt();
        let act = Activation::new(&req).with_jwt(Some(&token));
        match compile(text) {
            Ok(e) => match e.eval_bool(&act) {
                Ok(b) => b,
                Err(e) => panic!("{text}: {e}"),
            },
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn request_attributes() {
        assert!(truth(
            "request.path == '/admin/users?x=1&name=a%20b&x=2&plus=c+d'"
        ));
        assert!(truth("request.url_path == '/admin/users'"));
        assert!(truth("request.query == 'x=1&name=a%20b&x=2&plus=c+d'"));
        assert!(truth("request.query_params.x == '1'"));
        assert!(truth("request.query_params['name'] == 'a b'"));
        assert!(truth("request.query_params.plus == 'c d'"));
        assert!(truth(
            "request.method == 'GET' && request.host == 'localhost'"
        ));
        assert!(truth("request.scheme == 'http'"));
        assert!(truth("request.headers['x-tenant'] == 'acme'"));
        assert!(truth(
            "request.headers.accept == 'text/html,application/json'"
        ));
        assert!(truth(
            "request.id == 'rid-1' && request.useragent == 'curl/8'"
        ));
        assert!(truth("!has(request.referer)"));
        assert!(truth(
            "has(request.headers.accept) && !has(request.headers.cookie)"
        ));
        assert!(eval("request.referer").is_err());
        assert!(truth("request.time > timestamp('2023-01-01T00:00:00Z')"));
        assert!(truth("request.time.getMilliseconds() == 250"));
        assert!(truth("'x-tenant' in request.headers"));
        assert!(truth("request.headers.exists(k, k == 'accept')"));
        assert!(truth("request.method in ['GET', 'HEAD']"));
    }

    #[test]
    fn host_attributes_and_absence() {
        assert!(truth(
            "source.address == '10.1.2.3:5555' && source.port == 5555"
        ));
        assert!(truth("connection.mtls"));
        assert!(truth("!has(destination.address) && has(source.address)"));
        assert!(eval("destination.port == 1").is_err());
        assert!(truth("size(source) == 2"));
    }

    #[test]
    fn jwt_attributes() {
        assert!(truth("jwt.provider == 'local'"));
        assert!(truth("jwt.claims.sub == 'alice'"));
        assert!(truth("'admin' in jwt.claims.groups"));
        assert!(truth("'write' in jwt.claims.scope.split(' ')"));
        assert!(truth("jwt.claims.n == 3"));
        assert!(truth("jwt.claims.nested.a.b"));
        assert!(truth("has(jwt.claims.tenant) && !has(jwt.claims.missing)"));
        assert!(truth("jwt.header.kid == 'k1'"));
        assert!(truth("request.headers['x-tenant'] == jwt.claims.tenant"));
        assert!(eval("jwt.claims.missing == 'x'").is_err());

        let req = request();
        let act = Activation::new(&req);
        let e = compile("jwt.provider == '' && jwt.claims == {} && size(jwt.header) == 0").unwrap();
        assert_eq!(e.eval_bool(&act), Ok(true));
        let e = compile("jwt.claims.sub == 'x'").unwrap();
        assert!(e.eval_bool(&act).is_err());
    }

    #[test]
    fn extracts_host_attributes_and_jwt_use() {
        let e = compile("source.address == '1' && connection.mtls && request.path == '/'").unwrap();
        assert_eq!(
            e.host_attributes(),
            vec![HostAttribute::SourceAddress, HostAttribute::ConnectionMtls]
        );
        assert!(!e.uses_jwt());
        let e = compile("has(destination.port)").unwrap();
        assert_eq!(e.host_attributes(), vec![HostAttribute::DestinationPort]);
        let e = compile("size(source) > 0 || request.time > timestamp(0)").unwrap();
        assert_eq!(
            e.host_attributes(),
            vec![
                HostAttribute::SourceAddress,
                HostAttribute::SourcePort,
                HostAttribute::RequestTime
            ]
        );
        let e = compile("[1].exists(source, source == 1)").unwrap();
        assert!(e.host_attributes().is_empty());
        assert!(compile("jwt.claims.sub == 'a'").unwrap().uses_jwt());
        assert!(
            compile("connection['mtls']").unwrap().host_attributes()
                == vec![HostAttribute::ConnectionMtls]
        );
    }

    #[test]
    fn compile_errors_have_locations() {
        let err = Expr::compile(&ExprSource::File {
            file: "admin.cel".into(),
            source: "// comment\nrequest.path ==\n  ".into(),
        })
        .unwrap_err();
        assert_eq!(err.file.as_deref(), Some("admin.cel"));
        assert_eq!(err.line, 3, "{err}");

        let err = compile("request.path == 'a' &&\n  reqest.method == 'GET'").unwrap_err();
        assert_eq!((err.line, err.column), (2, 3), "{err}");
        assert!(err.message.contains("reqest"), "{err}");

        let err = compile("request.pth == '/'").unwrap_err();
        assert_eq!((err.line, err.column), (1, 9), "{err}");
        assert!(err.message.contains("request.pth"), "{err}");

        let err = compile("// x\n  nosuch(1)").unwrap_err();
        assert_eq!((err.line, err.column), (2, 3), "{err}");
        assert!(err.message.contains("nosuch"), "{err}");
        let err = compile("'a'.size() > 1 &&\n request.path.frobnicate()").unwrap_err();
        assert_eq!((err.line, err.column), (2, 15), "{err}");

        let err = compile("request.path.frobnicate()").unwrap_err();
        assert!(err.message.contains("frobnicate"), "{err}");

        let err = compile("request.path + 1 == 'a'").unwrap_err();
        assert!(err.message.contains("type error"), "{err}");
        assert!(compile("size(1) == 1").is_err());
        assert!(compile("1 + 1.0 == 2").is_err());
        assert!(compile("").is_err());
        assert!(compile("// only a comment").is_err());
        assert!(compile("Foo{a: 1}").is_err());

        let err = compile("request.path == (").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.column >= 16, "{err}");
    }

    #[test]
    fn comments_and_multiline() {
        let text = "// admins only\nrequest.url_path.startsWith('/admin') // path\n  && 'admin' in jwt.claims.groups // group\n";
        assert!(truth(text));
        assert!(truth("'//not a comment' == '//not' + ' a comment'"));
    }

    #[test]
    fn macros_bind_variables() {
        assert!(truth("jwt.claims.groups.all(g, g.size() > 2)"));
        assert!(truth(
            "jwt.claims.groups.map(g, g.upperAscii()) == ['ADMIN', 'DEV']"
        ));
        assert!(truth(
            "jwt.claims.groups.filter(g, g.startsWith('a')).size() == 1"
        ));
        assert!(truth("jwt.claims.groups.exists_one(g, g == 'dev')"));
        assert!(compile("jwt.claims.groups.all(g, h)").is_err());
    }

    #[test]
    fn owned_and_borrowed_json_conversions_agree() {
        let doc = json!({"s": "x", "n": 3, "u": u64::MAX, "f": 2.5, "b": true, "z": null,
                         "l": [1, "a", [2], {"k": "v"}], "m": {"a": {"b": [true]}}});
        assert_eq!(json_into_cel(doc.clone()), json_to_cel(&doc));
    }

    #[test]
    fn literal_regex_agrees_with_the_crates_matches() {
        // The crate's own `matches` (compiled per call) is what `eval_unchecked` runs.
        let subjects = [
            "",
            "GET",
            "/api/v1/items",
            "héllo wörld",
            "a\nb",
            "ΑΒΓ",
            "x-y_z",
        ];
        let patterns = [
            ".+",
            "^/api/v[0-9]+/",
            "^G.T$",
            "(?i)hello",
            "\\p{Greek}+",
            "^$",
            "a.b",
            "(?s)a.b",
            "[[:alpha:]]",
            "\\w+-\\w+",
            "ö",
        ];
        for subject in subjects {
            for pattern in patterns {
                let text = format!("s.matches({pattern:?}) == matches(s, {pattern:?})");
                let reference = eval_unchecked(
                    &format!("s.matches({pattern:?})"),
                    &[("s", cel::Value::String(Arc::new(subject.to_owned())))],
                );
                let ours = compile(&format!("request.method.matches({pattern:?})")).unwrap();
                let view = RequestView::new(subject, "/", &[]);
                let act = Activation::new(&view);
                let got = ours.eval(&act).map_err(|e| e.0);
                assert_eq!(got.ok(), reference.ok(), "{text} on {subject:?}");
                assert_eq!(
                    ours.eval_bool(&act),
                    ours.eval_bool_interpreted(&act),
                    "{text}"
                );
            }
        }
        // Inside a comprehension and as a global call, too.
        let req = request();
        let token = jwt();
        let act = Activation::new(&req).with_jwt(Some(&token));
        let e = compile("jwt.claims.groups.exists(g, g.matches('^ad'))").unwrap();
        assert_eq!(e.eval_bool(&act), Ok(true));
        let e = compile("jwt.claims.groups.all(g, matches(g, '^ad'))").unwrap();
        assert_eq!(e.eval_bool(&act), Ok(false));
        // A computed pattern still works (the interpreter's matches).
        let e = compile("request.method.matches(request.method)").unwrap();
        assert_eq!(e.eval_bool(&act), Ok(true));
        let e = compile("matches(request.method, request.method + '$')").unwrap();
        assert_eq!(e.eval_bool(&act), Ok(true));
    }

    #[test]
    fn an_invalid_literal_regex_is_a_configuration_error_with_its_position() {
        let err = compile("request.path.startsWith('/a') &&\n  request.path.matches('[unclosed')")
            .unwrap_err();
        assert_eq!((err.line, err.column), (2, 24), "{err:?}");
        assert!(err.message.contains("invalid regex"), "{err:?}");
        let err = compile("jwt.claims.groups.exists(g, g.matches('a{99999999}'))").unwrap_err();
        assert!(err.message.contains("invalid regex"), "{err:?}");
    }

    #[test]
    fn fast_path_agrees_with_the_interpreter() {
        let exprs = [
            "request.method == 'GET'",
            "request.method != 'GET'",
            "request.method == 1",
            "request.url_path.startsWith('/admin')",
            "request.path.endsWith('d') || request.query.contains('name')",
            "request.host == 'localhost' && request.scheme == 'http'",
            "request.headers['x-tenant'] == 'acme'",
            "request.headers.accept == 'text/html,application/json'",
            "request.headers['x-missing'] == 'a'",
            "request.headers['X-Tenant'] == 'acme'",
            "'x-tenant' in request.headers",
            "'x-missing' in request.headers",
            "has(request.headers.accept) && !has(request.headers.cookie)",
            "request.referer == 'x'",
            "request.id == 'rid-1' && request.useragent.startsWith('curl/')",
            "request.method in ['GET', 'HEAD']",
            "request.method in []",
            "request.method in [1, 2]",
            "source.address == '10.1.2.3:5555' && source.port == 5555",
            "source.port == 5555u",
            "destination.port == 80",
            "connection.mtls",
            "!connection.mtls || false",
            "jwt.provider == 'local'",
            "jwt.provider != ''",
            "jwt.claims.sub == 'alice'",
            "jwt.claims['tenant'] == request.headers['x-tenant']",
            "jwt.claims.n == 3",
            "jwt.claims.n == 3.0",
            "jwt.claims.missing == 'x'",
            "false && jwt.claims.missing == 'x'",
            "jwt.claims.missing == 'x' && false",
            "true || jwt.claims.missing == 'x'",
            "jwt.claims.missing == 'x' || true",
            "has(jwt.claims.tenant) && !has(jwt.claims.missing)",
            "'admin' in jwt.claims.groups",
            "'root' in jwt.claims.groups",
            "1 in jwt.claims.groups",
            "'write' in jwt.claims.scope.split(' ')",
            "'delete' in jwt.claims.scope.split(' ')",
            "'x' in jwt.claims.n.split(' ')",
            "request.method",
            "jwt.claims.nested.a.b",
            "cidr('10.0.0.0/8').containsIP(ip(source.address))",
            "cidr('10.0.0.0/8').containsIP(source.address)",
            "cidr('192.168.0.0/16').containsIP(ip(source.address))",
            "cidr('10.0.0.0/8').containsIP(ip(request.method))",
            "ip(source.address).isLoopback() || ip('127.0.0.1').isLoopback()",
            "cidr('2001:db8::/32').containsIP(source.address)",
            "has(connection.mtls) && connection.mtls",
            "has(request.useragent) && request.useragent.startsWith('curl/')",
            "has(request.referer) || has(destination.port) || has(jwt.provider)",
            "has(request.path) && has(request.host) && has(source.port)",
            "request.path.matches('^/admin/')",
            "request.path.matches('^/api/')",
            "matches(request.method, '^G.T$')",
            "request.headers['x-missing'].matches('.+')",
            "jwt.claims.n.matches('3')",
            "jwt.claims.groups.exists(g, g.matches('.+'))",
            "'auditor' in jwt.claims.`example.com/roles`",
            "has(jwt.claims.`example.com/roles`)",
            "jwt.claims.groups.exists(i, g, i == 1 && g == 'dev')",
            "cel.block([jwt.claims.groups], 'dev' in cel.index(0))",
            "jwt.claims.groups.exists(g, g == 'dev')",
            "jwt.claims.groups.exists(g, g == 'root')",
            "jwt.claims.groups.all(g, g.startsWith('a'))",
            "jwt.claims.groups.all(g, g.size() > 0)",
            "jwt.claims.groups.exists(g, g == request.method || g == jwt.claims.tenant)",
            "jwt.claims.missing.exists(g, g == 'x')",
            "jwt.claims.groups.exists(request, request == 'dev')",
            "jwt.claims.nested.exists(k, k == 'a')",
            "jwt.claims.groups.exists(g, jwt.claims.groups.exists(h, h == g))",
            "jwt.claims.mixed.exists(x, x == 'a')",
            "jwt.claims.mixed.exists(x, x == 'zzz')",
            "jwt.claims.mixed.all(x, x != 'a')",
            "jwt.claims.mixed.all(x, x != 'zzz')",
            "['dev', 'ops'].exists(g, g == 'dev')",
            "['dev', 'ops'].all(g, g == 'dev')",
            "[1, 'a', true].exists(x, x == 'a')",
            "[].exists(x, x == 'a')",
            "[].all(x, x == 'a')",
            "[request.method].exists(x, x == 'GET')",
            "['GET', 'POST'].exists(m, m == request.method)",
        ];
        let req = request();
        let token = jwt();
        let bare = RequestView::new("POST", "/", &[]);
        let contexts = [
            Activation::new(&req).with_jwt(Some(&token)),
            Activation::new(&req),
            Activation::new(&bare),
        ];
        let mut fast_answers = 0;
        for text in exprs {
            let e = compile(text).unwrap();
            for act in &contexts {
                let interpreted = e.eval_bool_interpreted(act);
                let fast = e.fast.as_ref().and_then(|f| f.eval(act));
                if let Some(fast::FVal::Bool(b)) = fast {
                    fast_answers += 1;
                    assert_eq!(interpreted, Ok(b), "{text}");
                }
                assert_eq!(e.eval_bool(act), interpreted, "{text}");
            }
        }
        assert!(fast_answers > 60, "{fast_answers}");
        for text in [
            "request.method == 'GET'",
            "'x-tenant' in request.headers && request.headers['x-tenant'] != jwt.claims.tenant",
            "'write' in jwt.claims.scope.split(' ')",
            "request.method in ['GET', 'HEAD'] && request.url_path.startsWith('/api/')",
            "cidr('10.0.0.0/8').containsIP(ip(source.address)) || ip(source.address).isLoopback()",
            "jwt.claims.groups.exists(g, g.matches('.+'))",
            "jwt.claims.groups.all(g, g != 'banned' && !g.startsWith('tmp-'))",
            "request.method == 'GET' && ['dev'].exists(g, g == 'dev')",
        ] {
            assert!(compile(text).unwrap().fast.is_some(), "{text}");
        }
        // eval_string: the fast path renders like the interpreter
        for text in [
            "jwt.claims.sub",
            "jwt.claims.n",
            "request.headers['x-tenant']",
            "source.port",
        ] {
            let e = compile(text).unwrap();
            let act = Activation::new(&req).with_jwt(Some(&token));
            let interpreted = match e.eval(&act).unwrap() {
                cel::Value::String(s) => s.to_string(),
                cel::Value::Int(i) => i.to_string(),
                other => panic!("{other:?}"),
            };
            assert_eq!(e.eval_string(&act), Ok(interpreted), "{text}");
        }
    }

    #[test]
    fn bind_macro() {
        assert!(truth(
            "cel.bind(g, jwt.claims.groups, 'admin' in g && size(g) == 2)"
        ));
        assert!(compile("cel.bind(g, 1, h)").is_err());
    }

    #[test]
    fn two_variable_comprehensions() {
        assert!(truth("jwt.claims.groups.all(i, g, i < 2 && g != '')"));
        assert!(truth(
            "jwt.claims.groups.exists(i, g, i == 1 && g == 'dev')"
        ));
        assert!(truth(
            "jwt.claims.groups.existsOne(i, g, g.startsWith('ad'))"
        ));
        assert!(truth(
            "request.headers.exists(name, value, name == 'x-tenant' && value == 'acme')"
        ));
        assert!(truth(
            "jwt.claims.groups.transformList(i, g, i > 0, g.upperAscii()) == ['DEV']"
        ));
        assert!(truth(
            "jwt.claims.groups.transformMap(i, g, g + '!') == {0: 'admin!', 1: 'dev!'}"
        ));
        assert!(truth(
            "{'a': 1, 'b': 2}.transformMap(k, v, k != 'b', v + 1) == {'a': 2}"
        ));
        assert!(truth(
            "[1, 2].transformMapEntry(i, v, {string(v): i}) == {'1': 0, '2': 1}"
        ));
        // Two entries for one key is an error, as in cel-go.
        assert!(eval("[1, 2].transformMapEntry(i, v, {'k': v})").is_err());
        // Errors are absorbed like in the one-variable forms: a later false decides `all`.
        assert!(truth("![0, 2].all(i, v, 1 / v == 1)"));
        assert!(eval("[0, 1].all(i, v, 1 / v == 1)").is_err());
        // Nested: the inner pair doesn't hide the outer variables.
        assert!(truth(
            "[[1, 2], [3]].all(i, l, l.all(j, x, x > i && j < 2))"
        ));
        assert!(compile("[1].all(i, i, true)")
            .unwrap_err()
            .message
            .contains("duplicate variable"));
        assert!(compile("[1].all(i, 1, true)").is_err());
        assert!(compile("[1].all(i, v, w == v)").is_err());
        assert!(eval("(1).all(i, v, true)").is_err());
    }

    #[test]
    fn block_extension() {
        assert!(truth(
            "cel.block([jwt.claims.groups, size(cel.index(0))], \
             cel.index(1) == 2 && 'dev' in cel.index(0))"
        ));
        assert!(truth(
            "cel.block([[1, 2]], cel.index(0).exists(cel.iterVar(0, 0), cel.iterVar(0, 0) == 2))"
        ));
        assert!(compile("cel.block(jwt.claims.groups, 1) == 1").is_err());
        let err = compile("cel.block([1], cel.index(1) == 1)").unwrap_err();
        assert!(err.message.contains("cel.index(1)"), "{err}");
        assert!(compile("cel.index(0) == 1").is_err());
        assert!(compile("cel.index(request.path) == 1").is_err());
    }

    #[test]
    fn milliseconds_component() {
        assert!(truth(
            "duration('1.5s').getMilliseconds() == 500 && duration('-1.5s').getMilliseconds() == -500"
        ));
        assert!(truth("request.time.getMilliseconds() == 250"));
        assert!(truth(
            "timestamp('2023-05-28T00:00:42.123Z').getMilliseconds('UTC') == 123"
        ));
        assert!(eval("'x'.getMilliseconds()").is_err());
    }

    #[test]
    fn backquoted_field_names() {
        assert!(truth("'auditor' in jwt.claims.`example.com/roles`"));
        assert!(truth("has(jwt.claims.`example.com/roles`)"));
        assert!(truth("!has(jwt.claims.`example.com/groups`)"));
        assert!(truth("request.headers.`x-tenant` == 'acme'"));
        assert!(compile("request.`path` == '/'").is_ok());
        assert!(compile("request.`pth` == '/'").is_err());
    }

    #[test]
    fn strings_extension() {
        assert!(truth(
            "'abc'.charAt(1) == 'b' && 'abcb'.lastIndexOf('b') == 3"
        ));
        assert!(truth("'a,b'.split(',').join('-') == 'a-b'"));
        assert!(truth("' x '.trim() == 'x' && 'AbC'.lowerAscii() == 'abc'"));
        assert!(truth(
            "'hello'.substring(1, 3) == 'el' && 'aXa'.replace('a', 'b') == 'bXb'"
        ));
        assert!(truth(
            "'abc'.indexOf('c') == 2 && 'abc'.upperAscii() == 'ABC'"
        ));
        assert!(truth("strings.quote('a\"b') == '\"a\\\\\"b\"'"));
        assert!(truth("size('héllo') == 5"));
    }

    #[test]
    fn network_extension() {
        assert!(truth("cidr('10.0.0.0/8').containsIP(ip(source.address))"));
        assert!(truth("cidr('10.0.0.0/8').containsIP(source.address)"));
        assert!(truth("!cidr('192.168.0.0/16').containsIP(ip('10.1.2.3'))"));
        assert!(truth(
            "ip('[::1]:8080').isLoopback() && ip('::1').family() == 6"
        ));
        assert!(truth(
            "ip('127.0.0.1').isLoopback() && ip('1.2.3.4').family() == 4"
        ));
        assert!(truth(
            "cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24')"
        ));
        assert!(truth("cidr('192.168.0.0/24').prefixLength() == 24"));
        assert!(truth("cidr('192.168.0.0/24').ip() == ip('192.168.0.0')"));
        assert!(truth("cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16')"));
        assert!(truth("!cidr('10.0.0.0/16').containsCIDR('10.0.0.0/8')"));
        assert!(truth(
            "isIP('::1') && !isIP('nope') && string(ip('::ffff:c0a8:1')) == '192.168.0.1'"
        ));
        assert!(truth("cidr('2001:db8::/32').containsIP('2001:db8::1')"));
        assert!(truth("!cidr('2001:db8::/32').containsIP('10.0.0.1')"));
        assert!(truth("cidr('0.0.0.0/0').containsIP('1.2.3.4')"));
        assert!(truth("type(ip('1.2.3.4')) == net.IP"));
        assert!(eval("ip('300.1.1.1')").is_err());
        assert!(eval("cidr('10.0.0.0/33')").is_err());
    }

    #[test]
    fn errors_never_show_values() {
        let err = eval("request.headers['x-tenant'] < 1").unwrap_err();
        assert!(!err.0.contains("acme"), "{err}");
        let err = eval("jwt.claims.sub + 1 == 2").unwrap_err();
        assert!(!err.0.contains("alice"), "{err}");
        let err = eval("int(jwt.claims.sub) == 2").unwrap_err();
        assert!(!err.0.contains("alice"), "{err}");
    }

    #[test]
    fn eval_string_and_bool() {
        let req = request();
        let act = Activation::new(&req);
        assert_eq!(
            compile("request.headers['x-tenant']")
                .unwrap()
                .eval_string(&act),
            Ok("acme".into())
        );
        assert_eq!(
            compile("source.port").unwrap().eval_string(&act),
            Ok("5555".into())
        );
        assert!(compile("request.path").unwrap().eval_bool(&act).is_err());
    }

    #[test]
    fn every_known_function_is_registered() {
        // Calling each with no arguments must fail with "no overload", not "undeclared".
        let env = shared_env().unwrap();
        for f in KNOWN_FUNCTIONS {
            let undeclared = [format!("{f}()"), format!("''.{f}()")].iter().all(|call| {
                let Ok(p) = env.compile(call) else {
                    return true;
                };
                let ctx = cel::Context::with_env(env.clone());
                matches!(p.execute(&ctx), Err(ExecutionError::UndeclaredReference(_)))
            });
            assert!(!undeclared, "{f} is not registered");
        }
    }

    #[test]
    fn unchecked_evaluation() {
        let v = eval_unchecked("x + 1", &[("x", cel::Value::Int(2))]).unwrap();
        assert_eq!(v, cel::Value::Int(3));
        assert!(matches!(eval_unchecked("(", &[]), Err(Err(_))));
        assert!(matches!(eval_unchecked("1/0", &[]), Err(Ok(_))));
    }

    /// Per-expression costs (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn expression_timing() {
        let req = request();
        let token = jwt();
        for text in [
            "true",
            "'abc'.startsWith('a')",
            "startsWith('abc', 'a')",
            "request.method.startsWith('G')",
            "request.method.size() == 3",
            "size(request.method) == 3",
            "request.url_path == '/admin/users'",
            "request.method == 'GET'",
            "request.url_path.startsWith('/public/')",
            "request.headers['x-tenant'] == 'acme'",
            "'x-tenant' in request.headers",
            "jwt.claims.tenant == 'acme'",
            "'admin' in jwt.claims.groups",
            "'write' in jwt.claims.scope.split(' ')",
            "request.method in ['POST', 'PUT', 'PATCH']",
            "cidr('10.0.0.0/8').containsIP(ip(source.address))",
            "connection.mtls",
        ] {
            let e = compile(text).unwrap();
            let n = 20_000u32;
            let start = std::time::Instant::now();
            for _ in 0..n {
                let act = Activation::new(&req).with_jwt(Some(&token));
                let _ = e.eval_bool(&act);
            }
            println!("{:>10?}  {text}", start.elapsed() / n);
        }
    }
}
