//! The request as the decision core sees it: headers plus the host attributes that some
//! compiled expression actually references. The proxy-wasm shell fills it; tests build it by hand.

use crate::attributes::{Attribute, Derived, Source};
use std::borrow::Cow;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Host attributes are the [`Attribute`]s whose [`Source`] is the host; the name stays for
/// the callers that only ever deal with those.
pub use crate::attributes::Attribute as HostAttribute;
pub use crate::attributes::AttributeKind;

#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    String(String),
    Int(i64),
    Bool(bool),
    Timestamp(SystemTime),
}

impl AttributeValue {
    /// Decodes a property value as Envoy serialises it. `None` if the bytes don't fit the kind.
    pub fn decode(kind: AttributeKind, bytes: &[u8]) -> Option<AttributeValue> {
        match kind {
            AttributeKind::String => std::str::from_utf8(bytes)
                .ok()
                .map(|s| AttributeValue::String(s.to_owned())),
            AttributeKind::Int => {
                let arr: [u8; 8] = bytes.try_into().ok()?;
                Some(AttributeValue::Int(i64::from_le_bytes(arr)))
            }
            AttributeKind::Bool => match bytes {
                [0] => Some(AttributeValue::Bool(false)),
                [_] => Some(AttributeValue::Bool(true)),
                _ => None,
            },
            AttributeKind::Timestamp => {
                let arr: [u8; 8] = bytes.try_into().ok()?;
                let nanos = i64::from_le_bytes(arr);
                let nanos = u64::try_from(nanos).ok()?;
                Some(AttributeValue::Timestamp(
                    UNIX_EPOCH + Duration::from_nanos(nanos),
                ))
            }
        }
    }
}

/// Request headers: names lower-case, in arrival order, pseudo-headers (`:method`, `:path`,
/// `:authority`, `:scheme`) included. All names and values share one buffer: the shell builds
/// this on every request, and a `String` per name and value would be two allocations each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// Per header, where its name and its value end in `text` (each name starts where the
    /// previous value ended).
    ends: Vec<(usize, usize)>,
}

impl Headers {
    pub fn with_capacity(headers: usize, bytes: usize) -> Headers {
        Headers {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(headers),
        }
    }

    /// Appends a header; the name is lower-cased.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        if let Some(pushed) = self.text.get_mut(start..) {
            pushed.make_ascii_lowercase();
        }
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    /// `(name, value)` pairs in arrival order.
    pub fn iter(&self) -> HeaderIter<'_> {
        HeaderIter {
            text: &self.text,
            spans: self.spans(),
        }
    }

    fn spans(&self) -> Spans<'_> {
        Spans {
            ends: self.ends.iter(),
            start: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// A header's value as CEL sees it: repeated headers joined with `,` (RFC 9110 5.3).
    pub fn joined(&self, name: &str) -> Option<Cow<'_, str>> {
        let mut values = self.values(name);
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(Cow::Borrowed(first));
        };
        let mut joined = format!("{first},{second}");
        for value in values {
            joined.push(',');
            joined.push_str(value);
        }
        Some(Cow::Owned(joined))
    }

    /// First value of a header (name compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values_ignore_case(name).next()
    }

    /// Every value of the header named exactly `name` (stored names are lower-case), in
    /// arrival order: `request.headers[name]` in CEL.
    pub fn values<'h, 'n>(&'h self, name: &'n str) -> impl Iterator<Item = &'h str> + use<'h, 'n> {
        self.matching(move |this| this == name.as_bytes())
    }

    /// The same with the name compared case-insensitively (configured header names).
    pub fn values_ignore_case<'h, 'n>(
        &'h self,
        name: &'n str,
    ) -> impl Iterator<Item = &'h str> + use<'h, 'n> {
        self.matching(move |this| this.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Names are compared as bytes and only matching values are sliced: rules look headers up
    /// many times per request.
    fn matching<'h, F: Fn(&[u8]) -> bool>(
        &'h self,
        is_name: F,
    ) -> impl Iterator<Item = &'h str> + use<'h, F> {
        let text = &self.text;
        self.spans().filter_map(move |(name, value)| {
            if text.as_bytes().get(name).is_some_and(&is_name) {
                text.get(value)
            } else {
                None
            }
        })
    }
}

/// Where each header's name and value lie in [`Headers::text`] (always in bounds and on char
/// boundaries: `push` recorded them).
#[derive(Debug, Clone)]
struct Spans<'h> {
    ends: std::slice::Iter<'h, (usize, usize)>,
    start: usize,
}

