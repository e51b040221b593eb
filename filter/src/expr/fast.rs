//! A native evaluator for the common expression shapes: attribute reads, literals, `==`,
//! `!=`, `&&`, `||`, `!`, `in` (list literals, header presence, string-list claims,
//! `claim.split(sep)`), `startsWith`, `endsWith`, `contains`, `has()` on headers and claims.
//!
//! It returns `None` ("not sure") whenever a value is absent or of an unexpected type, and
//! the caller then runs the interpreter, which gives CEL's exact answer (or error). So the
//! fast path can only ever agree with the interpreter; a unit test checks that it does.

use super::activation::Activation;
use crate::attributes::{Attribute, AttributeKind, Source};
use crate::request::AttributeValue;
use cel::common::ast::LiteralValue as L;
use cel::common::ast::{Expr as Ast, IdedExpr};
use regex::Regex;
use std::borrow::Cow;
use std::sync::Arc;

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

pub(super) fn lit(e: &IdedExpr) -> Option<FVal<'static>> {
    match &e.expr {
        Ast::Literal(L::Boolean(b)) => Some(FVal::Bool(*b.inner())),
        Ast::Literal(L::Int(i)) => Some(FVal::Int(*i.inner())),
        Ast::Literal(L::String(s)) => Some(FVal::Str(Cow::Owned(s.inner().to_owned()))),
        _ => None,
    }
}

/// `a.b.c` as segments, root first.
pub(super) fn path(e: &IdedExpr) -> Option<Vec<&str>> {
    super::checker::segments(e)
}

pub(super) fn string_lit(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Ast::Literal(L::String(s)) => Some(s.inner().to_owned()),
        _ => None,
    }
}

/// `request.headers["x"]`-style operand: (root path, key).
pub(super) fn index_of(e: &IdedExpr) -> Option<(Vec<&str>, String)> {
    let Ast::Call(c) = &e.expr else { return None };
    if c.func_name != "_[_]" || c.target.is_some() {
        return None;
    }
    let (Some(target), Some(key)) = (c.args.first(), c.args.get(1)) else {
        return None;
    };
    Some((path(target)?, string_lit(key)?))
}

pub(super) fn attribute(segs: &[&str]) -> Option<Fast> {
    match segs {
        ["request", "headers", name] => Some(Fast::Header((*name).to_owned())),
        ["jwt", "claims", name] => Some(Fast::Claim((*name).to_owned())),
        [root, member] => {
            let a = Attribute::lookup(root, member)?;
            match a.source() {
                _ if a.is_header_string() => Some(Fast::Request(a)),
                // request.time is a timestamp: leave it to the interpreter.
                Source::Host(kind) => (kind != AttributeKind::Timestamp).then_some(Fast::Host(a)),
                Source::Token => (a == Attribute::JwtProvider).then_some(Fast::JwtProvider),
                _ => None,
            }
        }
        _ => None,
    }
}

pub fn compile(e: &IdedExpr, regexes: &[Arc<Regex>]) -> Option<Fast> {
    compile_in(e, None, regexes)
}

