//! Parse-time rewrites for what the `cel` crate's parser reads but its interpreter doesn't
//! run, and the hidden functions they call:
//!
//! * two-variable comprehensions (cel-go's `ext.TwoVarComprehensions`): `all`, `exists`,
//!   `existsOne`, `transformList`, `transformMap`, `transformMapEntry` with an index/key and
//!   a value variable. The crate's AST has a second iteration variable, but its interpreter
//!   ignores it, so each is rewritten into a one-variable comprehension over `@pairs(range)`
//!   (a list of `[index or key, value]`), with the two variables bound from the pair;
//! * `cel.block([slot, ...], result)` with `cel.index(n)`, `cel.iterVar(n, m)` and
//!   `cel.accuVar(n, m)` (cel-go's optimizer output), as nested bindings;
//! * `duration.getMilliseconds()`, which the crate answers with the total milliseconds.
//!
//! Everything is an expansion of the expressions that use it: a policy that doesn't use
//! these pays nothing per request.

use cel::common::ast::{
    operators, CallExpr, ComprehensionExpr, Expr as Ast, IdedExpr, ListExpr, LiteralValue, MapExpr,
};
use cel::common::types::{
    CelDuration, CelInt, CelList, CelMap, CelMapKey, CelTimestamp, Kind, DURATION_TYPE, DYN_TYPE,
    LIST_TYPE, MAP_TYPE, TIMESTAMP_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::parser::{Macro, MacroExprHelper};
use cel::{Env, ExecutionError, ParseError};
use std::collections::HashMap;

type Expansion = Result<Option<IdedExpr>, ParseError>;
type R<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

/// The accumulator of the comprehensions built here; like the crate's own macros' `@result`,
/// it can't be written in CEL source, so user expressions can't observe or shadow it.
const ACCU: &str = "@result";
/// The iteration variable over `@pairs(...)`; can't be written in CEL source either.
const PAIR: &str = "@pair";

pub fn add(env: &mut Env) -> Result<(), cel::DeclarationError> {
    for kind in [TwoVar::All, TwoVar::Exists, TwoVar::ExistsOne] {
        env.add_macro(Macro::receiver(kind.name(), 3, move |h, t, a| {
            two_var(h, t, a, kind)
        }))?;
    }
    for kind in [
        TwoVar::TransformList,
        TwoVar::TransformMap,
        TwoVar::TransformMapEntry,
    ] {
        for arity in [3, 4] {
            env.add_macro(Macro::receiver(kind.name(), arity, move |h, t, a| {
                two_var(h, t, a, kind)
            }))?;
        }
    }
    env.add_macro(Macro::receiver("block", 2, block))?;
    env.add_macro(Macro::receiver("index", 1, |h, t, a| {
        block_variable(h, t, a, "index")
    }))?;
    env.add_macro(Macro::receiver("iterVar", 2, |h, t, a| {
        block_variable(h, t, a, "iterVar")
    }))?;
    env.add_macro(Macro::receiver("accuVar", 2, |h, t, a| {
        block_variable(h, t, a, "accuVar")
    }))?;
    env.add_macro(Macro::receiver("getMilliseconds", 0, |h, t, _| {
        get_milliseconds_macro(h, t)
    }))?;

    env.add_overload(PAIRS, "pairs_list", vec![LIST_TYPE], pairs)?;
    env.add_overload(PAIRS, "pairs_map", vec![MAP_TYPE], pairs)?;
    env.add_overload(
        MAP_INSERT,
        "map_insert_key_value",
        vec![MAP_TYPE, DYN_TYPE, DYN_TYPE],
        map_insert,
    )?;
    env.add_overload(
        MAP_INSERT,
        "map_insert_map",
        vec![MAP_TYPE, MAP_TYPE],
        map_insert,
    )?;
    env.add_overload(
        GET_MILLISECONDS,
        "duration_milliseconds_component",
        vec![DURATION_TYPE],
        milliseconds,
    )?;
    env.add_overload(
        GET_MILLISECONDS,
        "timestamp_milliseconds_component",
        vec![TIMESTAMP_TYPE],
        milliseconds,
    )?;
    Ok(())
}

// Hidden functions: their names start with `@`, so no CEL source can call them, and the
// checker treats them as operators.
const PAIRS: &str = "@pairs";
const MAP_INSERT: &str = "@mapInsert";
const GET_MILLISECONDS: &str = "@getMilliseconds";

fn ident(h: &mut MacroExprHelper<'_>, name: &str) -> IdedExpr {
    h.next_expr(Ast::Ident(name.to_owned()))
}

fn int(h: &mut MacroExprHelper<'_>, i: i64) -> IdedExpr {
    h.next_expr(Ast::Literal(LiteralValue::Int(i.into())))
}

fn boolean(h: &mut MacroExprHelper<'_>, b: bool) -> IdedExpr {
    h.next_expr(Ast::Literal(LiteralValue::Boolean(b.into())))
}

fn call(h: &mut MacroExprHelper<'_>, func: &str, args: Vec<IdedExpr>) -> IdedExpr {
    h.next_expr(Ast::Call(CallExpr {
        func_name: func.to_owned(),
        target: None,
        args,
    }))
}

/// `expr` with `name` bound to the value of `init`: a comprehension over no elements whose
/// accumulator is `name` (how `cel.bind` expands too).
pub fn bind(h: &mut MacroExprHelper<'_>, name: &str, init: IdedExpr, expr: IdedExpr) -> IdedExpr {
    let iter_range = h.next_expr(Ast::List(ListExpr::new(Vec::new())));
    let loop_cond = boolean(h, false);
    let loop_step = ident(h, name);
    h.next_expr(Ast::Comprehension(Box::new(ComprehensionExpr {
        iter_range,
        iter_var: "#unused".to_owned(),
        iter_var2: None,
        accu_var: name.to_owned(),
        accu_init: init,
        loop_cond,
        loop_step,
        result: expr,
    })))
}

fn is_cel(target: &Option<IdedExpr>) -> bool {
    matches!(target.as_ref().map(|t| &t.expr), Some(Ast::Ident(n)) if n == "cel")
}

// ---------------------------------------------------------------------------------------
// Two-variable comprehensions.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum TwoVar {
    All,
    Exists,
    ExistsOne,
    TransformList,
    TransformMap,
    TransformMapEntry,
}

