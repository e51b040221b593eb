//! A lexical scan of CEL text, enough for the lint: the dotted names an expression reads
//! (`response.code`, `jwt.claims.sub`) with their offsets, and the expression without its
//! comments. String literals are skipped, so a name inside a string is never reported.

/// A dotted name read by the expression, e.g. `request.headers` (member chains only: an
/// index or a call ends it), and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub offset: usize,
}

/// The source with comments and whitespace runs collapsed to single spaces, trimmed: to
/// compare expressions and spot constants.
pub fn normalized(source: &str) -> String {
    let mut out = String::new();
    let mut pending_space = false;
    for token in tokens(source) {
        match token {
            Token::Space => pending_space = true,
            Token::Code(start, end) | Token::Literal(start, end) => {
                if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                out.push_str(source.get(start..end).unwrap_or(""));
            }
        }
    }
    out
}

/// The contents of every string literal (quotes dropped, escapes left as written).
pub fn string_literals(source: &str) -> Vec<String> {
    tokens(source)
        .into_iter()
        .filter_map(|t| match t {
            Token::Literal(start, end) => {
                let text = source.get(start..end)?;
                let quote = text.get(..1)?;
                let triple = quote.repeat(3);
                let inner = if text.len() >= 6 && text.starts_with(&triple) {
                    text.get(3..text.len() - 3)?
                } else {
                    text.get(1..text.len().saturating_sub(1).max(1))?
                };
                Some(inner.to_owned())
            }
            _ => None,
        })
        .collect()
}

/// Every dotted name the expression reads, in order.
pub fn references(source: &str) -> Vec<Reference> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    for token in tokens(source) {
        let Token::Code(start, end) = token else {
            continue;
        };
        let mut i = start;
        while i < end {
            let b = bytes.get(i).copied().unwrap_or(0);
            let preceded_by_dot = i > 0 && bytes.get(i - 1) == Some(&b'.');
            if is_ident_start(b) && !preceded_by_dot && !(i > start && is_ident(bytes[i - 1])) {
                let begin = i;
                let mut j = i;
                loop {
                    while j < end && is_ident(bytes[j]) {
                        j += 1;
                    }
                    if j + 1 < end && bytes[j] == b'.' && is_ident_start(bytes[j + 1]) {
                        j += 1;
                        continue;
                    }
                    break;
                }
                // A dotted name followed by `(` is a method call: drop the method name.
                let mut name = &source[begin..j];
                if j < end && bytes[j] == b'(' {
                    name = match name.rfind('.') {
                        Some(dot) => &name[..dot],
                        None => "",
                    };
                }
                if name.contains('.') {
                    out.push(Reference {
                        name: name.to_owned(),
                        offset: begin,
                    });
                }
                i = j.max(i + 1);
            } else {
                i += 1;
            }
        }
    }
    out
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

enum Token {
    /// Whitespace or a comment.
    Space,
    /// Code between strings and comments (byte range).
    Code(usize, usize),
    /// One whole string literal, quotes included (byte range).
    Literal(usize, usize),
}

/// Splits the source into code runs, string literals and spaces/comments.
fn tokens(source: &str) -> Vec<Token> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut run_start = 0;
    let flush = |out: &mut Vec<Token>, from: usize, to: usize| {
        if to > from {
            out.push(Token::Code(from, to));
        }
    };
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            flush(&mut out, run_start, i);
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            out.push(Token::Space);
            run_start = i;
        } else if b.is_ascii_whitespace() {
            flush(&mut out, run_start, i);
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            out.push(Token::Space);
            run_start = i;
        } else if b == b'"' || b == b'\'' {
            // A string literal (raw or not, single or triple quoted): skipped whole. A prefix
            // such as r/b stays in the code run before it, harmlessly.
            flush(&mut out, run_start, i);
            let start = i;
            let triple = bytes.get(i + 1) == Some(&b) && bytes.get(i + 2) == Some(&b);
            i += if triple { 3 } else { 1 };
            while i < bytes.len() {
                if bytes[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if triple {
                    if bytes[i] == b && bytes.get(i + 1) == Some(&b) && bytes.get(i + 2) == Some(&b)
                    {
                        i += 3;
                        break;
                    }
                } else if bytes[i] == b {
                    i += 1;
                    break;
                }
                i += 1;
            }
            i = i.min(bytes.len());
            out.push(Token::Literal(start, i));
            run_start = i;
        } else {
            i += 1;
        }
    }
    flush(&mut out, run_start, bytes.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(source: &str) -> Vec<String> {
        references(source).into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn finds_dotted_names_and_their_offsets() {
        let refs = references("request.method == \"GET\" && response.code == 200");
        assert_eq!(
            refs,
            vec![
                Reference {
                    name: "request.method".into(),
                    offset: 0
                },
                Reference {
                    name: "response.code".into(),
                    offset: 27
                }
            ]
        );
    }

    #[test]
    fn skips_strings_comments_and_method_names() {
        assert_eq!(
            names("// response.code here\n\"upstream.address\" in request.headers && jwt.claims.scope.split(\" \")"),
            vec!["request.headers", "jwt.claims.scope"]
        );
        assert_eq!(names("size(x) > 0"), Vec::<String>::new());
    }

    #[test]
    fn string_literal_contents() {
        assert_eq!(
            string_literals(r#"request.url_path.startsWith("/public/") || x == '/healthz'"#),
            vec!["/public/", "/healthz"]
        );
    }

    #[test]
    fn normalizes_comments_and_space() {
        assert_eq!(normalized("  // always\n  true \n"), "true");
        assert_eq!(normalized("a  &&\n b // c"), "a && b");
    }

    proptest::proptest! {
        /// Any text: no panic, and every reference is the text at its offset.
        #[test]
        fn references_point_at_themselves(source in "\\PC{0,80}") {
            for r in references(&source) {
                proptest::prop_assert_eq!(source.get(r.offset..r.offset + r.name.len()), Some(r.name.as_str()));
            }
            let _ = normalized(&source);
            let _ = string_literals(&source);
        }

        /// A name embedded in code is found wherever it stands; inside a string it is not.
        #[test]
        fn embedded_names_are_found_outside_strings(prefix in "[ (!]{0,3}", field in "[a-z_]{1,8}") {
            let name = format!("response.{field}");
            let code = format!("{prefix}{name} == 1");
            let found = references(&code);
            proptest::prop_assert_eq!(found.first().map(|r| r.name.clone()), Some(name.clone()));
            let quoted = format!("\"{name}\" == x");
            proptest::prop_assert!(references(&quoted).is_empty());
        }
    }
}