/// `var`: the iteration variable of the enclosing `exists`/`all`, if any.
pub(super) fn compile_in(e: &IdedExpr, var: Option<&str>, regexes: &[Arc<Regex>]) -> Option<Fast> {
    if let Some(v) = lit(e) {
        return Some(Fast::Lit(v));
    }
    match &e.expr {
        Ast::Ident(name) if Some(name.as_str()) == var => Some(Fast::Elem),
        Ast::Comprehension(c) => exists_or_all(c, regexes),
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
            let bx = |x: Option<&IdedExpr>| compile_in(x?, var, regexes).map(Box::new);
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
                    compile_in(t, var, regexes).map(Box::new)?,
                    bx(arg(0))?,
                )),
                ("endsWith", Some(t), 1) => Some(Fast::EndsWith(
                    compile_in(t, var, regexes).map(Box::new)?,
                    bx(arg(0))?,
                )),
                ("containsIP", Some(t), 1) => {
                    let Ast::Call(ctor) = &t.expr else {
                        return None;
                    };
                    if ctor.func_name != "cidr" || ctor.target.is_some() {
                        return None;
                    }
                    let net = super::network::parse_cidr(&string_lit(ctor.args.first()?)?).ok()?;
                    let a = arg(0)?;
                    let addr = match &a.expr {
                        Ast::Call(ip) if ip.func_name == "ip" && ip.target.is_none() => {
                            compile_in(ip.args.first()?, var, regexes)?
                        }
                        _ => compile_in(a, var, regexes)?,
                    };
                    Some(Fast::CidrContains(net, Box::new(addr)))
                }
                ("isLoopback", Some(t), 0) => match &t.expr {
                    Ast::Call(ip)
                        if ip.func_name == "ip" && ip.target.is_none() && ip.args.len() == 1 =>
                    {
                        Some(Fast::IsLoopback(Box::new(compile_in(
                            ip.args.first()?,
                            var,
                            regexes,
                        )?)))
                    }
                    _ => None,
                },
                ("contains", Some(t), 1) => Some(Fast::Contains(
                    compile_in(t, var, regexes).map(Box::new)?,
                    bx(arg(0))?,
                )),
                (super::literal_regex::FUNCTION, None, 2) => {
                    let Ast::Ident(name) = &arg(1)?.expr else {
                        return None;
                    };
                    let index = super::literal_regex::variable_index(name)?;
                    let regex = regexes.get(index)?;
                    Some(Fast::Matches(bx(arg(0))?, Arc::clone(regex)))
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
                            Some(Fast::InList(
                                Box::new(compile_in(needle, var, regexes)?),
                                items,
                            ))
                        }
                        Ast::Call(split) if split.func_name == "split" && split.args.len() == 1 => {
                            let target = path(split.target.as_deref()?)?;
                            let sep = string_lit(split.args.first()?)?;
                            match target.as_slice() {
                                ["jwt", "claims", name] => Some(Fast::InClaimSplit(
                                    Box::new(compile_in(needle, var, regexes)?),
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
                                    Box::new(compile_in(needle, var, regexes)?),
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
pub(super) fn exists_or_all(
    c: &cel::common::ast::ComprehensionExpr,
    regexes: &[Arc<Regex>],
) -> Option<Fast> {
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
    let pred = compile_in(pred, Some(c.iter_var.as_str()), regexes)?;
    Some(Fast::Quantifier {
        over,
        pred: Box::new(pred),
        all,
    })
}

pub(super) fn claim<'x>(act: &'x Activation<'_>, name: &str) -> Option<&'x cel::Value> {
    let cel::Value::Map(map) = &act.jwt?.claims else {
        return None;
    };
    map.get(&cel::objects::KeyRef::String(name))
}

pub(super) fn scalar(v: &cel::Value) -> Option<FVal<'_>> {
    match v {
        cel::Value::String(s) => Some(FVal::Str(Cow::Borrowed(s.as_str()))),
        cel::Value::Int(i) => Some(FVal::Int(*i)),
        cel::Value::Bool(b) => Some(FVal::Bool(*b)),
        _ => None,
    }
}

pub(super) fn str_of<'x>(v: &'x FVal<'_>) -> Option<&'x str> {
    match v {
        FVal::Str(s) => Some(s),
        _ => None,
    }
}

/// `exists` (`all == false`) or `all` of `pred` over `items` (`None`: an element the fast
/// path can't read). CEL's quantifiers absorb errors when the answer is decided anyway: any
/// true decides `exists`, any false decides `all`; an element the fast path can't judge
/// leaves the answer to the interpreter otherwise.
pub(super) fn quantify<'x>(
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

pub(super) fn borrowed<'x>(v: &'x FVal<'_>) -> FVal<'x> {
    match v {
        FVal::Str(s) => FVal::Str(Cow::Borrowed(s.as_ref())),
        FVal::Int(i) => FVal::Int(*i),
        FVal::Bool(x) => FVal::Bool(*x),
    }
}

pub(super) fn same_kind(a: &FVal<'_>, b: &FVal<'_>) -> bool {
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
