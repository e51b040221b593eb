//! An index over guards (`when` expressions), built at configure time, so that a request
//! evaluates only the guards that can be true for it: a policy with thousands of path-scoped
//! rules costs about what a policy with ten does.
//!
//! # What is indexed
//!
//! A guard is *indexable* when the analysis below can name, for it, a set of alternatives
//! over request attributes such that the guard can only be true if one of them holds:
//!
//! * `request.url_path` / `request.path`: `.startsWith("lit")`, `== "lit"`, `in ["lit", ...]`;
//! * `request.host`, `request.method`, `jwt.provider`: `== "lit"`, `in ["lit", ...]`;
//! * `a || b` with both sides indexable (the union), `a && b` with either side indexable
//!   (the more selective side; the other is still evaluated for the candidates).
//!
//! Anything else — `!=`, `!`, other attributes, non-literal operands, a list with a
//! non-string element — is not indexable, and the guard is evaluated for every request, in
//! its place, exactly as without the index.
//!
//! # Why skipping is exact
//!
//! A rule is skipped only when its guard is *definitely false*: every alternative's attribute
//! is present and none matches. An absent attribute (`:path`, `:authority`/`host`,
//! `:method`) makes its atoms evaluation errors, not false, so every rule indexed on that
//! attribute stays a candidate and fails closed as before. The argument for the connectives
//! follows the `cel` crate's evaluator (`objects.rs`): `x && y` is false whenever either
//! side is false, whatever the other side is (error included); `x || y` is false when both
//! sides are false. A guard that is false has no side effect (no counter, no log line), so
//! the evaluation order of the remaining rules and everything they count are unchanged.

use crate::expr::{Activation, Expr};
use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue};
use rustc_hash::FxHashMap;

/// A request attribute the index can look up without evaluating CEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attribute {
    UrlPath,
    Path,
    Host,
    Method,
    Provider,
}

impl Attribute {
    fn of(e: &IdedExpr) -> Option<Attribute> {
        let Ast::Select(select) = &e.expr else {
            return None;
        };
        if select.test {
            return None;
        }
        let Ast::Ident(root) = &select.operand.expr else {
            return None;
        };
        match (root.as_str(), select.field.as_str()) {
            ("request", "url_path") => Some(Attribute::UrlPath),
            ("request", "path") => Some(Attribute::Path),
            ("request", "host") => Some(Attribute::Host),
            ("request", "method") => Some(Attribute::Method),
            ("jwt", "provider") => Some(Attribute::Provider),
            _ => None,
        }
    }