impl TwoVar {
    fn name(self) -> &'static str {
        match self {
            TwoVar::All => "all",
            TwoVar::Exists => "exists",
            TwoVar::ExistsOne => "existsOne",
            TwoVar::TransformList => "transformList",
            TwoVar::TransformMap => "transformMap",
            TwoVar::TransformMapEntry => "transformMapEntry",
        }
    }
}

fn two_var(
    h: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
    kind: TwoVar,
) -> Expansion {
    let name_of = |e: Option<&IdedExpr>| match e.map(|e| &e.expr) {
        Some(Ast::Ident(n)) => Some(n.clone()),
        _ => None,
    };
    let (Some(first), Some(second)) = (name_of(args.first()), name_of(args.get(1))) else {
        let id = args
            .iter()
            .find(|a| !matches!(a.expr, Ast::Ident(_)))
            .map_or(first_id(args), |a| a.id);
        return Err(h.new_error(
            id,
            format!("{}(): the variables must be simple names", kind.name()),
        ));
    };
    if first == second {
        return Err(h.new_error(
            args.get(1).map_or(0, |a| a.id),
            format!("{}(): duplicate variable name '{first}'", kind.name()),
        ));
    }
    let Some(range) = target.take() else {
        return Ok(None);
    };
    let mut rest: Vec<IdedExpr> = args.drain(..).skip(2).collect();
    let (filter, expr) = match (rest.pop(), rest.pop()) {
        (Some(expr), filter) => (filter, expr),
        (None, _) => return Err(h.new_error(range.id, "missing argument")),
    };

    // `e` with both variables bound from the current pair.
    let with_vars = |h: &mut MacroExprHelper<'_>, e: IdedExpr| {
        let pair = ident(h, PAIR);
        let zero = int(h, 0);
        let key = call(h, operators::INDEX, vec![pair, zero]);
        let pair = ident(h, PAIR);
        let one = int(h, 1);
        let value = call(h, operators::INDEX, vec![pair, one]);
        let inner = bind(h, &second, value, e);
        bind(h, &first, key, inner)
    };

    let iter_range = call(h, PAIRS, vec![range]);
    let (accu_init, loop_cond, loop_step, result) = match kind {
        // The step stays `@result && p` / `@result || p`: the interpreter recognises that
        // shape to let a later `false` / `true` absorb an earlier error, as the spec says.
        TwoVar::All | TwoVar::Exists => {
            let all = kind == TwoVar::All;
            let init = boolean(h, all);
            let accu = ident(h, ACCU);
            let cond_arg = if all {
                accu
            } else {
                call(h, operators::LOGICAL_NOT, vec![accu])
            };
            let cond = call(h, operators::NOT_STRICTLY_FALSE, vec![cond_arg]);
            let accu = ident(h, ACCU);
            let pred = with_vars(h, expr);
            let step = call(
                h,
                if all {
                    operators::LOGICAL_AND
                } else {
                    operators::LOGICAL_OR
                },
                vec![accu, pred],
            );
            (init, cond, step, ident(h, ACCU))
        }
        TwoVar::ExistsOne => {
            let init = int(h, 0);
            let cond = boolean(h, true);
            let accu = ident(h, ACCU);
            let one = int(h, 1);
            let plus = call(h, operators::ADD, vec![accu, one]);
            let accu = ident(h, ACCU);
            let step = call(h, operators::CONDITIONAL, vec![expr, plus, accu]);
            let step = with_vars(h, step);
            let accu = ident(h, ACCU);
            let one = int(h, 1);
            let result = call(h, operators::EQUALS, vec![accu, one]);
            (init, cond, step, result)
        }
        // `@result + [e]`, guarded by the filter, is the shape the interpreter appends in
        // place: the variables are bound in the filter and the element separately.
        TwoVar::TransformList => {
            let init = h.next_expr(Ast::List(ListExpr::new(Vec::new())));
            let cond = boolean(h, true);
            let accu = ident(h, ACCU);
            let element = with_vars(h, expr);
            let element = h.next_expr(Ast::List(ListExpr::new(vec![element])));
            let mut step = call(h, operators::ADD, vec![accu, element]);
            if let Some(filter) = filter {
                let filter = with_vars(h, filter);
                let accu = ident(h, ACCU);
                step = call(h, operators::CONDITIONAL, vec![filter, step, accu]);
            }
            (init, cond, step, ident(h, ACCU))
        }
        TwoVar::TransformMap | TwoVar::TransformMapEntry => {
            let init = h.next_expr(Ast::Map(MapExpr {
                entries: Vec::new(),
            }));
            let cond = boolean(h, true);
            let accu = ident(h, ACCU);
            let insert_args = if kind == TwoVar::TransformMap {
                let key = ident(h, &first);
                vec![accu, key, expr]
            } else {
                vec![accu, expr]
            };
            let mut step = call(h, MAP_INSERT, insert_args);
            if let Some(filter) = filter {
                let accu = ident(h, ACCU);
                step = call(h, operators::CONDITIONAL, vec![filter, step, accu]);
            }
            let step = with_vars(h, step);
            (init, cond, step, ident(h, ACCU))
        }
    };
    Ok(Some(h.next_expr(Ast::Comprehension(Box::new(
        ComprehensionExpr {
            iter_range,
            iter_var: PAIR.to_owned(),
            iter_var2: None,
            accu_var: ACCU.to_owned(),
            accu_init,
            loop_cond,
            loop_step,
            result,
        },
    )))))
}

