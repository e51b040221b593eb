//! Google's CEL conformance suite (cel-spec `tests/simple/testdata/*.textproto`), run through
//! the filter's own evaluator ([`portcullis_filter::expr::eval_unchecked_in`]: same
//! environment, functions and extensions as the filter, without Portcullis' attribute checker).
//!
//! The suite lives in the repository, at `filter/tests/conformance/cel-spec/testdata`
//! relative to the workspace root. If it is missing, this test fails.
//!
//! `cel_known_failures.txt` lists the tests expected to fail, one `file/section/test` a line
//! with a `# reason`; `file/*` and `file/section/*` list whole files or sections. The test
//! fails on any failure not listed, on an exactly listed test that now passes (globs may
//! contain passing tests), and on a failure whose reason mentions protobuf although the test
//! needs no protobuf message (see below).
//!
//! # Two figures
//!
//! Besides the pass count over the whole suite, the test reports it over the tests that need
//! no protobuf message: Envoy attributes and JWT claims are never messages, so that figure is
//! the one that measures what policy authors can run into. A test **needs protobuf** when
//! any of these holds (the rule is mechanical, applied to the parsed test):
//!
//! 1. one of its strings, bare tokens or field names (expression, bindings, type
//!    environment, expected value or deduced type) names, as a whole word, a message or enum
//!    declared in the vendored conformance protos (`proto/cel/expr/conformance/proto2` and
//!    `proto3`: `TestAllTypes`, `NestedTestAllTypes`, `GlobalEnum`, ...);
//! 2. or it names a `google.protobuf.*` type other than `google.protobuf.Timestamp` and
//!    `google.protobuf.Duration`, which are CEL's own `timestamp` and `duration` (and how
//!    the suite writes their values): wrappers, `Any`, `Struct`, `Value`, `ListValue`, ...;
//! 3. or its `container` is a protobuf package (`cel.expr.conformance.*`, `google.protobuf`),
//!    where short names resolve to messages (`Int32Value{value: 1}`).
//!
//! A `typed_result` is checked on its value only when it has no `deduced_type`: deducing
//! types is the static type checker's job, which the filter doesn't have (it checks
//! attributes and functions, not CEL types), so such a test fails whatever its value.

use portcullis_filter::expr::eval_unchecked_in;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// A small protobuf text-format reader: enough for SimpleTestFile.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Node {
    /// A scalar: a string literal (already unescaped, as bytes) or a bare token.
    Str(Vec<u8>),
    Bare(String),
    Msg(Msg),
}

#[derive(Debug, Clone, Default)]
struct Msg(Vec<(String, Node)>);