    fn is_path(self) -> bool {
        matches!(self, Attribute::UrlPath | Attribute::Path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

/// One way a guard may be true: `attribute` matches `pattern` (or is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Atom {
    attribute: Attribute,
    pattern: Pattern,
}

impl Atom {
    /// How much the atom narrows the candidates (higher: fewer requests match), to choose
    /// the side of a `&&` to index. A heuristic: correctness does not depend on it.
    fn selectivity(&self) -> usize {
        match (&self.pattern, self.attribute) {
            (Pattern::Exact(_), a) if a.is_path() => 60,
            (Pattern::Prefix(p), _) => 4 + p.len().min(50),
            (Pattern::Exact(_), Attribute::Host) => 9,
            (Pattern::Exact(_), Attribute::Provider) => 3,
            (Pattern::Exact(_), _) => 2,
        }
    }
}

/// The guard can be true only if one of the atoms holds (never empty).
type Alternatives = Vec<Atom>;

fn selectivity(alternatives: &Alternatives) -> usize {
    alternatives
        .iter()
        .map(Atom::selectivity)
        .min()
        .unwrap_or(0)
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Ast::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// `attribute == "lit"` (either way round).
fn equality(attribute: &IdedExpr, literal: &IdedExpr) -> Option<Alternatives> {
    Some(vec![Atom {
        attribute: Attribute::of(attribute)?,
        pattern: Pattern::Exact(string_literal(literal)?.to_owned()),
    }])
}

/// The guard's alternatives, or `None` when it is not indexable.
fn analyse(e: &IdedExpr) -> Option<Alternatives> {
    let Ast::Call(call) = &e.expr else {
        return None;
    };
    match (
        call.func_name.as_str(),
        call.target.as_deref(),
        call.args.as_slice(),
    ) {
        ("_&&_", None, [a, b]) => match (analyse(a), analyse(b)) {
            (Some(x), Some(y)) => Some(if selectivity(&y) > selectivity(&x) {
                y
            } else {
                x
            }),
            (x, y) => x.or(y),
        },
        ("_||_", None, [a, b]) => {
            let mut x = analyse(a)?;
            x.extend(analyse(b)?);
            Some(x)
        }
        ("_==_", None, [a, b]) => equality(a, b).or_else(|| equality(b, a)),
        ("@in", None, [needle, list]) => {
            let attribute = Attribute::of(needle)?;
            let Ast::List(list) = &list.expr else {
                return None;
            };
            if !list.optional_indices.is_empty() || list.elements.is_empty() {
                return None;
            }
            list.elements
                .iter()
                .map(|item| {
                    Some(Atom {
                        attribute,
                        pattern: Pattern::Exact(string_literal(item)?.to_owned()),
                    })
                })
                .collect()
        }
        ("startsWith", Some(target), [prefix]) => {
            let attribute = Attribute::of(target).filter(|a| a.is_path())?;
            Some(vec![Atom {
                attribute,
                pattern: Pattern::Prefix(string_literal(prefix)?.to_owned()),
            }])
        }
        _ => None,
    }
}

/// A byte trie of prefixes; node 0 is the root (the empty prefix).
#[derive(Debug)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Sorted by byte.
    children: Vec<(u8, usize)>,
    /// Rules with exactly this prefix, ascending.
    rules: Vec<usize>,
}

impl Default for PrefixTrie {
    fn default() -> PrefixTrie {
        PrefixTrie {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl TrieNode {
    fn child(&self, byte: u8) -> Option<usize> {
        let at = self
            .children
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()?;
        self.children.get(at).map(|&(_, node)| node)
    }
}

impl PrefixTrie {
    fn insert(&mut self, prefix: &str, rule: usize) {
        let mut at = 0;
        for &byte in prefix.as_bytes() {
            at = match self.nodes.get(at).and_then(|n| n.child(byte)) {
                Some(next) => next,
                None => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    if let Some(node) = self.nodes.get_mut(at) {
                        let slot = node.children.partition_point(|&(b, _)| b < byte);
                        node.children.insert(slot, (byte, next));
                    }
                    next
                }
            };
        }
        if let Some(node) = self.nodes.get_mut(at) {
            node.rules.push(rule);
        }
    }

    /// Every rule whose prefix `value` starts with.
    fn collect(&self, value: &str, out: &mut Vec<usize>) {
        let mut at = 0;
        let mut bytes = value.bytes();
        while let Some(node) = self.nodes.get(at) {
            out.extend_from_slice(&node.rules);
            match bytes.next().and_then(|b| node.child(b)) {
                Some(next) => at = next,
                None => return,
            }
        }
    }
}

/// The rules indexed on one attribute.
#[derive(Debug, Default)]
struct AttributeIndex {
    /// Every rule indexed here, ascending: the candidates when the attribute is absent.
    all: Vec<usize>,
    /// Rules by the exact value they test for, each list ascending.
    exact: FxHashMap<String, Vec<usize>>,
    prefixes: PrefixTrie,
    has_prefixes: bool,
}

impl AttributeIndex {
    fn insert(&mut self, pattern: &Pattern, rule: usize) {
        if self.all.last() != Some(&rule) {
            self.all.push(rule);
        }
        match pattern {
            Pattern::Exact(value) => self.exact.entry(value.clone()).or_default().push(rule),
            Pattern::Prefix(prefix) => {
                self.has_prefixes = true;
                self.prefixes.insert(prefix, rule);
            }
        }
    }

    /// `value` is only read when some rule is indexed on the attribute: header lookups are
    /// linear scans.
    fn collect<'v>(&self, value: impl FnOnce() -> Option<&'v str>, out: &mut Vec<usize>) {
        if self.all.is_empty() {
            return;
        }
        let Some(value) = value() else {
            // Absent: each guard's atom is an evaluation error, which must still be seen.
            out.extend_from_slice(&self.all);
            return;
        };
        if let Some(rules) = self.exact.get(value) {
            out.extend_from_slice(rules);
        }
        if self.has_prefixes {
            self.prefixes.collect(value, out);
        }
    }
}

/// The guards of an ordered list of rules (policy rules, rate limits, JWT requirements).
#[derive(Debug, Default)]
pub(crate) struct GuardIndex {
    rules: usize,
    /// Rules to evaluate for every request: no guard, or one the index does not understand.
    always: Vec<usize>,
    url_path: AttributeIndex,
    path: AttributeIndex,
    host: AttributeIndex,
    method: AttributeIndex,
    provider: AttributeIndex,
}

/// The positions of the rules to evaluate for one request, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Candidates {
    /// Every rule, `0..n`.
    All(usize),
    Listed(Vec<usize>),
}

impl Candidates {
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (all, listed) = match self {
            Candidates::All(n) => (0..*n, [].iter()),
            Candidates::Listed(rules) => (0..0, rules.iter()),
        };
        all.chain(listed.copied())
    }
}

impl GuardIndex {
    /// `guards`: each rule's guard, in rule order (`None`: the rule has none).
    pub(crate) fn build<'e>(guards: impl IntoIterator<Item = Option<&'e Expr>>) -> GuardIndex {
        let mut index = GuardIndex::default();
        for (rule, guard) in guards.into_iter().enumerate() {
            index.rules = rule + 1;
            match guard.and_then(|g| analyse(g.ast())) {
                None => index.always.push(rule),
                Some(alternatives) => {
                    for atom in &alternatives {
                        index
                            .attribute_mut(atom.attribute)
                            .insert(&atom.pattern, rule);
                    }
                }
            }
        }
        index
    }

