//! The environment: the standard library plus extensions, built once per process, and the
//! names the checker accepts (known functions and types).

use super::bindings::bind_macro;
use super::encoders::encoders;
use super::{literal_regex, macros, network};
use cel::Env;
use std::sync::{Arc, OnceLock};

pub(super) static ENV: OnceLock<Result<Arc<Env>, String>> = OnceLock::new();

/// The shared evaluation environment: the CEL standard library, the `strings`, `math` and
/// `lists` extensions of the `cel` crate, and Portcullis' network extension.
pub fn shared_env() -> Result<Arc<Env>, String> {
    ENV.get_or_init(|| build_env().map(Arc::new))
        .as_ref()
        .map(Arc::clone)
        .map_err(Clone::clone)
}

pub(super) fn build_env() -> Result<Env, String> {
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

/// Function names the runtime knows (standard library + extensions), for the checker.
/// Kept in sync with [`build_env`] by a unit test that calls each of them.
pub(super) const KNOWN_FUNCTIONS: &[&str] = &[
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
pub(super) const KNOWN_TYPES: &[&str] = &[
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

pub(super) fn is_operator(name: &str) -> bool {
    name.starts_with('_')
        || name.starts_with('@')
        || name == "!_"
        || name == "-_"
        || name.starts_with("cel.")
}

pub(super) fn is_known_function(name: &str) -> bool {
    is_operator(name) || KNOWN_FUNCTIONS.contains(&name)
}
