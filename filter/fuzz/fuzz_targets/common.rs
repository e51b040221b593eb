//! Builders shared by the targets: fuzzer bytes → requests, attributes and JSON values that
//! look enough like real traffic for the interesting branches to be reached.
#![allow(dead_code)]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use portcullis_filter::request::{AttributeKind, AttributeValue, HostAttribute, RequestView};
use serde_json::{Map, Number, Value};
use std::time::{Duration, UNIX_EPOCH};

/// Names the example policies and tokens use: picking among them reaches deeper than
/// random strings, which would almost never name a claim or header an expression reads.
const NAMES: &[&str] = &[
    "sub",
    "iss",
    "aud",
    "exp",
    "nbf",
    "iat",
    "scope",
    "groups",
    "tenant",
    "admin",
    "kid",
    "alg",
    "x-tenant",
    "authorization",
    "user-agent",
    "cookie",
    "host",
    "x-forwarded-for",
    "a.b",
    "c",
];

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "",
];

const PATHS: &[&str] = &[
    "/",
    "/healthz",
    "/public/x",
    "/admin",
    "/admin/users",
    "/internal/metrics",
    "/mtls/a",
    "/api/orders",
    "/api/v1/x",
    "/bulk/a",
    "/exports/b",
    "/?access_token=x&a=1&a=2",
    "/%2e%2e/",
];

const ADDRESSES: &[&str] = &[
    "10.1.2.3:5000",
    "127.0.0.1:1",
    "192.168.0.9",
    "[::1]:443",
    "::ffff:10.0.0.1",
    "8.8.8.8:53",
    "fe80::1%eth0",
    "300.1.1.1",
    "",
];

pub fn name(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(NAMES)?).to_owned())
    } else {
        u.arbitrary()
    }
}

pub fn json(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let pick = if depth == 0 {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=6)?
    };
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(Number::from(u.arbitrary::<i64>()?)),
        3 => Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        4 => Value::String(if u.ratio(1, 2)? {
            name(u)?
        } else {
            u.arbitrary()?
        }),
        5 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| json(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => Value::Object(object(u, depth - 1)?),
    })
}

pub fn object(u: &mut Unstructured<'_>, depth: u32) -> Result<Map<String, Value>> {
    let n = u.int_in_range(0..=6)?;
    let mut map = Map::new();
    for _ in 0..n {
        map.insert(name(u)?, json(u, depth)?);
    }
    Ok(map)
}

fn attribute_value(u: &mut Unstructured<'_>, attribute: HostAttribute) -> Result<AttributeValue> {
    Ok(match attribute.kind() {
        AttributeKind::String => AttributeValue::String(if u.ratio(1, 2)? {
            (*u.choose(ADDRESSES)?).to_owned()
        } else {
            u.arbitrary()?
        }),
        AttributeKind::Int => AttributeValue::Int(u.arbitrary()?),
        AttributeKind::Bool => AttributeValue::Bool(u.arbitrary()?),
        AttributeKind::Timestamp => {
            AttributeValue::Timestamp(UNIX_EPOCH + Duration::from_nanos(u.arbitrary()?))
        }
    })
}

/// A request: method, path, a few headers, and any subset of the host attributes.
pub fn request(u: &mut Unstructured<'_>) -> Result<RequestView> {
    let method: String = if u.ratio(7, 8)? {
        (*u.choose(METHODS)?).to_owned()
    } else {
        u.arbitrary()?
    };
    let path: String = if u.ratio(3, 4)? {
        (*u.choose(PATHS)?).to_owned()
    } else {
        u.arbitrary()?
    };
    let n = u.int_in_range(0..=6)?;
    let mut headers = Vec::new();
    for _ in 0..n {
        headers.push((name(u)?, u.arbitrary::<String>()?));
    }
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut request = RequestView::new(&method, &path, &refs);
    for attribute in HostAttribute::ALL.iter().copied().filter(|a| a.is_host()) {
        if u.arbitrary()? {
            let value = attribute_value(u, attribute)?;
            request = request.with_attribute(attribute, value);
        }
    }
    Ok(request)
}