    fn attribute_mut(&mut self, attribute: Attribute) -> &mut AttributeIndex {
        match attribute {
            Attribute::UrlPath => &mut self.url_path,
            Attribute::Path => &mut self.path,
            Attribute::Host => &mut self.host,
            Attribute::Method => &mut self.method,
            Attribute::Provider => &mut self.provider,
        }
    }

    /// How many rules' guards are indexed (the others are evaluated for every request).
    pub(crate) fn indexed(&self) -> usize {
        self.rules.saturating_sub(self.always.len())
    }

    /// The rules whose guards may be true for this request (or may fail to evaluate), in
    /// rule order. Values are read exactly as `Activation` resolves the attributes.
    pub(crate) fn candidates(&self, activation: &Activation<'_>) -> Candidates {
        if self.indexed() == 0 {
            return Candidates::All(self.rules);
        }
        let request = activation.request;
        let mut out = Vec::with_capacity(self.always.len() + 4);
        out.extend_from_slice(&self.always);
        let path = || request.header(":path");
        self.url_path.collect(
            || path().map(|p| p.split_once('?').map_or(p, |(before, _)| before)),
            &mut out,
        );
        self.path.collect(path, &mut out);
        self.host.collect(
            || {
                request
                    .header(":authority")
                    .or_else(|| request.header("host"))
            },
            &mut out,
        );
        self.method.collect(|| request.header(":method"), &mut out);
        self.provider.collect(
            || Some(activation.jwt.map_or("", |j| j.provider.as_str())),
            &mut out,
        );
        out.sort_unstable();
        out.dedup();
        Candidates::Listed(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{ExprSource, JwtAttributes};
    use crate::request::RequestView;
    use serde_json::json;

    fn expr(text: &str) -> Expr {
        Expr::compile(&ExprSource::Inline(text.into())).unwrap()
    }

    fn alternatives(text: &str) -> Option<Alternatives> {
        analyse(expr(text).ast())
    }

    fn exact(attribute: Attribute, v: &str) -> Atom {
        Atom {
            attribute,
            pattern: Pattern::Exact(v.into()),
        }
    }

    fn prefix(attribute: Attribute, v: &str) -> Atom {
        Atom {
            attribute,
            pattern: Pattern::Prefix(v.into()),
        }
    }

    #[test]
    fn analysis_understands_the_indexable_shapes_only() {
        use Attribute::*;
        assert_eq!(
            alternatives("request.url_path.startsWith('/a/')"),
            Some(vec![prefix(UrlPath, "/a/")])
        );
        assert_eq!(
            alternatives("'/healthz' == request.path"),
            Some(vec![exact(Path, "/healthz")])
        );
        assert_eq!(
            alternatives("request.method in ['GET', 'HEAD']"),
            Some(vec![exact(Method, "GET"), exact(Method, "HEAD")])
        );
        assert_eq!(
            alternatives("request.host == 'a' || jwt.provider == 'p'"),
            Some(vec![exact(Host, "a"), exact(Provider, "p")])
        );
        // `&&`: the more selective side; a non-indexable side does not spoil the other.
        assert_eq!(
            alternatives("request.method == 'GET' && request.url_path.startsWith('/svc-1/')"),
            Some(vec![prefix(UrlPath, "/svc-1/")])
        );
        assert_eq!(
            alternatives("request.headers['x'] == 'y' && request.host == 'h'"),
            Some(vec![exact(Host, "h")])
        );
        for not_indexable in [
            "true",
            "request.method != 'GET'",
            "!(request.method == 'GET')",
            "request.host.startsWith('api.')",
            "request.scheme == 'https'",
            "request.url_path.endsWith('/x')",
            "request.method in []",
            "request.method in ['GET', 1]",
            "request.method == request.host",
            "request.method == 'GET' || request.headers['x'] == 'y'",
            "request.url_path.startsWith(request.host)",
            "[1].exists(request, request.method == 'GET')",
            "request.method == b'GET'",
        ] {
            assert_eq!(alternatives(not_indexable), None, "{not_indexable}");
        }
    }

    fn candidates(
        guards: &[Option<&str>],
        req: &RequestView,
        provider: Option<&str>,
    ) -> Vec<usize> {
        let exprs: Vec<Option<Expr>> = guards.iter().map(|g| g.map(expr)).collect();
        let index = GuardIndex::build(exprs.iter().map(Option::as_ref));
        let jwt = provider.map(|p| JwtAttributes::from_json(p, &json!({}), &json!({})));
        let act = Activation::new(req).with_jwt(jwt.as_ref());
        index.candidates(&act).iter().collect()
    }

    #[test]
    fn candidates_are_the_rules_whose_guards_may_hold_in_rule_order() {
        let guards = [
            Some("request.url_path.startsWith('/a/')"),
            None,
            Some("request.url_path == '/a/b'"),
            Some("request.headers['x'] == 'y'"),
            Some("request.url_path.startsWith('/a/b/c')"),
            Some("request.method == 'POST' || request.url_path.startsWith('/')"),
            Some("jwt.provider == 'corp'"),
            Some("request.path == '/a/b?q=1'"),
            Some("request.host in ['h1', 'h2']"),
        ];
        let get = |path: &str| RequestView::new("GET", path, &[]);
        assert_eq!(candidates(&guards, &get("/a/b"), None), [0, 1, 2, 3, 5]);
        assert_eq!(
            candidates(&guards, &get("/a/b?q=1"), None),
            [0, 1, 2, 3, 5, 7]
        );
        assert_eq!(
            candidates(&guards, &get("/a/b/c/d"), Some("corp")),
            [0, 1, 3, 4, 5, 6]
        );
        assert_eq!(candidates(&guards, &get("x"), None), [1, 3]);
        assert_eq!(
            candidates(&guards, &RequestView::new("POST", "x", &[]), None),
            [1, 3, 5]
        );
        let h2 = RequestView {
            headers: [(":method", "GET"), (":path", "x"), (":authority", "h2")]
                .into_iter()
                .collect(),
            attributes: Vec::new(),
        };
        assert_eq!(candidates(&guards, &h2, None), [1, 3, 8]);
        // `host` stands in for a missing `:authority`, as in the evaluator.
        let host = RequestView {
            headers: [(":method", "GET"), (":path", "x"), ("host", "h1")]
                .into_iter()
                .collect(),
            attributes: Vec::new(),
        };
        assert_eq!(candidates(&guards, &host, None), [1, 3, 8]);
    }

    #[test]
    fn an_absent_attribute_keeps_every_rule_indexed_on_it() {
        let guards = [
            Some("request.url_path.startsWith('/a/')"),
            Some("request.host == 'h'"),
            Some("request.method == 'GET'"),
            Some("request.path == '/p'"),
        ];
        let no_path = RequestView {
            headers: [(":method", "POST")].into_iter().collect(),
            attributes: Vec::new(),
        };
        assert_eq!(candidates(&guards, &no_path, None), [0, 1, 3]);
        let nothing = RequestView::default();
        assert_eq!(candidates(&guards, &nothing, None), [0, 1, 2, 3]);
    }

    #[test]
    fn nothing_indexable_means_every_rule_without_a_list() {
        let exprs = [expr("request.scheme == 'https'")];
        let index = GuardIndex::build([Some(&exprs[0]), None]);
        let req = RequestView::new("GET", "/", &[]);
        assert_eq!(index.candidates(&Activation::new(&req)), Candidates::All(2));
        assert_eq!(index.indexed(), 0);
    }
}

/// The index as the rate limiter and the authenticator use it: only limits and requirements
/// whose guards are false are skipped, in order, errors counted as before.
#[cfg(test)]
mod consumers {
    use crate::expr::Activation;
    use crate::jwt::{Authenticator, JwtConfig};
    use crate::ports::memory::{MemoryCounters, MemoryStore};
    use crate::ratelimit::{LocalTokens, RateLimitConfig, RateLimiter, RateVerdict};
    use crate::request::RequestView;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn request(headers: &[(&str, &str)]) -> RequestView {
        RequestView {
            headers: headers.iter().copied().collect(),
            attributes: Vec::new(),
        }
    }

    #[test]
    fn requirements_first_match_wins_among_the_candidates() {
        let mut requirements = vec![
            json!({"name": "a", "when": "request.url_path.startsWith('/a/')", "require": {"none": {}}}),
            json!({"name": "x", "when": "request.headers['x'] == 'y'", "require": {"allow_missing": {}}}),
            json!({"name": "ab", "when": "request.url_path == '/a/b'", "require": {"none": {}}}),
        ];
        requirements.extend((0..200).map(|i| {
            json!({"name": format!("svc-{i}"), "when": format!("request.url_path.startsWith('/svc-{i}/')"), "require": {"none": {}}})
        }));
        let config: JwtConfig =
            serde_json::from_value(json!({"requirements": requirements})).unwrap();
        let authenticator = Authenticator::compile(&config).unwrap();
        let chosen = |req: &RequestView| {
            let mut counters = MemoryCounters::default();
            let (_, rule) = authenticator.requirement_for(&Activation::new(req), &mut counters);
            (
                rule.map(str::to_owned),
                counters.get("portcullis_jwt_requirement_errors_total"),
            )
        };
        let get = |path| request(&[(":method", "GET"), (":path", path), ("x", "z")]);
        assert_eq!(chosen(&get("/a/b")), (Some("a".into()), 0));
        assert_eq!(chosen(&get("/svc-150/q")), (Some("svc-150".into()), 0));
        assert_eq!(chosen(&get("/svc-1500/q")), (None, 0));
        // `x` absent: its guard fails (counted) and the next candidate decides.
        let no_x = request(&[(":method", "GET"), (":path", "/svc-7/")]);
        assert_eq!(chosen(&no_x), (Some("svc-7".into()), 1));
        let y = request(&[(":method", "GET"), (":path", "/svc-7/"), ("x", "y")]);
        assert_eq!(chosen(&y), (Some("x".into()), 0));
        // No `:path`: every path guard fails and is counted, as without the index.
        assert_eq!(chosen(&request(&[(":method", "GET")])), (None, 203));
    }

    #[test]
    fn limits_apply_only_where_their_guards_may_hold() {
        let mut limits: Vec<_> = (0..100)
            .map(|i| {
                json!({"name": format!("svc-{i}"), "when": format!("request.url_path.startsWith('/svc-{i}/')"),
                       "key": "request.headers['k']", "requests": 1, "period_s": 3600})
            })
            .collect();
        limits.push(json!({"name": "all", "key": "request.headers['k']", "requests": 100, "period_s": 3600}));
        let config: RateLimitConfig = serde_json::from_value(json!({"limits": limits})).unwrap();
        let limiter = RateLimiter::compile(&config).unwrap();
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        let check = |req: &RequestView, counters: &mut MemoryCounters| {
            let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            limiter.check(
                &Activation::new(req),
                &store,
                &mut LocalTokens::default(),
                now,
                counters,
            )
        };
        let svc = |path| request(&[(":method", "GET"), (":path", path), ("k", "a")]);
        assert!(matches!(
            check(&svc("/svc-42/x"), &mut counters),
            RateVerdict::Admit { .. }
        ));
        assert!(matches!(
            check(&svc("/svc-42/x"), &mut counters),
            RateVerdict::Limited(_)
        ));
        assert!(matches!(
            check(&svc("/svc-43/x"), &mut counters),
            RateVerdict::Admit { .. }
        ));
        assert!(matches!(
            check(&svc("/other"), &mut counters),
            RateVerdict::Admit { .. }
        ));
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.svc-42.result.admitted"),
            1
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.svc-42.result.limited"),
            1
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.svc-43.result.admitted"),
            1
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.svc-44.result.admitted"),
            0
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.all.result.admitted"),
            3
        );
        // No `:path`: every guarded limit applies (fail closed) and counts its error.
        let mut counters = MemoryCounters::default();
        let no_path = request(&[(":method", "GET"), ("k", "b")]);
        let verdict = check(&no_path, &mut counters);
        assert!(matches!(verdict, RateVerdict::Admit { .. }), "{verdict:?}");
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.svc-0.result.error"),
            1
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.svc-99.result.error"),
            1
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.svc-99.result.admitted"),
            1
        );
    }
}

