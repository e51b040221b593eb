//! `matches` with a literal pattern, compiled once at configure time.
//!
//! The `cel` crate compiles the pattern on every call: `groups.exists(g, g.matches('.+'))`
//! cost ~70 µs per request in the harness, most of it building the same regex again. At
//! configure time every `x.matches('lit')` / `matches(x, 'lit')` is checked (an invalid
//! pattern rejects the configuration with its line and column) and rewritten to a call of
//! [`FUNCTION`], which finds the compiled regex by its pattern in a process-wide table. The
//! answers are the interpreter's: the same `regex` crate and the same `is_match`.

use cel::common::ast::{EntryExpr, IdedEntryExpr, LiteralValue};
use cel::common::ast::{Expr as Ast, IdedExpr};
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
pub(super) fn table() -> &'static Mutex<HashMap<String, Arc<Regex>>> {
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

pub(super) fn literal(e: &IdedExpr) -> Option<&str> {
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

pub(super) fn bind_entry(entry: &mut IdedEntryExpr) -> Result<(), (u64, String)> {
    match &mut entry.expr {
        EntryExpr::MapEntry(kv) => {
            bind(&mut kv.key)?;
            bind(&mut kv.value)
        }
        EntryExpr::StructField(f) => bind(&mut f.value),
    }
}

pub(super) fn matches_literal<'b, 'v>(
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
        None => {
            compile(pattern.inner()).map_err(|e| ExecutionError::function_error("matches", e))?
        }
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
