//! `matches` follows RE2: its Perl classes and word boundaries are ASCII (the `regex` crate's
//! are Unicode, and the build leaves the crate's Unicode Perl tables out). Both the
//! configure-time compilation of literal patterns and the interpreter's own `matches` go
//! through `cel::re2` (vendor/cel), so checking it checks both; the filter's unit test
//! `literal_regex_agrees_with_the_crates_matches` checks that they agree.

use cel::re2::{regex, translate};

fn is_match(pattern: &str, subject: &str) -> bool {
    regex(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .is_match(subject)
}

#[test]
fn perl_classes_are_ascii() {
    assert!(is_match(r"^\d+$", "0123456789"));
    assert!(
        !is_match(r"^\d$", "٣"),
        "ARABIC-INDIC DIGIT THREE is no RE2 digit"
    );
    assert!(is_match(r"^\D$", "٣"));
    assert!(is_match(r"^\w+$", "a_Z9"));
    assert!(!is_match(r"^\w$", "é"));
    assert!(is_match(r"^\W$", "é"));
    assert!(is_match(r"^\s+$", " \t\n\r\u{c}"));
    assert!(
        !is_match(r"^\s$", "\u{a0}"),
        "NO-BREAK SPACE is no RE2 space"
    );
    assert!(!is_match(r"^\s$", "\u{b}"), "RE2's \\s has no vertical tab");
    assert!(is_match(r"^\S$", "\u{a0}"));
}

#[test]
fn classes_inside_brackets_and_escapes() {
    assert!(is_match(r"^[\d.]+$", "1.5"));
    assert!(!is_match(r"^[\d.]+$", "1,5"));
    assert!(is_match(r"^[^\d]+$", "ab"));
    assert!(!is_match(r"^[^\d]+$", "a1"));
    assert!(is_match(r"^[\w-]+$", "x-y_z"));
    assert!(is_match(r"^[]\d]+$", "]1"));
    assert!(is_match(r"^[[:alpha:]\d]+$", "ab12"));
    // An escaped backslash followed by `d` is a backslash and a `d`.
    assert!(is_match(r"^\\d$", "\\d"));
    assert_eq!(translate(r"a\.b"), r"a\.b");
    assert_eq!(translate("plain"), "plain");
}

#[test]
fn word_boundaries_are_ascii() {
    assert!(is_match(r"\bfoo\b", "a foo."));
    assert!(is_match(r"\bfoo\b", "éfooé"), "é is no RE2 word character");
    assert!(!is_match(r"\bfoo\b", "xfoo"));
    assert!(is_match(r"\Bo\B", "foo."));
}

#[test]
fn unicode_properties_and_case_folding_stay() {
    assert!(is_match(r"^\p{Greek}+$", "ΑΒΓ"));
    assert!(is_match(r"^\pL+$", "héllo"));
    assert!(is_match(r"^\p{Lu}$", "É"));
    assert!(is_match(r"(?i)^σ$", "Σ"));
    assert!(is_match(r"(?i)^hello$", "HeLLo"));
    assert!(is_match(r"^.$", "é"), "`.` is a character, not a byte");
}

#[test]
fn invalid_patterns_are_errors() {
    assert!(regex("[unclosed").is_err());
    assert!(regex("a{99999999}").is_err());
}
