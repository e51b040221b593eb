//! The request as the policy may read it: one meaning per attribute, or a refusal.
//!
//! A policy is only as good as the agreement between what it reads and what the upstream
//! acts on. Two shapes break that agreement, and both are refused here (400
//! `invalid_request`) before anything else runs:
//!
//! - **A path that is not in normal form.** `/public/../admin` starts with `/public/` for the
//!   policy and is `/admin` for an upstream that resolves dot-segments. The path's normal form
//!   is RFC 3986 §6.2.2 syntax-based normalisation, plus the characters that upstreams
//!   decode or split on: see [`PathViolation`]. Envoy's `normalize_path`, `merge_slashes` and
//!   `path_with_escaped_slashes_action` put every path in this form before filters run; the
//!   check is the filter's own guarantee when a deployment forgets them.
//! - **A header or query parameter that an expression reads and that arrives more than once.**
//!   `x-client-id: c9` twice reads `c9,c9` (a fresh rate-limit bucket) while the upstream
//!   takes `c9`; a query parameter given twice reads its first value while many frameworks
//!   take the last. Headers that legitimately repeat can be allowed by name
//!   (`request.repeatable_headers`); their values are then joined with `,` as in Envoy.
//!
//! See docs/security.md.

use crate::decision::{DenyReason, Refusal};
use crate::expr::{hex_digit, Expr};
use crate::metrics;
use crate::ports::Counters;
use crate::request::RequestView;
use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;

/// What to do with a request whose path is not in normal form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathCheck {
    /// Refuse it: 400 `invalid_request` (the default).
    #[default]
    Reject,
    /// Let the policy see the path as received. Safe only where the proxy normalises paths
    /// itself (Envoy's `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`).
    Off,
}

/// The `request` section of the plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestConfig {
    pub path_normalization: PathCheck,
    /// Headers that expressions read and that may arrive more than once (e.g. `accept`); the
    /// policy sees their values joined with `,`. Any other header an expression reads must
    /// arrive at most once.
    pub repeatable_headers: Vec<String>,
}

/// Why a path is not in normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathViolation {
    /// The path does not start with `/` (origin form).
    NotAbsolute,
    /// A `.` or `..` segment (RFC 3986 §5.2.4 would remove it).
    DotSegment,
    /// `//`: many servers merge slashes.
    EmptySegment,
    /// A percent-encoded unreserved character (`%41`, `%2e`, …): RFC 3986 §6.2.2.2 decodes it.
    EncodedUnreserved,
    /// `%2f`, `%5c` or a raw `\`: some upstreams treat them as `/`.
    Slash,
    /// `;`: path parameters (`/a;x/..;/b`) that servers strip before routing.
    Parameter,
    /// `%` not followed by two hex digits, or an encoded control character.
    BadEscape,
    /// A character that is not allowed in a path (control, space, `#`, non-ASCII).
    BadCharacter,
}

impl PathViolation {
    pub fn reason(self) -> &'static str {
        match self {
            PathViolation::NotAbsolute => "the path must start with '/'",
            PathViolation::DotSegment => "the path has a '.' or '..' segment",
            PathViolation::EmptySegment => "the path has an empty segment ('//')",
            PathViolation::EncodedUnreserved => {
                "the path percent-encodes a character that needs no encoding"
            }
            PathViolation::Slash => "the path has an encoded '/' or a '\\'",
            PathViolation::Parameter => "the path has a ';' parameter",
            PathViolation::BadEscape => "the path has an invalid or control-character escape",
            PathViolation::BadCharacter => "the path has a character not allowed in a path",
        }
    }

    /// The counter suffix: `portcullis.request.path_rejected.<cause>`.
    pub fn cause(self) -> &'static str {
        match self {
            PathViolation::NotAbsolute => "not_absolute",
            PathViolation::DotSegment => "dot_segment",
            PathViolation::EmptySegment => "empty_segment",
            PathViolation::EncodedUnreserved => "encoded_unreserved",
            PathViolation::Slash => "slash",
            PathViolation::Parameter => "parameter",
            PathViolation::BadEscape => "bad_escape",
            PathViolation::BadCharacter => "bad_character",
        }
    }
}