fn first_id(args: &[IdedExpr]) -> u64 {
    args.first().map_or(0, |a| a.id)
}

fn pairs<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let range = args
        .first()
        .ok_or_else(ExecutionError::missing_argument_or_target)?;
    let not_iterable = || ExecutionError::UnexpectedType {
        got: range.get_type().name().to_owned(),
        want: "list or map".to_owned(),
    };
    let iterable = range.as_iterable().ok_or_else(not_iterable)?;
    let mut out: Vec<Box<dyn Val + 'v>> = Vec::new();
    let mut items = iterable.iter();
    match range.get_type().kind() {
        Kind::List => {
            let mut i: i64 = 0;
            while let Some(item) = items.next() {
                let pair: Vec<Box<dyn Val + 'v>> =
                    vec![Box::new(CelInt::from(i)), item.clone_as_boxed()];
                out.push(Box::new(CelList::from(pair)));
                i = i.saturating_add(1);
            }
        }
        Kind::Map => {
            let indexer = range.as_indexer().ok_or_else(not_iterable)?;
            while let Some(key) = items.next() {
                let value = indexer.get(key)?.into_owned();
                let pair: Vec<Box<dyn Val + 'v>> = vec![key.clone_as_boxed(), value];
                out.push(Box::new(CelList::from(pair)));
            }
        }
        _ => return Err(not_iterable()),
    }
    Ok(CowVal::owned(CelList::from(out)))
}

/// `@mapInsert(map, key, value)` and `@mapInsert(map, entries)`: the map with the new
/// entries; a key already there is an error (cel-go: "insert failed: key already exists").
fn map_insert<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let mut args = args.into_iter();
    let map = args
        .next()
        .ok_or_else(ExecutionError::missing_argument_or_target)?;
    let mut entries: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> = match map.downcast_ref::<CelMap>()
    {
        Some(m) => m
            .inner()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone_as_boxed()))
            .collect(),
        None => {
            return Err(ExecutionError::function_error(
                "transformMap",
                "expected a map",
            ))
        }
    };
    let mut insert = |key: CelMapKey<'v>, value: Box<dyn Val + 'v>| {
        if entries.contains_key(&key) {
            return Err(ExecutionError::function_error(
                "transformMap",
                "insert failed: key already exists",
            ));
        }
        entries.insert(key, value);
        Ok(())
    };
    match (args.next(), args.next()) {
        (Some(key), Some(value)) => {
            let key = CelMapKey::try_from(key)?;
            insert(key, value.into_owned())?;
        }
        (Some(more), None) => {
            let Some(more) = more.downcast_ref::<CelMap>() else {
                return Err(ExecutionError::function_error(
                    "transformMapEntry",
                    "expected a map",
                ));
            };
            for (k, v) in more.inner().iter() {
                insert(k.clone(), v.clone_as_boxed())?;
            }
        }
        _ => return Err(ExecutionError::missing_argument_or_target()),
    }
    Ok(CowVal::owned(CelMap::from(entries)))
}

