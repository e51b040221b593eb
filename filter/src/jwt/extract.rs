//! Extraction: where a provider looks for its token, what a request holds there, and the
//! edit that strips a token before the request goes upstream.

use crate::decision::HeaderEdit;
use crate::request::RequestView;
use std::borrow::Cow;

/// Where a provider looks for its token (`from_headers`, `from_params`, `from_cookies`).
/// Public only so the benchmarks can time [`extract`]; the default source is
/// `Header { name: "authorization", prefix: Some("Bearer ") }`.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A header (name lower-case), with an optional case-insensitive value prefix.
    Header {
        name: String,
        prefix: Option<String>,
    },
    Param(String),
    Cookie(String),
}

/// Where a token was found: what `forward: false` removes before the request goes upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenLocation {
    Header(String),
    Param(String),
    Cookie(String),
}

impl TokenLocation {
    /// The request edit that removes the token from where it was found.
    pub(super) fn strip(&self, request: &RequestView) -> Option<HeaderEdit> {
        match self {
            TokenLocation::Header(name) => Some(HeaderEdit::Remove(name.clone())),
            TokenLocation::Param(param) => {
                let (path, query) = request.path().split_once('?')?;
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                        percent_decode(key).as_deref() != Some(param.as_str())
                    })
                    .collect();
                let path = if kept.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}?{}", kept.join("&"))
                };
                Some(HeaderEdit::Set(":path".to_owned(), path))
            }
            TokenLocation::Cookie(cookie) => {
                let kept: Vec<&str> = request
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                    .flat_map(|(_, v)| v.split(';'))
                    .map(str::trim)
                    .filter(|pair| pair.split_once('=').is_none_or(|(n, _)| n.trim() != cookie))
                    .filter(|pair| !pair.is_empty())
                    .collect();
                Some(if kept.is_empty() {
                    HeaderEdit::Remove("cookie".to_owned())
                } else {
                    HeaderEdit::Set("cookie".to_owned(), kept.join("; "))
                })
            }
        }
    }
}

/// What a provider's token locations hold in one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Extracted<'r> {
    Missing,
    /// Exactly one token, and where it was.
    One(Cow<'r, str>, TokenLocation),
    /// More than one candidate: a token header with several values (Envoy joins a repeated
    /// header with `,`), a repeated parameter or cookie, or tokens in two locations. Which
    /// one is "the" token is a guess another component could make differently, and RFC 6750
    /// 2 allows one method per request: the request is refused (`invalid_request`).
    Several,
}

/// A second token, or a token next to another value of its location: the search ends there.
struct SecondToken;

/// Collects candidates across a provider's locations.
struct Candidates<'r> {
    first: Option<(Cow<'r, str>, TokenLocation)>,
}

impl<'r> Candidates<'r> {
    /// Fails on the second candidate.
    fn add(
        &mut self,
        token: Cow<'r, str>,
        location: impl FnOnce() -> TokenLocation,
    ) -> Result<(), SecondToken> {
        if self.first.is_some() {
            return Err(SecondToken);
        }
        self.first = Some((token, location()));
        Ok(())
    }
}

/// Finds the provider's token in every configured location (headers, then query
/// parameters, then cookies) and makes sure there is only one. Public only so the
/// benchmarks can time this stage on its own.
pub fn extract<'r>(sources: &[TokenSource], request: &'r RequestView) -> Extracted<'r> {
    match find_candidates(sources, request) {
        Ok(Candidates { first: None }) => Extracted::Missing,
        Ok(Candidates {
            first: Some((token, location)),
        }) => Extracted::One(token, location),
        Err(SecondToken) => Extracted::Several,
    }
}

fn find_candidates<'r>(
    sources: &[TokenSource],
    request: &'r RequestView,
) -> Result<Candidates<'r>, SecondToken> {
    let mut found = Candidates { first: None };
    for source in sources {
        // Values of this location, and how many of them are tokens: a token next to any
        // other value of the same location (`Bearer t, Basic x`, `?access_token=t&access_token=%`)
        // is one value too many.
        let mut values = 0usize;
        let mut tokens = 0usize;
        match source {
            TokenSource::Header { name, prefix } => {
                for v in request.headers.values_ignore_case(name) {
                    // A token never contains `,` (RFC 6750 b64token), so splitting undoes
                    // Envoy's merge of a repeated header and can't cut a token in two.
                    for element in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                        values += 1;
                        let token = match prefix {
                            None => Some(element),
                            Some(prefix) => element
                                .get(..prefix.len())
                                .filter(|head| head.eq_ignore_ascii_case(prefix))
                                .and_then(|_| element.get(prefix.len()..))
                                .map(str::trim)
                                .filter(|t| !t.is_empty()),
                        };
                        if let Some(token) = token {
                            tokens += 1;
                            found.add(Cow::Borrowed(token), || {
                                TokenLocation::Header(name.clone())
                            })?;
                        }
                    }
                }
            }
            TokenSource::Param(param) => {
                let path = request.path();
                let Some((_, query)) = path.split_once('?') else {
                    continue;
                };
                let query = query.split('#').next().unwrap_or_default();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if v.is_empty() || percent_decode(k).as_deref() != Some(param.as_str()) {
                        continue;
                    }
                    values += 1;
                    if let Some(token) = percent_decode(v).filter(|t| !t.is_empty()) {
                        tokens += 1;
                        found.add(Cow::Owned(token), || TokenLocation::Param(param.clone()))?;
                    }
                }
            }
            TokenSource::Cookie(cookie) => {
                for v in request.headers.values_ignore_case("cookie") {
                    for pair in v.split(';') {
                        if let Some((name, value)) = pair.trim().split_once('=') {
                            let value = value.trim().trim_matches('"');
                            if name.trim() == cookie && !value.is_empty() {
                                values += 1;
                                tokens += 1;
                                found.add(Cow::Borrowed(value), || {
                                    TokenLocation::Cookie(cookie.clone())
                                })?;
                            }
                        }
                    }
                }
            }
        }
        if tokens > 0 && values > 1 {
            return Err(SecondToken);
        }
    }
    Ok(found)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