impl fmt::Display for PathViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Checks that the path part of `:path` (before `?`) is in normal form. `*` (the
/// asterisk-form of `OPTIONS *`) is accepted as is.
pub fn check_path(path: &str) -> Result<(), PathViolation> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path == "*" {
        return Ok(());
    }
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathViolation::NotAbsolute);
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let decoded = bytes
                    .get(i + 1)
                    .and_then(|h| hex_digit(*h))
                    .zip(bytes.get(i + 2).and_then(|l| hex_digit(*l)))
                    .map(|(h, l)| h * 16 + l)
                    .ok_or(PathViolation::BadEscape)?;
                match decoded {
                    b'/' | b'\\' => return Err(PathViolation::Slash),
                    d if is_unreserved(d) => return Err(PathViolation::EncodedUnreserved),
                    d if d < 0x20 || d == 0x7f => return Err(PathViolation::BadEscape),
                    _ => {}
                }
                i += 3;
            }
            b'\\' => return Err(PathViolation::Slash),
            b';' => return Err(PathViolation::Parameter),
            b'#' | b' ' => return Err(PathViolation::BadCharacter),
            b if !(0x20..0x7f).contains(&b) => return Err(PathViolation::BadCharacter),
            _ => i += 1,
        }
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(PathViolation::DotSegment);
    }
    // `//` anywhere, including a trailing `//`; a single trailing `/` is a real resource.
    if path.contains("//") {
        return Err(PathViolation::EmptySegment);
    }
    Ok(())
}

/// Which headers or query parameters an expression reads by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamesRead {
    /// Read through the whole map (iteration, a computed key): every name counts.
    pub all: bool,
    pub names: BTreeSet<String>,
}

impl NamesRead {
    fn add(&mut self, name: &str) {
        self.names.insert(name.to_ascii_lowercase());
    }

    fn merge(&mut self, other: &NamesRead) {
        self.all |= other.all;
        self.names.extend(other.names.iter().cloned());
    }

    fn reads(&self, name: &str) -> bool {
        self.all || self.names.contains(name)
    }

    fn is_empty(&self) -> bool {
        !self.all && self.names.is_empty()
    }
}

/// The headers and query parameters an expression reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    pub headers: NamesRead,
    pub query_params: NamesRead,
}

impl Reads {
    pub fn merge(&mut self, other: &Reads) {
        self.headers.merge(&other.headers);
        self.query_params.merge(&other.query_params);
    }
}

/// Walks an expression for `request.headers[...]`, `request.query_params[...]` and the
/// members derived from a header (`request.useragent`, …). A presence test (`"x" in
/// request.headers`, `has(request.headers.x)`) reads no value, so it does not count.
pub fn reads_of(expr: &IdedExpr) -> Reads {
    let mut reads = Reads::default();
    walk(expr, &mut reads);
    reads
}

/// `request.<member>` if `e` is exactly that select.
fn request_member(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Ast::Select(s) if !s.test => match &s.operand.expr {
            Ast::Ident(root) if root == "request" => Some(s.field.as_str()),
            _ => None,
        },
        _ => None,
    }
}

fn map_of<'r>(reads: &'r mut Reads, member: &str) -> Option<&'r mut NamesRead> {
    match member {
        "headers" => Some(&mut reads.headers),
        "query_params" => Some(&mut reads.query_params),
        _ => None,
    }
}

