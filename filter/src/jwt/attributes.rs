//! The verified token as CEL sees it: header and claims converted once per token.

use std::collections::HashMap;
use std::sync::Arc;

/// The verified token's attributes as CEL values, converted once per verified token.
#[derive(Debug, Clone)]
pub struct JwtAttributes {
    pub provider: String,
    pub claims: cel::Value,
    pub header: cel::Value,
}

impl JwtAttributes {
    pub fn from_json(
        provider: &str,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> JwtAttributes {
        JwtAttributes {
            provider: provider.to_owned(),
            claims: json_to_cel(claims.clone()),
            header: json_to_cel(header.clone()),
        }
    }

    /// [`JwtAttributes::from_json`] consuming the JSON: strings move into the CEL values
    /// instead of being copied (the verification path has no further use for them).
    pub fn from_json_owned(
        provider: &str,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> JwtAttributes {
        JwtAttributes {
            provider: provider.to_owned(),
            claims: json_to_cel(claims),
            header: json_to_cel(header),
        }
    }
}

/// Converts JSON to a CEL value (numbers: integers stay `int`, others `double`). Takes the
/// JSON by value so strings move into the CEL values instead of being copied.
pub fn json_to_cel(value: serde_json::Value) -> cel::Value {
    match value {
        serde_json::Value::Null => cel::Value::Null,
        serde_json::Value::Bool(b) => cel::Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => cel::Value::String(Arc::new(s)),
        serde_json::Value::Array(items) => {
            cel::Value::List(Arc::new(items.into_iter().map(json_to_cel).collect()))
        }
        serde_json::Value::Object(entries) => {
            let map: HashMap<cel::objects::Key, cel::Value> = entries
                .into_iter()
                .map(|(k, v)| (cel::objects::Key::from(k), json_to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}
