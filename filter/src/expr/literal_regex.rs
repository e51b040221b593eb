//! `matches` with a literal pattern, compiled once at configure time.
//!
//! The `cel` crate compiles the pattern on every call: `groups.exists(g, g.matches('.+'))`
//! cost most of a request's evaluation time, building the same regex again (history:
//! docs/benchmarks.md). At
//! configure time every `x.matches('lit')` / `matches(x, 'lit')` is checked (an invalid
//! pattern rejects the configuration with its line and column) and rewritten to a call of
//! [`FUNCTION`] whose second argument is a variable no user can name ([`VARIABLE`] and an
//! index). The compiled expression holds the regexes and resolves those variables to them
//! ([`CompiledRegex`]), so no table outside the expression is kept. The answers are the
//! interpreter's: the same `regex` crate and the same `is_match`.

use cel::common::ast::{EntryExpr, IdedEntryExpr, LiteralValue};
use cel::common::ast::{Expr as Ast, IdedExpr};
use cel::common::types::{CelBool, CelString, Type, STRING_TYPE};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::ExecutionError;
use regex::Regex;
use std::any::Any;
use std::sync::Arc;

/// Not a name users can write: the checker only admits known functions, and this
/// rewrite runs after it.
pub const FUNCTION: &str = "__portcullis_matches_literal";

/// The prefix of the variables that stand for an expression's compiled regexes (`@` cannot
/// start an identifier in CEL text).
pub const VARIABLE: &str = "@portcullis_regex_";

pub static REGEX_TYPE: Type = Type::new_unspecified_type("portcullis.regex");

/// A regex compiled at configure time, as an interpreter value.
#[derive(Debug, Clone)]
pub struct CompiledRegex(pub Arc<Regex>);

impl Val for CompiledRegex {
    fn get_type(&self) -> &Type {
        &REGEX_TYPE
    }
    fn cel_type() -> &'static Type {
        &REGEX_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other
            .downcast_ref::<CompiledRegex>()
            .is_some_and(|o| Arc::ptr_eq(&o.0, &self.0))
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for CompiledRegex {}

/// The index of a regex variable's name.
pub fn variable_index(name: &str) -> Option<usize> {
    name.strip_prefix(VARIABLE)?.parse().ok()
}

fn compile(pattern: &str) -> Result<Regex, String> {
    cel::re2::regex(pattern).map_err(|e| format!("invalid regex in matches(): {e}"))
}

pub(super) fn literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Ast::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// Rewrites every literal-pattern `matches` in `e` (recursively), compiling its pattern into
/// `regexes`; the error is the id of the offending pattern and the message.
pub fn bind(
    e: &mut IdedExpr,
    regexes: &mut Vec<(String, Arc<Regex>)>,
) -> Result<(), (u64, String)> {
    match &mut e.expr {
        Ast::Call(call) => {
            if let Some(target) = call.target.as_deref_mut() {
                bind(target, regexes)?;
            }
            for arg in &mut call.args {
                bind(arg, regexes)?;
            }
            if call.func_name != "matches" {
                return Ok(());
            }
            // Only a literal pattern is bound; anything else is left as it was, for the
            // interpreter's own `matches`.
            let at = match (call.target.is_some(), call.args.len()) {
                (true, 1) => 0,
                (false, 2) => 1,
                _ => return Ok(()),
            };
            let Some(pattern) = call.args.get_mut(at) else {
                return Ok(());
            };
            let Some(text) = literal(pattern).map(str::to_owned) else {
                return Ok(());
            };
            let index = match regexes.iter().position(|(p, _)| *p == text) {
                Some(index) => index,
                None => {
                    let regex = compile(&text).map_err(|message| (pattern.id, message))?;
                    regexes.push((text, Arc::new(regex)));
                    regexes.len() - 1
                }
            };
            pattern.expr = Ast::Ident(format!("{VARIABLE}{index}"));
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
                bind(part, regexes)?;
            }
            Ok(())
        }
        Ast::Select(s) => bind(&mut s.operand, regexes),
        Ast::List(l) => l.elements.iter_mut().try_for_each(|e| bind(e, regexes)),
        Ast::Map(m) => m
            .entries
            .iter_mut()
            .try_for_each(|e| bind_entry(e, regexes)),
        Ast::Struct(st) => st
            .entries
            .iter_mut()
            .try_for_each(|e| bind_entry(e, regexes)),
        Ast::Unspecified | Ast::Ident(_) | Ast::Literal(_) => Ok(()),
    }
}

pub(super) fn bind_entry(
    entry: &mut IdedEntryExpr,
    regexes: &mut Vec<(String, Arc<Regex>)>,
) -> Result<(), (u64, String)> {
    match &mut entry.expr {
        EntryExpr::MapEntry(kv) => {
            bind(&mut kv.key, regexes)?;
            bind(&mut kv.value, regexes)
        }
        EntryExpr::StructField(f) => bind(&mut f.value, regexes),
    }
}

pub(super) fn matches_literal<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let text = args.first().and_then(|a| a.downcast_ref::<CelString>());
    let regex = args.get(1).and_then(|a| a.downcast_ref::<CompiledRegex>());
    let (Some(text), Some(regex)) = (text, regex) else {
        let types = args
            .iter()
            .map(|a| a.get_type().name().to_owned())
            .collect();
        return Err(ExecutionError::no_such_overload("matches", types));
    };
    Ok(CowVal::owned(CelBool::from(regex.0.is_match(text.inner()))))
}

pub fn extension(env: &mut cel::Env) -> Result<(), cel::DeclarationError> {
    env.add_type(REGEX_TYPE.to_owned())?;
    env.add_overload(
        FUNCTION,
        FUNCTION,
        vec![STRING_TYPE, REGEX_TYPE.to_owned()],
        matches_literal,
    )
}
