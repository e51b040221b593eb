//! `matches` patterns are RE2 syntax. Where RE2 and the `regex` crate read the same pattern
//! differently, the pattern is rewritten before compiling: RE2's Perl classes `\d \w \s`
//! (and their negations) and the word boundaries `\b \B` are ASCII, the crate's Unicode.
//! Spelling them out also lets the crate go without its Unicode Perl-class tables (and the
//! `age`, `bool` and segmentation property tables, which RE2 has no syntax for).

use std::borrow::Cow;

/// Compiles an RE2 pattern.
pub fn regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&translate(pattern))
}

/// The pattern with RE2's ASCII Perl classes and word boundaries spelled out for the crate.
pub fn translate(pattern: &str) -> Cow<'_, str> {
    if !pattern.contains('\\') {
        return Cow::Borrowed(pattern);
    }
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    // Depth of `[...]` classes (the crate nests them); `\b` is only a boundary outside one.
    let mut class = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('d') => out.push_str("[0-9]"),
                Some('D') => out.push_str("[^0-9]"),
                Some('w') => out.push_str("[0-9A-Za-z_]"),
                Some('W') => out.push_str("[^0-9A-Za-z_]"),
                Some('s') => out.push_str("[\\t\\n\\f\\r ]"),
                Some('S') => out.push_str("[^\\t\\n\\f\\r ]"),
                Some('b') if class == 0 => out.push_str("(?-u:\\b)"),
                Some('B') if class == 0 => out.push_str("(?-u:\\B)"),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            '[' => {
                class += 1;
                out.push('[');
                // A `]` right after `[` or `[^` is a literal.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if class > 0 => {
                class -= 1;
                out.push(']');
            }
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}