impl Msg {
    fn get(&self, name: &str) -> Option<&Node> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v)
    }
    fn msg(&self, name: &str) -> Option<&Msg> {
        match self.get(name)? {
            Node::Msg(m) => Some(m),
            _ => None,
        }
    }
    fn string(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Node::Str(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Node::Bare(s) => Some(s.clone()),
            Node::Msg(_) => None,
        }
    }
    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Node::Bare(s)) if s == "true" || s == "1")
    }
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'#' {
                while let Some(c) = self.peek() {
                    if c == b'\n' {
                        break;
                    }
                    self.i += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> String {
        self.skip();
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || b"_.-+".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn string_literal(&mut self) -> Result<Vec<u8>, String> {
        let q = self.peek().ok_or("eof")?;
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            if c == q {
                return Ok(out);
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let e = self.peek().ok_or("bad escape")?;
            self.i += 1;
            match e {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'?' => out.push(b'?'),
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match self.peek() {
                            Some(d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                self.i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(v as u8);
                }
                b'x' | b'X' => {
                    let mut v = 0u32;
                    for _ in 0..2 {
                        match self.peek().and_then(|d| (d as char).to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d;
                                self.i += 1;
                            }
                            None => break,
                        }
                    }
                    out.push(v as u8);
                }
                b'u' | b'U' => {
                    let n = if e == b'u' { 4 } else { 8 };
                    let hex = std::str::from_utf8(&self.s[self.i..self.i + n])
                        .map_err(|e| e.to_string())?;
                    self.i += n;
                    let cp = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                    let ch = char::from_u32(cp).ok_or("bad code point")?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
    }

    fn value(&mut self) -> Result<Node, String> {
        self.skip();
        match self.peek() {
            Some(b'{') | Some(b'<') => {
                let close = if self.peek() == Some(b'{') {
                    b'}'
                } else {
                    b'>'
                };
                self.i += 1;
                let m = self.message(Some(close))?;
                Ok(Node::Msg(m))
            }
            Some(b'"') | Some(b'\'') => {
                let mut bytes = self.string_literal()?;
                loop {
                    self.skip();
                    match self.peek() {
                        Some(b'"') | Some(b'\'') => bytes.extend(self.string_literal()?),
                        _ => break,
                    }
                }
                Ok(Node::Str(bytes))
            }
            _ => {
                let w = self.word();
                if w.is_empty() {
                    Err(format!("unexpected character at byte {}", self.i))
                } else {
                    Ok(Node::Bare(w))
                }
            }
        }
    }

    fn message(&mut self, close: Option<u8>) -> Result<Msg, String> {
        let mut m = Msg::default();
        loop {
            self.skip();
            match (self.peek(), close) {
                (None, None) => return Ok(m),
                (None, Some(_)) => return Err("unexpected end of file".into()),
                (Some(c), Some(cl)) if c == cl => {
                    self.i += 1;
                    return Ok(m);
                }
                _ => {}
            }
            let name = if self.eat(b'[') {
                let start = self.i;
                while self.peek().is_some_and(|c| c != b']') {
                    self.i += 1;
                }
                let n = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                format!("[{}]", n.trim())
            } else {
                self.word()
            };
            if name.is_empty() {
                return Err(format!("expected a field name at byte {}", self.i));
            }
            self.eat(b':');
            if self.eat(b'[') {
                if !self.eat(b']') {
                    loop {
                        let v = self.value()?;
                        m.0.push((name.clone(), v));
                        if self.eat(b']') {
                            break;
                        }
                        if !self.eat(b',') {
                            return Err("expected ',' in list".into());
                        }
                    }
                }
            } else {
                let v = self.value()?;
                m.0.push((name, v));
            }
            if !self.eat(b',') {
                self.eat(b';');
            }
        }
    }
}

fn parse_textproto(text: &str) -> Result<Msg, String> {
    Reader {
        s: text.as_bytes(),
        i: 0,
    }
    .message(None)
}

// ---------------------------------------------------------------------------------------
// Expected values.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Expected {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    List(Vec<Expected>),
    Map(Vec<(Expected, Expected)>),
    Type(String),
    /// seconds, nanos
    Timestamp(i64, i64),
    Duration(i64, i64),
}

fn num<T: std::str::FromStr>(m: &Msg, name: &str) -> Result<T, String> {
    let s = m.string(name).unwrap_or_else(|| "0".into());
    s.parse()
        .map_err(|_| format!("bad number {s:?} for {name}"))
}

fn double(s: &str) -> Result<f64, String> {
    match s.to_ascii_lowercase().as_str() {
        "inf" | "infinity" | "inff" => Ok(f64::INFINITY),
        "-inf" | "-infinity" | "-inff" => Ok(f64::NEG_INFINITY),
        "nan" | "-nan" => Ok(f64::NAN),
        t => t
            .parse()
            .or_else(|_| t.trim_end_matches('f').parse())
            .map_err(|_| format!("bad double {s:?}")),
    }
}

/// A `cel.expr.Value` message. `Err` is "unsupported" (protobuf messages, enums, ...).
fn expected(v: &Msg) -> Result<Expected, String> {
    let Some((kind, node)) = v.0.first() else {
        return Err("empty value".into());
    };
    let s = || match node {
        Node::Str(b) => String::from_utf8_lossy(b).into_owned(),
        Node::Bare(b) => b.clone(),
        Node::Msg(_) => String::new(),
    };
    Ok(match kind.as_str() {
        "null_value" => Expected::Null,
        "bool_value" => Expected::Bool(s() == "true"),
        "int64_value" => Expected::Int(s().parse().map_err(|_| "bad int")?),
        "uint64_value" => Expected::UInt(s().parse().map_err(|_| "bad uint")?),
        "double_value" => Expected::Double(double(&s())?),
        "string_value" => Expected::String(s()),
        "bytes_value" => Expected::Bytes(match node {
            Node::Str(b) => b.clone(),
            _ => Vec::new(),
        }),
        "type_value" => Expected::Type(s()),
        "list_value" => {
            let Node::Msg(m) = node else {
                return Err("bad list".into());
            };
            let mut out = Vec::new();
            for item in m.all("values") {
                match item {
                    Node::Msg(i) => out.push(expected(i)?),
                    _ => return Err("bad list element".into()),
                }
            }
            Expected::List(out)
        }
        "map_value" => {
            let Node::Msg(m) = node else {
                return Err("bad map".into());
            };
            let mut out = Vec::new();
            for e in m.all("entries") {
                let Node::Msg(e) = e else {
                    return Err("bad map entry".into());
                };
                let k = expected(e.msg("key").ok_or("map entry without key")?)?;
                let v = expected(e.msg("value").ok_or("map entry without value")?)?;
                out.push((k, v));
            }
            Expected::Map(out)
        }
        "object_value" => {
            let Node::Msg(m) = node else {
                return Err("bad object".into());
            };
            let Some((ty, Node::Msg(body))) = m.0.first() else {
                return Err("unsupported object_value".into());
            };
            let ty = ty
                .trim_start_matches('[')
                .trim_end_matches(']')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_owned();
            well_known(&ty, body)?
        }
        other => return Err(format!("unsupported value kind {other}")),
    })
}

/// A protobuf well-known type as the CEL value it stands for.
fn well_known(ty: &str, body: &Msg) -> Result<Expected, String> {
    Ok(match ty {
        "google.protobuf.Duration" => {
            Expected::Duration(num(body, "seconds")?, num(body, "nanos")?)
        }
        "google.protobuf.Timestamp" => {
            Expected::Timestamp(num(body, "seconds")?, num(body, "nanos")?)
        }
        "google.protobuf.Int64Value" | "google.protobuf.Int32Value" => {
            Expected::Int(num(body, "value")?)
        }
        "google.protobuf.UInt64Value" | "google.protobuf.UInt32Value" => {
            Expected::UInt(num(body, "value")?)
        }
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            Expected::Double(double(&body.string("value").unwrap_or_else(|| "0".into()))?)
        }
        "google.protobuf.BoolValue" => Expected::Bool(body.flag("value")),
        "google.protobuf.StringValue" => Expected::String(body.string("value").unwrap_or_default()),
        "google.protobuf.BytesValue" => Expected::Bytes(match body.get("value") {
            Some(Node::Str(b)) => b.clone(),
            _ => Vec::new(),
        }),
        other => return Err(format!("unsupported message type {other}")),
    })
}

/// An expected value as a CEL value, for bindings.
fn to_cel(e: &Expected) -> Result<cel::Value, String> {
    Ok(match e {
        Expected::Null => cel::Value::Null,
        Expected::Bool(b) => cel::Value::Bool(*b),
        Expected::Int(i) => cel::Value::Int(*i),
        Expected::UInt(u) => cel::Value::UInt(*u),
        Expected::Double(d) => cel::Value::Float(*d),
        Expected::String(s) => cel::Value::String(Arc::new(s.clone())),
        Expected::Bytes(b) => cel::Value::Bytes(Arc::new(b.clone())),
        Expected::List(items) => cel::Value::List(Arc::new(
            items.iter().map(to_cel).collect::<Result<_, _>>()?,
        )),
        Expected::Map(entries) => {
            let mut map = std::collections::HashMap::new();
            for (k, v) in entries {
                let key = match to_cel(k)? {
                    cel::Value::Int(i) => cel::objects::Key::Int(i),
                    cel::Value::UInt(u) => cel::objects::Key::Uint(u),
                    cel::Value::Bool(b) => cel::objects::Key::Bool(b),
                    cel::Value::String(s) => cel::objects::Key::String(s),
                    _ => return Err("unsupported map key".into()),
                };
                map.insert(key, to_cel(v)?);
            }
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
        // Built with the evaluator itself: the filter doesn't depend on chrono.
        Expected::Timestamp(s, n) => {
            eval_unchecked_in("", &format!("timestamp({s}) + duration('{n}ns')"), &[])
                .map_err(|_| "bad timestamp binding")?
        }
        Expected::Duration(s, n) => {
            eval_unchecked_in("", &format!("duration('{s}s') + duration('{n}ns')"), &[])
                .map_err(|_| "bad duration binding")?
        }
        Expected::Type(_) => return Err("unsupported type binding".into()),
    })
}

fn matches(expected: &Expected, actual: &cel::Value) -> bool {
    use cel::Value as V;
    match (expected, actual) {
        (Expected::Null, V::Null) => true,
        (Expected::Bool(a), V::Bool(b)) => a == b,
        (Expected::Int(a), V::Int(b)) => a == b,
        (Expected::UInt(a), V::UInt(b)) => a == b,
        (Expected::Double(a), V::Float(b)) => (a.is_nan() && b.is_nan()) || a == b,
        (Expected::String(a), V::String(b)) => a == b.as_str(),
        (Expected::Bytes(a), V::Bytes(b)) => a == b.as_ref(),
        // `Value` has no type variant: a type converts to its name.
        (Expected::Type(a), V::String(b)) => a == b.as_str(),
        (Expected::List(a), V::List(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| matches(x, y))
        }
        (Expected::Map(a), V::Map(b)) => {
            a.len() == b.map.len()
                && a.iter().all(|(k, v)| {
                    b.map
                        .iter()
                        .any(|(bk, bv)| key_matches(k, bk) && matches(v, bv))
                })
        }
        (Expected::Timestamp(s, n), V::Timestamp(t)) => {
            t.timestamp() == *s && i64::from(t.timestamp_subsec_nanos()) == *n
        }
        (Expected::Duration(s, n), V::Duration(d)) => {
            let total = i128::from(*s) * 1_000_000_000 + i128::from(*n);
            d.num_nanoseconds().map(i128::from) == Some(total)
        }
        _ => false,
    }
}

fn key_matches(k: &Expected, actual: &cel::objects::Key) -> bool {
    use cel::objects::Key as K;
    match (k, actual) {
        (Expected::Int(a), K::Int(b)) => a == b,
        (Expected::UInt(a), K::Uint(b)) => a == b,
        (Expected::Bool(a), K::Bool(b)) => a == b,
        (Expected::String(a), K::String(b)) => a == b.as_str(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Running the suite.
// ---------------------------------------------------------------------------------------

enum Want {
    Value(Expected),
    Error,
    Unsupported(String),
}

fn want(test: &Msg) -> Want {
    if let Some(v) = test.msg("value") {
        return match expected(v) {
            Ok(e) => Want::Value(e),
            Err(e) => Want::Unsupported(e),
        };
    }
    if let Some(t) = test.msg("typed_result") {
        if t.get("deduced_type").is_some() {
            return Want::Unsupported(
                "deduced_type: needs the static type checker (not implemented)".into(),
            );
        }
        return match t.msg("result").map(expected) {
            Some(Ok(e)) => Want::Value(e),
            Some(Err(e)) => Want::Unsupported(e),
            None => Want::Unsupported("typed_result without result".into()),
        };
    }
    if test.get("eval_error").is_some() || test.get("any_eval_errors").is_some() {
        return Want::Error;
    }
    if test.get("unknown").is_some() || test.get("any_unknowns").is_some() {
        return Want::Unsupported("unknown sets".into());
    }
    Want::Value(Expected::Bool(true))
}

/// `Ok(())` on a pass, `Err(why)` on a failure.
fn run_test(test: &Msg) -> Result<(), String> {
    if test.flag("check_only") {
        return Err("check_only: the type checker is not implemented".into());
    }
    if test.flag("disable_macros") {
        return Err("disable_macros is not supported".into());
    }
    let expr = test.string("expr").ok_or("no expr")?;
    let container = test.string("container").unwrap_or_default();
    let mut bindings: Vec<(String, cel::Value)> = Vec::new();
    for b in test.all("bindings") {
        let Node::Msg(b) = b else { continue };
        let name = b.string("key").ok_or("binding without key")?;
        let value = b
            .msg("value")
            .and_then(|v| v.msg("value"))
            .ok_or("unsupported binding (not a value)")?;
        let value = to_cel(&expected(value)?)?;
        bindings.push((name, value));
    }
    let vars: Vec<(&str, cel::Value)> = bindings
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let result = eval_unchecked_in(&container, &expr, &vars);
    match (want(test), result) {
        (Want::Unsupported(why), _) => Err(why),
        (Want::Error, Err(_)) => Ok(()),
        (Want::Error, Ok(v)) => Err(format!("expected an error, got {v:?}")),
        (Want::Value(e), Ok(v)) if matches(&e, &v) => Ok(()),
        (Want::Value(e), Ok(v)) => Err(format!("expected {e:?}, got {v:?}")),
        (Want::Value(e), Err(Err(p))) => Err(format!("expected {e:?}, parse error: {p}")),
        (Want::Value(e), Err(Ok(r))) => Err(format!("expected {e:?}, error: {r}")),
    }
}

// ---------------------------------------------------------------------------------------
// Which tests need protobuf messages (the rule is in the module documentation).
// ---------------------------------------------------------------------------------------

struct ProtobufRule {
    /// The messages and enums the conformance protos declare.
    names: BTreeSet<String>,
}

impl ProtobufRule {
    fn load() -> ProtobufRule {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/conformance/cel-spec/proto/cel/expr/conformance");
        let mut names = BTreeSet::new();
        for package in ["proto2", "proto3"] {
            let dir = root.join(package);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|x| x != "proto") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text.lines() {
                    let mut words = line.split_whitespace();
                    if let (Some("message" | "enum"), Some(name)) = (words.next(), words.next()) {
                        names.insert(name.trim_end_matches('{').to_owned());
                    }
                }
            }
        }
        assert!(
            names.contains("TestAllTypes"),
            "no message declarations found under {}",
            root.display()
        );
        ProtobufRule { names }
    }

    fn needs_protobuf(&self, test: &Msg) -> bool {
        let container = test.string("container").unwrap_or_default();
        if container.starts_with("cel.expr.conformance") || container == "google.protobuf" {
            return true;
        }
        let mut texts = Vec::new();
        collect_text(test, &mut texts);
        texts.iter().any(|t| self.names_protobuf(t))
    }

    fn names_protobuf(&self, text: &str) -> bool {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if text.split(|c| !word(c)).any(|w| self.names.contains(w)) {
            return true;
        }
        text.match_indices("google.protobuf.").any(|(at, prefix)| {
            let rest = &text[at + prefix.len()..];
            let end = rest.find(|c| !word(c)).unwrap_or(rest.len());
            !matches!(&rest[..end], "Timestamp" | "Duration")
        })
    }
}

/// Every field name, string and bare token of `m`, recursively.
fn collect_text(m: &Msg, out: &mut Vec<String>) {
    for (name, node) in &m.0 {
        out.push(name.clone());
        match node {
            Node::Str(b) => out.push(String::from_utf8_lossy(b).into_owned()),
            Node::Bare(s) => out.push(s.clone()),
            Node::Msg(inner) => collect_text(inner, out),
        }
    }
}

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/cel-spec/testdata")
}

struct KnownFailures {
    /// Test name to reason.
    exact: BTreeMap<String, String>,
    /// Name prefix to reason.
    globs: Vec<(String, String)>,
}

impl KnownFailures {
    fn load() -> KnownFailures {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cel_known_failures.txt");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut exact = BTreeMap::new();
        let mut globs = Vec::new();
        for line in text.lines() {
            let (entry, reason) = line.split_once('#').unwrap_or((line, ""));
            let (entry, reason) = (entry.trim(), reason.trim().to_owned());
            if entry.is_empty() {
                continue;
            }
            match entry.strip_suffix('*') {
                Some(prefix) => globs.push((prefix.to_owned(), reason)),
                None => {
                    exact.insert(entry.to_owned(), reason);
                }
            }
        }
        KnownFailures { exact, globs }
    }

    /// The reason a failure of `name` is expected, if it is.
    fn reason(&self, name: &str) -> Option<&str> {
        self.exact.get(name).map(String::as_str).or_else(|| {
            self.globs
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix.as_str()))
                .map(|(_, reason)| reason.as_str())
        })
    }
}

/// Pass counts, over all tests and over those needing no protobuf message ("plain").
#[derive(Default, Clone, Copy)]
struct Counts {
    pass: usize,
    total: usize,
    plain_pass: usize,
    plain_total: usize,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.pass += other.pass;
        self.total += other.total;
        self.plain_pass += other.plain_pass;
        self.plain_total += other.plain_total;
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<20} {:>6} {:>6} {:>14} {:>14}",
            self.pass, self.total, self.plain_pass, self.plain_total
        );
    }
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[test]
fn cel_conformance() {
    let dir = suite_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "the CEL conformance suite is missing at {}: {e}",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "textproto"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no .textproto files in {}",
        dir.display()
    );

    let known = KnownFailures::load();
    let protobuf = ProtobufRule::load();
    let verbose = std::env::var_os("CEL_CONFORMANCE_VERBOSE").is_some();
    let mut unexpected_failures = Vec::new();
    let mut unexpected_passes = Vec::new();
    let mut mislabelled = Vec::new();
    let mut seen = BTreeSet::new();
    let mut totals = Counts::default();
    let mut per_file: BTreeMap<String, Counts> = BTreeMap::new();

    for path in &files {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).unwrap();
        let file = parse_textproto(&text)
            .unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()));
        let counts = per_file.entry(stem.clone()).or_default();
        for section in file.all("section") {
            let Node::Msg(section) = section else {
                continue;
            };
            let sname = section.string("name").unwrap_or_default();
            for test in section.all("test") {
                let Node::Msg(test) = test else { continue };
                let tname = test.string("name").unwrap_or_default();
                let name = format!("{stem}/{sname}/{tname}");
                seen.insert(name.clone());
                let outcome = std::panic::catch_unwind(|| run_test(test))
                    .unwrap_or_else(|_| Err("panicked".into()));
                let listed = known.exact.contains_key(&name);
                let plain = !protobuf.needs_protobuf(test);
                counts.total += 1;
                counts.plain_total += usize::from(plain);
                match outcome {
                    Ok(()) => {
                        counts.pass += 1;
                        counts.plain_pass += usize::from(plain);
                        if listed {
                            unexpected_passes.push(name);
                        }
                    }
                    Err(why) => {
                        if verbose {
                            let kind = if plain { "" } else { " (protobuf)" };
                            eprintln!("FAIL{kind} {name}: {why}");
                        }
                        match known.reason(&name) {
                            None => unexpected_failures.push(format!("{name}  # {why}")),
                            // Keeps the no-protobuf figure honest: its failures must say why.
                            Some(reason) if plain && reason.contains("protobuf") => {
                                mislabelled.push(name)
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
        }
        totals.add(counts);
    }

    println!(
        "{:<20} {:>6} {:>6} {:>14} {:>14}",
        "file", "pass", "total", "no-proto pass", "no-proto total"
    );
    for (file, c) in &per_file {
        c.print(file);
    }
    totals.print("TOTAL");
    println!(
        "all tests: {}/{} pass ({:.1} %); tests needing no protobuf message: {}/{} pass ({:.1} %)",
        totals.pass,
        totals.total,
        percent(totals.pass, totals.total),
        totals.plain_pass,
        totals.plain_total,
        percent(totals.plain_pass, totals.plain_total),
    );

    let stale: Vec<&String> = known.exact.keys().filter(|n| !seen.contains(*n)).collect();
    let mut problems = String::new();
    if !unexpected_failures.is_empty() {
        problems += &format!(
            "\n{} unexpected failures (add them to cel_known_failures.txt or fix them):\n{}\n",
            unexpected_failures.len(),
            unexpected_failures.join("\n")
        );
    }
    if !unexpected_passes.is_empty() {
        problems += &format!(
            "\n{} listed failures now pass (remove them from cel_known_failures.txt):\n{}\n",
            unexpected_passes.len(),
            unexpected_passes.join("\n")
        );
    }
    if !mislabelled.is_empty() {
        problems += &format!(
            "\n{} failures listed as needing protobuf need no protobuf message (give their real reason):\n{}\n",
            mislabelled.len(),
            mislabelled.join("\n")
        );
    }
    if !stale.is_empty() {
        problems += &format!(
            "\n{} entries of cel_known_failures.txt name no test:\n{}\n",
            stale.len(),
            stale
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(problems.is_empty(), "{problems}");
}
