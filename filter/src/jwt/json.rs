//! JOSE text: strict base64url (RFC 7515 2), a nesting-depth guard, and JSON with a single
//! reading: a JSON object whose member names are unique at every
//! nesting level.
//!
//! `serde_json` keeps the last of repeated members, while other parsers in a request's path
//! (an IdP, an API gateway, the upstream's JWT library) may keep the first or refuse the text.
//! A token whose `alg`, `kid`, `exp` or `sub` can mean two things is refused instead, as
//! RFC 7515 §4 and RFC 7519 §4 allow. The check happens while the `Value` is built, in the
//! same single pass `serde_json::from_slice` would make, so it costs no extra allocation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};
use std::cell::Cell;
use std::fmt;

/// Why [`parse_object`] refused a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// An object (at any depth) names the same member twice.
    DuplicateMember,
    /// Not JSON, or JSON but not an object.
    NotAnObject,
}

/// Parses `bytes` as one JSON object whose objects never repeat a member name. Names are
/// compared after unescaping, so `"alg"` and `"\u0061lg"` are the same name.
///
/// Nesting depth is the caller's business: run [`super::jws::json_depth_ok`] first (and
/// `serde_json`'s own recursion limit still applies).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        // The flag, not the error's text or category, says why: a duplicate aborts the
        // parse through the same error path as a syntax error.
        Err(_) if duplicate.get() => Err(JsonError::DuplicateMember),
        _ => Err(JsonError::NotAnObject),
    }
}

/// Builds a `serde_json::Value` exactly as its own `Deserialize` does, except that a
/// repeated member name is an error (and sets `duplicate`).
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    duplicate: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity; serde_json refuses overflowing literals itself.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            match map.entry(name) {
                Entry::Occupied(_) => {
                    self.duplicate.set(true);
                    return Err(de::Error::custom("duplicate member name"));
                }
                Entry::Vacant(slot) => {
                    slot.insert(access.next_value_seed(self)?);
                }
            }
        }
        Ok(Value::Object(map))
    }
}

/// Strict base64url without padding (RFC 7515 2): no `=`, no whitespace, no stray
/// characters, canonical trailing bits.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

pub fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether the JSON text nests at most `max` arrays/objects deep. Linear, allocation-free;
/// run before `serde_json` so hostile input never reaches a deep recursive parse.
pub fn json_depth_ok(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_value_as_serde_json_when_names_are_unique() {
        let text = br#"{"a":1,"b":-2,"c":1.5,"d":18446744073709551615,"e":"x\u00e9","f":null,
            "g":true,"h":[1,{"a":[]},"s"],"i":{"a":{"b":{}}},"\u0061\u0062":0}"#;
        let expected: Map<String, Value> = serde_json::from_slice(text).unwrap_or_default();
        assert_eq!(parse_object(text), Ok(expected));
    }

    #[test]
    fn repeated_names_are_refused_at_every_depth() {
        for text in [
            r#"{"alg":"RS256","alg":"none"}"#,
            r#"{"alg":"RS256","\u0061lg":"HS256"}"#,
            r#"{"exp":1,"sub":"a","exp":2}"#,
            r#"{"org":{"team":"a","team":"b"}}"#,
            r#"{"roles":[{"r":1},{"r":2,"r":3}]}"#,
            r#"{"a":[[[{"x":{"y":1,"y":1}}]]]}"#,
            r#"{"":1,"":2}"#,
        ] {
            assert_eq!(
                parse_object(text.as_bytes()),
                Err(JsonError::DuplicateMember),
                "{text}"
            );
        }
        // The same name in different objects is no repeat.
        assert!(parse_object(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#).is_ok());
    }

    #[test]
    fn anything_but_one_object_is_refused() {
        for text in [
            "",
            "[]",
            "1",
            "\"a\"",
            "null",
            "{",
            "{}{}",
            "{} x",
            r#"{"a":1,}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":1e400}"#,
        ] {
            assert_eq!(
                parse_object(text.as_bytes()),
                Err(JsonError::NotAnObject),
                "{text}"
            );
        }
        assert_eq!(parse_object(b" {} \n"), Ok(Map::new()));
        assert_eq!(
            parse_object(br#"{"a":1}"#).map(Value::Object),
            Ok(json!({"a": 1}))
        );
    }
}
