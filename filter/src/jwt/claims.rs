//! Claim paths and registered-claim validation.
//!
//! ## Claim path syntax
//! A path is a sequence of segments. A segment is either a bare name (any characters but
//! `.`, `[`, `]`, `"`), separated by `.`, or a JSON string in brackets for names that contain
//! those characters: `sub`, `org.team` (claim `org`, member `team`),
//! `["https://example.com/roles"]`, `realm_access.roles`, `["a.b"].c`.

use super::invalid::{Cause, Invalid};
use serde_json::{Map, Value};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    segments: Vec<String>,
    text: String,
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl ClaimPath {
    pub fn parse(text: &str) -> Result<ClaimPath, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        let mut expect_segment = true;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                // A JSON string literal followed by `]`.
                let mut de = serde_json::Deserializer::from_str(after).into_iter::<String>();
                let name = match de.next() {
                    Some(Ok(name)) => name,
                    _ => return Err("`[` must be followed by a JSON string and `]`".into()),
                };
                let consumed = de.byte_offset();
                let after = after.get(consumed..).unwrap_or_default();
                rest = after
                    .strip_prefix(']')
                    .ok_or_else(|| "missing `]` after a bracketed name".to_owned())?;
                segments.push(name);
                expect_segment = false;
                if let Some(r) = rest.strip_prefix('.') {
                    rest = r;
                    expect_segment = true;
                    if rest.is_empty() {
                        return Err("a path must not end with `.`".into());
                    }
                }
            } else {
                let end = rest.find(['.', '[', ']', '"']).unwrap_or(rest.len());
                let name = rest.get(..end).unwrap_or_default();
                if name.is_empty() || !expect_segment {
                    return Err(format!("bad claim path `{text}`"));
                }
                segments.push(name.to_owned());
                rest = rest.get(end..).unwrap_or_default();
                expect_segment = false;
                if let Some(r) = rest.strip_prefix('.') {
                    rest = r;
                    expect_segment = true;
                    if rest.is_empty() || rest.starts_with('[') {
                        return Err(format!("bad claim path `{text}`"));
                    }
                } else if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(format!("bad claim path `{text}`"));
                }
            }
        }
        if segments.is_empty() {
            return Err("empty claim path".into());
        }
        Ok(ClaimPath {
            segments,
            text: text.to_owned(),
        })
    }

    pub fn lookup<'v>(&self, claims: &'v Map<String, Value>) -> Option<&'v Value> {
        let mut segments = self.segments.iter();
        let mut current = claims.get(segments.next()?)?;
        for segment in segments {
            current = current.as_object()?.get(segment)?;
        }
        Some(current)
    }
}

/// Renders a claim as a header value: strings as they are, numbers and booleans in JSON,
/// arrays of those joined with `,`. Objects, nulls and values with control characters: `None`.
pub fn header_value(value: &Value) -> Option<String> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    let text = match value {
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
            parts?.join(",")
        }
        other => scalar(other)?,
    };
    if text.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(text)
}

/// Constraint on `sub`.
#[derive(Debug, Clone, Default)]
pub struct SubjectRule {
    pub exact: Vec<String>,
    pub prefixes: Vec<String>,
}

impl SubjectRule {
    pub fn allows(&self, sub: &str) -> bool {
        self.exact.iter().any(|e| e == sub) || self.prefixes.iter().any(|p| sub.starts_with(p))
    }
}

/// The claim checks of one provider.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub clock_skew_s: u64,
    pub max_lifetime_s: Option<u64>,
    pub required: Vec<ClaimPath>,
    pub subjects: Option<SubjectRule>,
}

/// Seconds since the epoch (0 before it).
pub fn unix_seconds(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, Invalid> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(i64::try_from(u).unwrap_or(i64::MAX)))
            } else {
                match n.as_f64() {
                    // Truncation is fine: NumericDate may carry fractions (RFC 7519 2).
                    Some(f) if f.is_finite() => Ok(Some(
                        f.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64,
                    )),
                    _ => Err(Invalid::new(
                        Cause::Malformed,
                        format!("{name} is not a number"),
                    )),
                }
            }
        }
        Some(_) => Err(Invalid::new(
            Cause::Malformed,
            format!("{name} is not a number"),
        )),
    }
}

