//! Configuration errors name line and column in characters, through the Pratt parser the
//! filter uses (its own positions are byte offsets): with non-ASCII text before the error, a
//! byte column would be off.

use portcullis_filter::expr::{Expr, ExprSource};

fn error(text: &str) -> (usize, usize, String) {
    let e = Expr::compile(&ExprSource::Inline(text.to_owned())).unwrap_err();
    (e.line, e.column, e.message)
}

#[test]
fn syntax_errors_are_located_in_characters() {
    // `(` is at character 14 (byte 16): a syntax error at the end of the text, column ≥ 14.
    let (line, column, message) = error("'éé' == 'a' + (");
    assert_eq!(line, 1, "{message}");
    assert!((15..=16).contains(&column), "column {column}: {message}");
    let (line, column, _) = error("'é'.size() == 1 &&\n  'ü' == )");
    assert_eq!((line, column), (2, 10));
}

#[test]
fn checker_errors_point_at_the_name_in_characters() {
    let (line, column, message) = error("'ééé' == 'a' || nosuch(1)");
    assert_eq!((line, column), (1, 17), "{message}");
    assert!(message.contains("nosuch"), "{message}");
    let (line, column, message) = error("'ü' == 'a' ||\n request.path.frobnicate()");
    assert_eq!((line, column), (2, 15), "{message}");
    let (line, column, message) = error("'ü' == 'a' || request.pth == '/'");
    assert_eq!((line, column), (1, 23), "{message}");
}

#[test]
fn an_invalid_literal_regex_is_located_in_characters() {
    let (line, column, message) = error("'é' == 'a' || request.path.matches('[x')");
    assert_eq!((line, column), (1, 36), "{message}");
    assert!(message.contains("invalid regex"), "{message}");
}
