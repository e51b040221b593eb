//! The activation: one request's variables, resolved on demand.

use super::env::shared_env;
use crate::attributes::{Attribute, Derived, Source};
use crate::jwt::attributes::JwtAttributes;
use crate::request::{query_of, AttributeValue, RequestView};
use cel::common::types::{CelBool, CelInt, CelMap, CelMapKey, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

/// Everything one request's expressions may read.
#[derive(Debug)]
pub struct Activation<'a> {
    pub request: &'a RequestView,
    pub jwt: Option<&'a JwtAttributes>,
    headers: OnceLock<CelMap<'a>>,
    query_params: OnceLock<CelMap<'static>>,
    claims: OnceLock<Option<Box<dyn Val>>>,
    jwt_header: OnceLock<Option<Box<dyn Val>>>,
}

impl<'a> Activation<'a> {
    pub fn new(request: &'a RequestView) -> Activation<'a> {
        Activation {
            request,
            jwt: None,
            headers: OnceLock::new(),
            query_params: OnceLock::new(),
            claims: OnceLock::new(),
            jwt_header: OnceLock::new(),
        }
    }

    pub fn with_jwt(mut self, jwt: Option<&'a JwtAttributes>) -> Activation<'a> {
        self.jwt = jwt;
        self.claims = OnceLock::new();
        self.jwt_header = OnceLock::new();
        self
    }

    fn path(&self) -> Option<&'a str> {
        self.request.header(":path")
    }

    fn headers_map(&self) -> &CelMap<'a> {
        self.headers.get_or_init(|| {
            let headers = &self.request.headers;
            let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> =
                HashMap::with_capacity(headers.len());
            for (name, _) in headers {
                let key = CelMapKey::String(CelString::from(name));
                if let (false, Some(value)) = (map.contains_key(&key), headers.joined(name)) {
                    let value: Box<dyn Val + 'a> = match value {
                        Cow::Borrowed(v) => Box::new(CelString::from(v)),
                        Cow::Owned(v) => Box::new(CelString::from(v)),
                    };
                    map.insert(key, value);
                }
            }
            CelMap::from(map)
        })
    }

    fn query_params_map(&self) -> &CelMap<'static> {
        self.query_params.get_or_init(|| {
            let mut map: HashMap<CelMapKey<'static>, Box<dyn Val>> = HashMap::new();
            let query = query_of(self.path().unwrap_or(""));
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let key = CelMapKey::String(CelString::from(percent_decode(k)));
                map.entry(key)
                    .or_insert_with(|| Box::new(CelString::from(percent_decode(v))));
            }
            CelMap::from(map)
        })
    }

    fn claims_val(&self) -> Option<&(dyn Val + 'static)> {
        self.claims
            .get_or_init(|| match self.jwt {
                Some(j) => j.claims.clone().try_into().ok(),
                None => Some(Box::new(CelMap::from(HashMap::new()))),
            })
            .as_deref()
    }

    fn jwt_header_val(&self) -> Option<&(dyn Val + 'static)> {
        self.jwt_header
            .get_or_init(|| match self.jwt {
                Some(j) => j.header.clone().try_into().ok(),
                None => Some(Box::new(CelMap::from(HashMap::new()))),
            })
            .as_deref()
    }

    fn host(&self, attribute: Attribute) -> Option<Box<dyn Val + 'a>> {
        Some(match self.request.attribute(attribute)? {
            AttributeValue::String(s) => Box::new(CelString::from(s.as_str())),
            AttributeValue::Int(i) => Box::new(CelInt::from(*i)),
            AttributeValue::Bool(b) => Box::new(CelBool::from(*b)),
            AttributeValue::Timestamp(t) => timestamp_val(*t)?,
        })
    }

    /// One attribute's value, from where the attribute table says it comes from.
    fn value(&self, attribute: Attribute) -> Option<CowVal<'_, 'a>> {
        match attribute.source() {
            Source::Header(_)
            | Source::Derived(Derived::UrlPath | Derived::Authority | Derived::Query) => {
                let value = self.request.string_attribute(attribute)?;
                Some(CowVal::owned(CelString::from(value)))
            }
            Source::Derived(Derived::Headers) => Some(CowVal::Borrowed(self.headers_map())),
            Source::Derived(Derived::QueryParams) => {
                Some(CowVal::Borrowed(self.query_params_map()))
            }
            Source::Host(_) => self.host(attribute).map(CowVal::Owned),
            Source::Token => match attribute {
                Attribute::JwtClaims => self.claims_val().map(CowVal::Borrowed),
                Attribute::JwtHeader => self.jwt_header_val().map(CowVal::Borrowed),
                _ => Some(CowVal::owned(CelString::from(
                    self.jwt.map_or("", |j| j.provider.as_str()),
                ))),
            },
        }
    }

    fn member(&self, root: &str, member: &str) -> Option<CowVal<'_, 'a>> {
        self.value(Attribute::lookup(root, member)?)
    }

    /// The whole `root` as a map of the members that are present.
    fn root_map(&self, root: &str) -> Option<CowVal<'_, 'a>> {
        if !Attribute::is_root(root) {
            return None;
        }
        let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::new();
        for attribute in Attribute::members_of(root) {
            if let Some(v) = self.value(attribute) {
                map.insert(
                    CelMapKey::String(CelString::from(attribute.member())),
                    v.into_owned(),
                );
            }
        }
        Some(CowVal::owned(CelMap::from(map)))
    }

    /// `jwt.claims.<name>` / `jwt.header.<name>`: straight from the token's value tree.
    fn jwt_field(&self, which: &str, name: &str) -> Option<CowVal<'_, 'a>> {
        let jwt = self.jwt?;
        let value = match which {
            "claims" => &jwt.claims,
            "header" => &jwt.header,
            _ => return None,
        };
        let cel::Value::Map(map) = value else {
            return None;
        };
        let v = map.get(&cel::objects::KeyRef::String(name))?;
        let val: Box<dyn Val> = v.clone().try_into().ok()?;
        Some(CowVal::Owned(val))
    }
}