// ---------------------------------------------------------------------------------------
// cel.block
// ---------------------------------------------------------------------------------------

/// The variable that `cel.index(n)` (`iterVar`, `accuVar`) stands for: named as written, so
/// an error about it (e.g. `cel.index(3)` outside any block) reads as the source does. No CEL
/// identifier can contain `(`, so these never collide with a user's variables.
fn block_name(kind: &str, indices: &[i64]) -> String {
    let indices: Vec<String> = indices.iter().map(i64::to_string).collect();
    format!("cel.{kind}({})", indices.join(", "))
}

/// `cel.index(n)`, `cel.iterVar(n, m)`, `cel.accuVar(n, m)`: the variable they name.
fn block_variable(
    h: &mut MacroExprHelper<'_>,
    target: &Option<IdedExpr>,
    args: &[IdedExpr],
    kind: &str,
) -> Expansion {
    if !is_cel(target) {
        return Ok(None);
    }
    let mut indices = Vec::with_capacity(args.len());
    for a in args.iter() {
        match &a.expr {
            Ast::Literal(LiteralValue::Int(i)) if *i.inner() >= 0 => indices.push(*i.inner()),
            _ => {
                return Err(h.new_error(
                    a.id,
                    format!("cel.{kind}() takes non-negative int literals"),
                ))
            }
        }
    }
    Ok(Some(ident(h, &block_name(kind, &indices))))
}

/// `cel.block([e0, e1, ...], result)`: `result` with `cel.index(i)` bound to the value of
/// `ei`, each slot seeing the ones before it. Unlike cel-go, which evaluates a slot when it is
/// first used, every slot is evaluated, in order, before `result`: a slot that fails fails
/// the expression even if nothing uses it.
fn block(
    h: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Expansion {
    if !is_cel(target) {
        return Ok(None);
    }
    let slots_are_list = matches!(
        args.first().map(|a| &a.expr),
        Some(Ast::List(l)) if l.optional_indices.is_empty()
    );
    if !slots_are_list {
        return Err(h.new_error(
            first_id(args),
            "cel.block() takes a list literal of expressions",
        ));
    }
    let (Some(mut result), Some(slots)) = (args.pop(), args.pop()) else {
        return Err(h.new_error(0, "cel.block() takes two arguments"));
    };
    let Ast::List(slots) = slots.expr else {
        return Err(h.new_error(slots.id, "cel.block() takes a list literal"));
    };
    for (i, slot) in slots.elements.into_iter().enumerate().rev() {
        let name = block_name("index", &[i64::try_from(i).unwrap_or(i64::MAX)]);
        result = bind(h, &name, slot, result);
    }
    Ok(Some(result))
}

// ---------------------------------------------------------------------------------------
// getMilliseconds
// ---------------------------------------------------------------------------------------

/// `x.getMilliseconds()` as `@getMilliseconds(x)`: the crate registers a duration's as the
/// total milliseconds, and a registered overload can't be replaced.
fn get_milliseconds_macro(h: &mut MacroExprHelper<'_>, target: &mut Option<IdedExpr>) -> Expansion {
    let Some(t) = target.take() else {
        return Ok(None);
    };
    Ok(Some(call(h, GET_MILLISECONDS, vec![t])))
}

fn milliseconds<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let x = args
        .first()
        .ok_or_else(ExecutionError::missing_argument_or_target)?;
    if let Some(d) = x.downcast_ref::<CelDuration>() {
        // cel-go: the milliseconds component, truncated toward zero like the duration.
        return Ok(CowVal::owned(CelInt::from(
            d.inner().num_milliseconds() % 1000,
        )));
    }
    if let Some(t) = x.downcast_ref::<CelTimestamp>() {
        return Ok(CowVal::owned(CelInt::from(i64::from(
            t.inner().timestamp_subsec_millis(),
        ))));
    }
    Err(ExecutionError::no_such_overload(
        "getMilliseconds",
        vec![x.get_type().name().to_owned()],
    ))
}