/// Random guards and requests: a rule left out of the candidates always has a guard that
/// evaluates to `false` (never true, never an error).
#[cfg(test)]
pub(crate) mod strategies {
    use crate::expr::JwtAttributes;
    use crate::request::RequestView;
    use proptest::prelude::*;
    use serde_json::json;

    /// Guards the index understands, guards it does not, and guards that fail to evaluate
    /// on some requests (absent header, absent claim, absent `:path`).
    pub(crate) fn guard() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec![
            "request.url_path.startsWith('/a')",
            "request.url_path.startsWith('/a/')",
            "request.url_path.startsWith('/')",
            "request.url_path.startsWith('')",
            "request.url_path.startsWith('/b/c')",
            "request.url_path == '/a'",
            "request.url_path == '/a/b'",
            "request.url_path in ['/b/c', '/']",
            "request.path == '/a?x=1'",
            "request.path.startsWith('/a?')",
            "request.host == 'h1'",
            "request.host in ['h1', 'h2']",
            "request.method == 'GET'",
            "'POST' == request.method",
            "request.method in ['POST', 'PUT']",
            "jwt.provider == 'corp'",
            "jwt.provider == ''",
            "request.method != 'GET'",
            "request.headers['x'] == 'y'",
            "'x' in request.headers",
            "jwt.claims.tenant == 'acme'",
            "request.url_path.endsWith('b')",
            "request.scheme == 'http'",
            "true",
            "false",
        ])
        .prop_map(str::to_owned);
        leaf.prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) || ({b})")),
                inner.prop_map(|a| format!("!({a})")),
            ]
        })
    }

    /// A request with each of `:path`, `:authority`/`host` and `:method` possibly absent,
    /// and maybe a token.
    pub(crate) fn request() -> impl Strategy<Value = (RequestView, Option<JwtAttributes>)> {
        let method = prop::option::weighted(
            0.9,
            prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
        );
        let path = prop::option::weighted(
            0.85,
            prop::sample::select(vec![
                "/", "/a", "/a/", "/a/b", "/a/b/c", "/a?x=1", "/a/b?x=1", "/b/c", "/bc", "",
            ]),
        );
        let host = prop::sample::select(vec![
            None,
            Some((":authority", "h1")),
            Some((":authority", "h2")),
            Some((":authority", "h3")),
            Some(("host", "h1")),
        ]);
        let x = prop::option::of(prop::sample::select(vec!["y", "z"]));
        let token = prop::sample::select(vec![None, Some(("corp", true)), Some(("other", false))]);
        (method, path, host, x, token).prop_map(|(method, path, host, x, token)| {
            let mut headers = Vec::new();
            headers.extend(method.map(|m| (":method", m)));
            headers.extend(path.map(|p| (":path", p)));
            headers.extend(host);
            headers.push((":scheme", "http"));
            headers.extend(x.map(|v| ("x", v)));
            let request = RequestView {
                headers: headers.into_iter().collect(),
                attributes: Vec::new(),
            };
            let jwt = token.map(|(provider, tenant)| {
                let claims = if tenant {
                    json!({"sub": "alice", "tenant": "acme"})
                } else {
                    json!({"sub": "bob"})
                };
                JwtAttributes::from_json(provider, &json!({"alg": "ES256"}), &claims)
            });
            (request, jwt)
        })
    }
}