impl VariableResolver for Activation<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let (root, rest) = variable.split_once('.').unwrap_or((variable, ""));
        if rest.is_empty() {
            return self.root_map(root);
        }
        match rest.split_once('.') {
            None => self.member(root, rest),
            Some((which, name)) if root == "jwt" && !name.contains('.') => {
                self.jwt_field(which, name)
            }
            Some(_) => None,
        }
    }
}

/// The value of one hexadecimal digit.
pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding: `%XX` and `+` for a space. Invalid escapes
/// are kept as written; invalid UTF-8 is replaced.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let decoded = bytes
                    .get(i + 1)
                    .and_then(|h| hex_digit(*h))
                    .zip(bytes.get(i + 2).and_then(|l| hex_digit(*l)));
                match decoded {
                    Some((h, l)) => {
                        out.push(h * 16 + l);
                        i += 3;
                    }
                    None => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A CEL timestamp for `t`, built with the standard library's own conversions (the filter
/// doesn't depend on chrono directly).
pub(super) fn timestamp_val<'v>(t: std::time::SystemTime) -> Option<Box<dyn Val + 'v>> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    let env = shared_env().ok()?;
    let secs = i64::try_from(since.as_secs()).ok()?;
    let to_ts = env.find_overload("timestamp", &[CowVal::owned(CelInt::from(secs))])?;
    let ts = to_ts(vec![CowVal::owned(CelInt::from(secs))]).ok()?;
    let nanos = since.subsec_nanos();
    if nanos == 0 {
        return Some(ts.into_owned());
    }
    let text = CelString::from(format!("{nanos}ns"));
    let to_dur = env.find_overload("duration", &[CowVal::owned(text.clone())])?;
    let dur = to_dur(vec![CowVal::owned(text)]).ok()?;
    let sum = ts.as_adder()?.add(dur.as_ref()).ok()?;
    Some(sum.into_owned())
}
