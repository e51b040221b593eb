//! The bindings extension.

use super::macros;
use cel::common::ast::{Expr as Ast, IdedExpr};

/// `cel.bind(name, init, expr)`: `expr` with `name` bound to the value of `init` (evaluated
/// once), as in cel-go's bindings extension. Expanded at parse time into a comprehension
/// over no elements whose accumulator is `name`.
pub(super) fn bind_macro(
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