#[cfg(test)]
mod proptests {
    use super::strategies::{guard, request};
    use super::*;
    use crate::expr::ExprSource;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_rule_left_out_has_a_false_guard(
            guards in prop::collection::vec(prop::option::weighted(0.85, guard()), 1..10),
            requests in prop::collection::vec(request(), 1..8),
        ) {
            let exprs: Vec<Option<Expr>> = guards
                .iter()
                .map(|g| g.as_ref().map(|g| Expr::compile(&ExprSource::Inline(g.clone())).unwrap()))
                .collect();
            let index = GuardIndex::build(exprs.iter().map(Option::as_ref));
            for (req, jwt) in &requests {
                let act = Activation::new(req).with_jwt(jwt.as_ref());
                let candidates: Vec<usize> = index.candidates(&act).iter().collect();
                prop_assert!(candidates.windows(2).all(|w| w[0] < w[1]), "{candidates:?}");
                for (i, e) in exprs.iter().enumerate() {
                    if candidates.contains(&i) {
                        continue;
                    }
                    let e = e.as_ref().unwrap();
                    prop_assert_eq!(e.eval_bool(&act), Ok(false), "{:?} {:?}", guards[i], req);
                    prop_assert_eq!(e.eval_bool_interpreted(&act), Ok(false));
                }
            }
        }
    }
}