impl Iterator for Spans<'_> {
    type Item = (Range<usize>, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let &(name_end, value_end) = self.ends.next()?;
        let name = self.start..name_end;
        self.start = value_end;
        Some((name, name_end..value_end))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
    }
}

/// Iterator over [`Headers`]: `(name, value)` in arrival order.
#[derive(Debug, Clone)]
pub struct HeaderIter<'h> {
    text: &'h str,
    spans: Spans<'h>,
}

impl<'h> Iterator for HeaderIter<'h> {
    type Item = (&'h str, &'h str);

    fn next(&mut self) -> Option<(&'h str, &'h str)> {
        let (name, value) = self.spans.next()?;
        Some((
            self.text.get(name).unwrap_or_default(),
            self.text.get(value).unwrap_or_default(),
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl<'h> IntoIterator for &'h Headers {
    type Item = (&'h str, &'h str);
    type IntoIter = HeaderIter<'h>;

    fn into_iter(self) -> HeaderIter<'h> {
        self.iter()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Headers {
        let mut headers = Headers::default();
        for (k, v) in pairs {
            headers.push(k.as_ref(), v.as_ref());
        }
        headers
    }
}

/// One HTTP request, host-independent.
#[derive(Debug, Clone, Default)]
pub struct RequestView {
    pub headers: Headers,
    /// The host attributes that were asked for and that the host had.
    pub attributes: Vec<(HostAttribute, AttributeValue)>,
}

impl RequestView {
    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn method(&self) -> &str {
        self.header(":method").unwrap_or("")
    }

    /// The full `:path`, query included.
    pub fn path(&self) -> &str {
        self.header(":path").unwrap_or("")
    }

    /// The value of a string attribute read from the headers
    /// ([`Attribute::is_header_string`]); `None` for any other attribute or an absent header.
    pub fn string_attribute(&self, attribute: Attribute) -> Option<&str> {
        match attribute.source() {
            Source::Header(name) => self.header(name),
            Source::Derived(Derived::UrlPath) => {
                let path = self.header(":path")?;
                Some(path.split_once('?').map_or(path, |(path, _)| path))
            }
            Source::Derived(Derived::Authority) => {
                self.header(":authority").or_else(|| self.header("host"))
            }
            Source::Derived(Derived::Query) => Some(query_of(self.header(":path")?)),
            Source::Derived(Derived::Headers | Derived::QueryParams)
            | Source::Host(_)
            | Source::Token => None,
        }
    }

    pub fn attribute(&self, attribute: HostAttribute) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find(|(a, _)| *a == attribute)
            .map(|(_, v)| v)
    }

    /// Convenience for tests and the harness.
    pub fn new(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestView {
        let pseudo = [
            (":method", method),
            (":path", path),
            (":authority", "localhost"),
            (":scheme", "http"),
        ];
        RequestView {
            headers: pseudo.iter().chain(headers).copied().collect(),
            attributes: Vec::new(),
        }
    }

    pub fn with_attribute(
        mut self,
        attribute: HostAttribute,
        value: AttributeValue,
    ) -> RequestView {
        self.attributes.retain(|(a, _)| *a != attribute);
        self.attributes.push((attribute, value));
        self
    }
}

/// The query of a `:path`: what follows the first `?`.
pub fn query_of(path: &str) -> &str {
    path.split_once('?').map_or("", |(_, query)| query)
}

#[cfg(test)]
mod header_tests {
    use super::Headers;

    #[test]
    fn one_buffer_keeps_order_case_and_repeats() {
        let headers: Headers = [
            ("X-Tenant", "acme"),
            ("accept", "text/html"),
            ("ACCEPT", "application/json"),
            ("empty", ""),
        ]
        .into_iter()
        .collect();
        let pairs: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(
            pairs,
            [
                ("x-tenant", "acme"),
                ("accept", "text/html"),
                ("accept", "application/json"),
                ("empty", "")
            ]
        );
        assert_eq!(headers.len(), 4);
        // CEL's `request.headers[name]`: exact (stored names are lower-case).
        assert_eq!(
            headers.values("accept").collect::<Vec<_>>(),
            ["text/html", "application/json"]
        );
        assert_eq!(headers.values("X-Tenant").next(), None);
        // Configured names: any case.
        assert_eq!(headers.get("X-TENANT"), Some("acme"));
        assert_eq!(headers.values_ignore_case("Accept").count(), 2);
        assert_eq!(headers.get("empty"), Some(""));
        assert_eq!(headers.get("missing"), None);
        assert!(Headers::default().is_empty());
    }
}