fn walk(e: &IdedExpr, reads: &mut Reads) {
    match &e.expr {
        Ast::Ident(name) if name == "request" => {
            // The whole request as a map: every header and parameter is visible.
            reads.headers.all = true;
            reads.query_params.all = true;
        }
        Ast::Unspecified | Ast::Literal(_) | Ast::Ident(_) => {}
        Ast::Select(s)
            if s.test && matches!(&s.operand.expr, Ast::Ident(root) if root == "request") =>
        {
            // `has(request.useragent)`: a presence test reads no value.
        }
        Ast::Select(s) => {
            if let Some(member) = request_member(e) {
                match member {
                    "useragent" => reads.headers.add("user-agent"),
                    "referer" => reads.headers.add("referer"),
                    "id" => reads.headers.add("x-request-id"),
                    "host" => reads.headers.add("host"),
                    _ => {}
                }
                if let Some(map) = map_of(reads, member) {
                    map.all = true;
                }
                return;
            }
            if let Some(member) = request_member(&s.operand) {
                if let Some(map) = map_of(reads, member) {
                    if !s.test {
                        map.add(&s.field);
                    }
                    return;
                }
            }
            walk(&s.operand, reads);
        }
        Ast::Call(call) => {
            let literal_key = |k: Option<&IdedExpr>| match k.map(|k| &k.expr) {
                Some(Ast::Literal(LiteralValue::String(k))) => Some(k.inner().to_owned()),
                _ => None,
            };
            match (call.func_name.as_str(), call.args.as_slice()) {
                ("_[_]" | "_[?_]", [target, key]) => {
                    if let Some(member) = request_member(target) {
                        if let (Some(map), Some(k)) =
                            (map_of(reads, member), literal_key(Some(key)))
                        {
                            map.add(&k);
                            return;
                        }
                    }
                }
                ("@in", [key, target]) => {
                    if let Some(member) = request_member(target) {
                        if map_of(reads, member).is_some() && literal_key(Some(key)).is_some() {
                            return;
                        }
                    }
                }
                _ => {}
            }
            if let Some(t) = &call.target {
                walk(t, reads);
            }
            for a in &call.args {
                walk(a, reads);
            }
        }
        Ast::Comprehension(c) => {
            walk(&c.iter_range, reads);
            walk(&c.accu_init, reads);
            walk(&c.loop_cond, reads);
            walk(&c.loop_step, reads);
            walk(&c.result, reads);
        }
        Ast::List(l) => l.elements.iter().for_each(|x| walk(x, reads)),
        Ast::Map(m) => {
            for entry in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, reads);
                    walk(&me.value, reads);
                }
            }
        }
        Ast::Struct(s) => {
            for entry in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                    walk(&f.value, reads);
                }
            }
        }
    }
}

/// The compiled `request` section: what [`RequestCheck::check`] refuses.
#[derive(Debug, Clone, Default)]
pub struct RequestCheck {
    path: PathCheck,
    /// Headers read by some expression that must arrive at most once.
    single_headers: NamesRead,
    repeatable: BTreeSet<String>,
    single_params: NamesRead,
}

impl RequestCheck {
    pub fn compile<'e>(
        config: &RequestConfig,
        exprs: impl IntoIterator<Item = &'e Expr>,
    ) -> RequestCheck {
        let mut reads = Reads::default();
        for expr in exprs {
            reads.merge(&expr.reads());
        }
        let repeatable: BTreeSet<String> = config
            .repeatable_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        reads.headers.names.retain(|n| !repeatable.contains(n));
        RequestCheck {
            path: config.path_normalization,
            single_headers: reads.headers,
            repeatable,
            single_params: reads.query_params,
        }
    }

    /// Refuses what must be refused before any policy reads the request.
    pub fn check(&self, request: &RequestView, counters: &mut dyn Counters) -> Result<(), Refusal> {
        if self.path == PathCheck::Reject {
            if let Err(violation) = check_path(request.path()) {
                counters.increment(&metrics::REQUESTS_REJECTED.with(&[violation.cause()]), 1);
                return Err(invalid_request(violation.reason().to_owned()));
            }
        }
        if let Some(name) = self.repeated_header(request) {
            counters.increment(metrics::REQUESTS_REJECTED_REPEATED_HEADER, 1);
            return Err(invalid_request(format!(
                "the header `{name}` is given more than once"
            )));
        }
        if let Some(name) = self.repeated_param(request) {
            counters.increment(metrics::REQUESTS_REJECTED_REPEATED_QUERY_PARAM, 1);
            return Err(invalid_request(format!(
                "the query parameter `{name}` is given more than once"
            )));
        }
        Ok(())
    }

    fn repeated_header<'r>(&'r self, request: &'r RequestView) -> Option<&'r str> {
        if self.single_headers.is_empty() {
            return None;
        }
        if self.single_headers.all {
            // Quadratic in the header count, which Envoy bounds (100 by default); a set
            // would allocate on every request for the common case of no repeats.
            let headers = &request.headers;
            return headers.iter().enumerate().find_map(|(i, (name, _))| {
                let readable = !name.starts_with(':') && !self.repeatable.contains(name);
                (readable && headers.iter().skip(i + 1).any(|(other, _)| other == name))
                    .then_some(name)
            });
        }
        self.single_headers
            .names
            .iter()
            .find(|name| request.headers.values(name).nth(1).is_some())
            .map(String::as_str)
    }

    fn repeated_param(&self, request: &RequestView) -> Option<String> {
        if self.single_params.is_empty() {
            return None;
        }
        let path = request.path();
        let query = path.split_once('?').map_or("", |(_, q)| q);
        if query.is_empty() {
            return None;
        }
        let names: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| crate::expr::percent_decode(p.split_once('=').map_or(p, |(k, _)| k)))
            .collect();
        names.iter().enumerate().find_map(|(i, name)| {
            let repeated = names.iter().skip(i + 1).any(|other| other == name);
            (repeated && self.single_params.reads(name)).then(|| name.clone())
        })
    }
}

