//! The checker: every free identifier, attribute and function of an expression is known.

use super::env::{is_known_function, KNOWN_FUNCTIONS, KNOWN_TYPES};
use crate::attributes::{Attribute, Source, ROOTS};
use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr};
use std::collections::BTreeSet;

pub(super) struct Checker {
    pub(super) bound: Vec<String>,
    pub(super) host: BTreeSet<Attribute>,
    pub(super) uses_jwt: bool,
    pub(super) error: Option<(u64, isize, String)>,
}

/// The node ids of a select chain's segments, root first (see [`segments`]).
pub(super) fn ids(expr: &IdedExpr) -> Vec<u64> {
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
pub(super) fn segments(expr: &IdedExpr) -> Option<Vec<&str>> {
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
    pub(super) fn fail(&mut self, id: u64, message: String) {
        self.fail_at(id, 0, message);
    }

    /// Records the first error, at the node's offset moved by `shift` characters.
    pub(super) fn fail_at(&mut self, id: u64, shift: isize, message: String) {
        if self.error.is_none() {
            self.error = Some((id, shift, message));
        }
    }

    pub(super) fn is_bound(&self, name: &str) -> bool {
        self.bound.iter().any(|b| b == name)
    }

    /// A root used as a whole (`request`, `source[...]`): every attribute under it may be read.
    pub(super) fn whole_root(&mut self, root: &str) {
        if root == "jwt" {
            self.uses_jwt = true;
        }
        self.host
            .extend(Attribute::members_of(root).filter(|a| a.is_host()));
    }

    /// `root.member...`: checks the member and records what it reads.
    pub(super) fn root_member(&mut self, id: u64, shift: isize, root: &str, member: &str) {
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
    pub(super) fn qualified(&mut self, ids: &[u64], segs: &[&str]) {
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

    pub(super) fn walk(&mut self, e: &IdedExpr) {
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
    pub(super) fn type_check_call(
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
    pub(super) fn static_type(&self, e: &IdedExpr) -> Option<&'static str> {
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