/// Checks the JSON type of every registered claim present (RFC 7519 4.1): `iss`, `sub` and
/// `jti` strings, `aud` a string or an array of strings, `exp`, `nbf` and `iat` numbers.
/// `null` is a wrong type, not an absent claim. A claim of the wrong type makes the whole
/// token malformed — it is never skipped or filtered — so no other JWT library can read a
/// registered claim differently. Run on every token, whatever the provider checks.
pub fn check_claim_types(claims: &Map<String, Value>) -> Result<(), Invalid> {
    for name in ["iss", "sub", "jti"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(Invalid::new(
                Cause::Malformed,
                format!("{name} must be a string"),
            ));
        }
    }
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| !v.is_number()) {
            return Err(Invalid::new(
                Cause::Malformed,
                format!("{name} must be a number"),
            ));
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(auds)) if auds.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(Invalid::new(
            Cause::Malformed,
            "aud must be a string or an array of strings",
        )),
    }
}

/// Sanitises text for `error_description` (no quotes, backslashes or control characters).
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .take(120)
        .collect()
}

/// Checks the registered claims. Returns the token's `exp`, if any.
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: i64,
) -> Result<Option<i64>, Invalid> {
    check_claim_types(claims)?;
    let skew = i64::try_from(rules.clock_skew_s).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    if let Some(exp) = exp {
        if now >= exp.saturating_add(skew) {
            return Err(Invalid::new(Cause::Expired, "token expired"));
        }
    }
    if let Some(nbf) = nbf {
        if now.saturating_add(skew) < nbf {
            return Err(Invalid::new(Cause::NotYetValid, "token not yet valid"));
        }
    }
    if let Some(iat) = iat {
        if iat > now.saturating_add(skew) {
            return Err(Invalid::new(
                Cause::IssuedInFuture,
                "token issued in the future",
            ));
        }
    }
    if let Some(max) = rules.max_lifetime_s {
        let Some(exp) = exp else {
            return Err(Invalid::new(Cause::MissingExp, "token has no exp"));
        };
        let start = iat.or(nbf).unwrap_or(now);
        let lifetime = exp.saturating_sub(start);
        if lifetime > i64::try_from(max).unwrap_or(i64::MAX) {
            return Err(Invalid::new(
                Cause::LifetimeTooLong,
                "token lifetime too long",
            ));
        }
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        Some(Value::String(_)) => return Err(Invalid::new(Cause::WrongIssuer, "wrong issuer")),
        None => return Err(Invalid::new(Cause::WrongIssuer, "missing issuer")),
        Some(_) => return Err(Invalid::new(Cause::Malformed, "iss must be a string")),
    }
    if !rules.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => rules.audiences.contains(aud),
            Some(Value::Array(auds)) => {
                let mut any = false;
                for aud in auds {
                    let Some(aud) = aud.as_str() else {
                        return Err(Invalid::new(
                            Cause::Malformed,
                            "aud must be a string or an array of strings",
                        ));
                    };
                    any |= rules.audiences.iter().any(|want| want == aud);
                }
                any
            }
            None => false,
            Some(_) => {
                return Err(Invalid::new(
                    Cause::Malformed,
                    "aud must be a string or an array of strings",
                ))
            }
        };
        if !ok {
            return Err(Invalid::new(Cause::WrongAudience, "audience not allowed"));
        }
    }
    for path in &rules.required {
        if matches!(path.lookup(claims), None | Some(Value::Null)) {
            return Err(Invalid::new(
                Cause::MissingClaim,
                format!("missing claim {}", sanitize(&path.to_string())),
            ));
        }
    }
    if let Some(subjects) = &rules.subjects {
        match claims.get("sub") {
            Some(Value::String(sub)) if subjects.allows(sub) => {}
            None | Some(Value::String(_)) => {
                return Err(Invalid::new(Cause::WrongSubject, "subject not allowed"))
            }
            Some(_) => return Err(Invalid::new(Cause::Malformed, "sub must be a string")),
        }
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let claims = json!({"sub": "a", "org": {"team": "t"}, "https://example.com/roles": ["x", "y"], "a.b": {"c": 1}});
        let claims = claims.as_object().cloned().unwrap_or_default();
        let get = |p: &str| {
            ClaimPath::parse(p)
                .ok()
                .and_then(|p| p.lookup(&claims).cloned())
        };
        assert_eq!(get("sub"), Some(json!("a")));
        assert_eq!(get("org.team"), Some(json!("t")));
        assert_eq!(
            get("[\"https://example.com/roles\"]"),
            Some(json!(["x", "y"]))
        );
        assert_eq!(get("[\"a.b\"].c"), Some(json!(1)));
        assert_eq!(get("[\"org\"][\"team\"]"), Some(json!("t")));
        assert_eq!(get("org.nope"), None);
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "[a]",
            "[\"a\"",
            "a]",
            "a\"b",
            "a.[\"b\"]",
        ] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(header_value(&json!("x")), Some("x".into()));
        assert_eq!(header_value(&json!(3)), Some("3".into()));
        assert_eq!(
            header_value(&json!(["a", 1, true])),
            Some("a,1,true".into())
        );
        assert_eq!(header_value(&json!({"a": 1})), None);
        assert_eq!(header_value(&json!("a\r\nb")), None);
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: "iss".into(),
            audiences: vec!["aud".into()],
            clock_skew_s: 60,
            max_lifetime_s: Some(3600),
            required: vec![ClaimPath::parse("sub").unwrap_or_else(|_| unreachable!())],
            subjects: Some(SubjectRule {
                exact: vec![],
                prefixes: vec!["user:".into()],
            }),
        }
    }

    #[test]
    fn registered_claims() {
        let now = 1_000_000;
        let ok = json!({"iss": "iss", "aud": ["x", "aud"], "sub": "user:1", "exp": now + 100, "iat": now});
        let check = |v: Value| {
            check_claims(v.as_object().unwrap_or(&Map::new()), &rules(), now)
                .map_err(|e| e.code.as_str())
        };
        assert_eq!(check(ok.clone()), Ok(Some(now + 100)));
        let with = |k: &str, v: Value| {
            let mut c = ok.clone();
            c[k] = v;
            check(c)
        };
        assert_eq!(with("exp", json!(now - 61)), Err("expired"));
        assert!(with("exp", json!(now - 59)).is_ok());
        assert_eq!(with("nbf", json!(now + 61)), Err("not_yet_valid"));
        assert_eq!(with("iat", json!(now + 61)), Err("issued_in_future"));
        assert_eq!(with("exp", json!(now + 7200)), Err("lifetime_too_long"));
        assert_eq!(with("iss", json!("other")), Err("wrong_issuer"));
        assert_eq!(with("aud", json!("other")), Err("wrong_audience"));
        assert_eq!(with("sub", json!("admin")), Err("wrong_subject"));
        assert_eq!(with("sub", Value::Null), Err("malformed"));
        let mut no_sub = ok.clone();
        no_sub.as_object_mut().map(|c| c.remove("sub"));
        assert_eq!(check(no_sub), Err("missing_claim"));
        assert_eq!(with("exp", json!("soon")), Err("malformed"));
        assert!(with("exp", json!(1_000_050.5)).is_ok());
    }

    #[test]
    fn registered_claims_of_a_wrong_type_are_malformed_never_skipped() {
        let now = 1_000_000;
        let ok = json!({"iss": "iss", "aud": ["x", "aud"], "sub": "user:1", "exp": now + 100,
                        "nbf": now, "iat": now, "jti": "j"});
        let with = |k: &str, v: Value| {
            let mut c = ok.clone();
            c[k] = v;
            c.as_object().cloned().unwrap_or_default()
        };
        assert_eq!(check_claim_types(&with("jti", json!("j"))), Ok(()));
        let wrong = [
            ("aud", json!(["aud", 5])),
            ("aud", json!([5, "aud"])),
            ("aud", json!(["aud", null])),
            ("aud", json!(["aud", ["aud"]])),
            ("aud", json!({"aud": true})),
            ("aud", json!(5)),
            ("aud", Value::Null),
            ("iss", json!(["iss"])),
            ("iss", Value::Null),
            ("sub", json!(1)),
            ("sub", json!({"id": "user:1"})),
            ("jti", json!(7)),
            ("exp", json!("1000100")),
            ("exp", Value::Null),
            ("nbf", json!(true)),
            ("iat", json!([now])),
        ];
        let mut open = rules();
        open.audiences.clear();
        open.subjects = None;
        open.required.clear();
        for (name, value) in wrong {
            let claims = with(name, value.clone());
            let malformed = Some("malformed");
            let code = check_claim_types(&claims).err().map(|e| e.code.as_str());
            assert_eq!(code, malformed, "{name}: {value}");
            // Even a provider that checks no audience, subject or claim refuses them.
            let code = check_claims(&claims, &open, now)
                .err()
                .map(|e| e.code.as_str());
            assert_eq!(code, malformed, "{name}: {value}");
            let code = check_claims(&claims, &rules(), now)
                .err()
                .map(|e| e.code.as_str());
            assert_eq!(code, malformed, "{name}: {value}");
        }
        // Absent is not a wrong type; an array of strings is the other form of `aud`.
        let mut bare = with("aud", json!([]));
        bare.retain(|k, _| k == "iss");
        assert_eq!(check_claim_types(&bare), Ok(()));
        assert!(check_claims(&with("aud", json!(["aud"])), &rules(), now).is_ok());
    }
}