fn invalid_request(reason: String) -> Refusal {
    Refusal::new(DenyReason::InvalidRequest(reason), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Deny;
    use crate::expr::ExprSource;
    use crate::ports::memory::MemoryCounters;
    use proptest::prelude::*;

    #[test]
    fn bypass_paths_are_not_in_normal_form() {
        let cases = [
            ("/public/../admin/users", PathViolation::DotSegment),
            (
                "/public/%2e%2e/admin/users",
                PathViolation::EncodedUnreserved,
            ),
            ("/public/..%2fadmin/users", PathViolation::Slash),
            (
                "/public/%2e%2e%2fadmin/users",
                PathViolation::EncodedUnreserved,
            ),
            ("/public/./../admin/users", PathViolation::DotSegment),
            ("/public/..;/admin/users", PathViolation::Parameter),
            ("/api/%76%31/x", PathViolation::EncodedUnreserved),
            ("/api//v1/x", PathViolation::EmptySegment),
            ("/api/v1/x/..", PathViolation::DotSegment),
            ("/api/v1/.", PathViolation::DotSegment),
            ("/a\\..\\admin", PathViolation::Slash),
            ("/a%5cb", PathViolation::Slash),
            ("/a%2Fb", PathViolation::Slash),
            ("/a%zz", PathViolation::BadEscape),
            ("/a%2", PathViolation::BadEscape),
            ("/a%00b", PathViolation::BadEscape),
            ("/a%7E", PathViolation::EncodedUnreserved),
            ("/a#frag", PathViolation::BadCharacter),
            ("/a b", PathViolation::BadCharacter),
            ("/caf\u{e9}", PathViolation::BadCharacter),
            ("admin", PathViolation::NotAbsolute),
            ("", PathViolation::NotAbsolute),
        ];
        for (path, want) in cases {
            assert_eq!(check_path(path), Err(want), "{path}");
        }
    }

    #[test]
    fn normal_paths_pass() {
        for path in [
            "/",
            "/public/index.html",
            "/api/v2/orders/",
            "/a/b.c/..d/.e/...",
            "/files/a%20b%2Bc%3F",
            "/api/v1?redirect=/../x//y;z%2e",
            "*",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
    }

    /// RFC 3986 §5.2.4 + §6.2.2.2 + merged slashes, written out plainly: what an upstream that
    /// normalises makes of a path.
    fn normalise(path: &str) -> String {
        let mut decoded = String::new();
        let bytes = path.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let v = u8::from_str_radix(&path[i + 1..i + 3], 16).unwrap();
                if is_unreserved(v) || v == b'/' {
                    decoded.push(v as char);
                } else {
                    decoded.push_str(&path[i..i + 3]);
                }
                i += 3;
            } else {
                decoded.push(bytes[i] as char);
                i += 1;
            }
        }
        let mut out: Vec<&str> = Vec::new();
        for seg in decoded.split('/').skip(1) {
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
        }
        let trailing = decoded.ends_with('/') && !out.is_empty();
        format!("/{}{}", out.join("/"), if trailing { "/" } else { "" })
    }

    proptest! {
        /// Whatever the path, if the check passes then a normalising upstream sees the same
        /// path as the policy.
        #[test]
        fn a_path_that_passes_is_its_own_normal_form(
            segs in proptest::collection::vec(
                prop::sample::select(vec![
                    "a", "admin", ".", "..", "", "%2e", "%2E%2e", "%2f", "%41", "%20", "b%2Bc", "x.y",
                ]),
                0..6,
            ),
            trailing in any::<bool>(),
        ) {
            let mut path = format!("/{}", segs.join("/"));
            if trailing && !path.ends_with('/') {
                path.push('/');
            }
            if check_path(&path).is_ok() {
                prop_assert_eq!(normalise(&path), path);
            }
        }

        #[test]
        fn never_panics(path in "\\PC*") {
            let _ = check_path(&path);
        }
    }

    fn reads(text: &str) -> Reads {
        Expr::compile(&ExprSource::Inline(text.into()))
            .unwrap()
            .reads()
    }

    #[test]
    fn names_read_by_expressions() {
        let r = reads(r#"request.headers["x-client-id"] == "a" && request.useragent != """#);
        assert!(!r.headers.all);
        assert_eq!(
            r.headers
                .names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["user-agent", "x-client-id"]
        );
        assert!(r.query_params.is_empty());
        let r = reads(r#""x-a" in request.headers && has(request.headers.b)"#);
        assert!(r.headers.is_empty(), "presence tests read no value");
        let r = reads(r#"has(request.useragent) && request.useragent.startsWith("legacy-cli/")"#);
        assert_eq!(r.headers.names.iter().collect::<Vec<_>>(), ["user-agent"]);
        assert!(!r.headers.all && r.query_params.is_empty());
        let r = reads(r#"size(request) > 0"#);
        assert!(
            r.headers.all && r.query_params.all,
            "the whole request: everything is read"
        );
        let r = reads(r#"request.headers.exists(k, k.startsWith("x-"))"#);
        assert!(r.headers.all);
        let r = reads(r#"request.query_params["tenant"] == "t""#);
        assert_eq!(r.query_params.names.len(), 1);
        assert!(r.headers.is_empty());
        let r = reads(r#"request.headers[request.query_params["h"]] == "v""#);
        assert!(r.headers.all);
        assert!(r.query_params.reads("h"));
    }

    fn check(config: RequestConfig, expr: &str, request: &RequestView) -> Option<Deny> {
        let expr = Expr::compile(&ExprSource::Inline(expr.into())).unwrap();
        let check = RequestCheck::compile(&config, [&expr]);
        check
            .check(request, &mut MemoryCounters::default())
            .err()
            .map(Refusal::answer)
    }

    #[test]
    fn repeated_headers_read_by_a_policy_are_refused() {
        let key = r#"request.headers["x-client-id"] != """#;
        let twice = RequestView::new("GET", "/", &[("x-client-id", "c9"), ("X-Client-Id", "c9")]);
        let deny = check(RequestConfig::default(), key, &twice).unwrap();
        assert_eq!((deny.status, deny.error), (400, "invalid_request"));
        assert!(deny.reason.contains("x-client-id"), "{}", deny.reason);
        let once = RequestView::new("GET", "/", &[("x-client-id", "c9"), ("accept", "a")]);
        assert_eq!(check(RequestConfig::default(), key, &once), None);
        // A repeated header nobody reads is the upstream's business.
        let other = RequestView::new(
            "GET",
            "/",
            &[("x-client-id", "c9"), ("accept", "a"), ("accept", "b")],
        );
        assert_eq!(check(RequestConfig::default(), key, &other), None);
        // Allowed to repeat by configuration.
        let config = RequestConfig {
            repeatable_headers: vec!["X-Client-Id".into()],
            ..RequestConfig::default()
        };
        assert_eq!(check(config, key, &twice), None);
        // The whole map read: any repeat counts, pseudo-headers aside.
        let all = r#"request.headers.exists(k, k == "z")"#;
        assert!(check(RequestConfig::default(), all, &other).is_some());
        assert_eq!(check(RequestConfig::default(), all, &once), None);
    }

    #[test]
    fn repeated_query_params_read_by_a_policy_are_refused() {
        let expr = r#"request.query_params["tenant"] == "a""#;
        let twice = RequestView::new("GET", "/x?tenant=a&ten%61nt=b", &[]);
        let deny = check(RequestConfig::default(), expr, &twice).unwrap();
        assert!(deny.reason.contains("tenant"), "{}", deny.reason);
        let other = RequestView::new("GET", "/x?tenant=a&page=1&page=2", &[]);
        assert_eq!(check(RequestConfig::default(), expr, &other), None);
    }

    #[test]
    fn paths_are_checked_unless_turned_off() {
        let bad = RequestView::new("GET", "/public/../admin", &[]);
        let mut counters = MemoryCounters::default();
        let check = RequestCheck::compile(&RequestConfig::default(), []);
        let deny = check.check(&bad, &mut counters).unwrap_err().answer();
        assert_eq!(deny.status, 400);
        assert_eq!(
            counters.get("portcullis_requests_rejected_total.reason.dot_segment"),
            1
        );
        let off = RequestConfig {
            path_normalization: PathCheck::Off,
            ..RequestConfig::default()
        };
        assert_eq!(check_off(&off, &bad), None);
    }

    fn check_off(config: &RequestConfig, request: &RequestView) -> Option<Deny> {
        RequestCheck::compile(config, [])
            .check(request, &mut MemoryCounters::default())
            .err()
            .map(Refusal::answer)
    }
}
