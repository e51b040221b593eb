//! The README's console blocks are true: every command they show is run and what it prints
//! must have the shape the README shows: numbers may differ, except 0 (`0 failed` means
//! none), and `…` stands for any text, alone on a line for any number of lines. The `curl` to Envoy is answered by the filter through
//! the harness (`portcullis eval`), since a test can't count on a running Envoy.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// One `$ command` of a console block and the lines shown after it.
#[derive(Debug)]
struct Shown {
    line: usize,
    command: String,
    output: Vec<String>,
}

fn console_blocks(readme: &str) -> Vec<Shown> {
    let mut out: Vec<Shown> = Vec::new();
    let mut in_console = false;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_console = !in_console && line.trim() == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            out.push(Shown {
                line: i + 1,
                command: command.to_owned(),
                output: Vec::new(),
            });
        } else if let Some(last) = out.last_mut() {
            last.output.push(line.to_owned());
        }
    }
    out
}

/// Splits a command line as a POSIX shell would for the simple forms a README uses: words,
/// single-quoted words.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in command.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// A README line as a pattern: numbers other than 0 may differ, `…` is any text.
fn line_pattern(shown: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut chars = shown.chars().peekable();
    while let Some(c) = chars.next() {
        let digit = c.is_ascii_digit();
        let zero = c == '0' && !chars.peek().is_some_and(char::is_ascii_digit);
        if c == '…' {
            out.push(Piece::Any);
        } else if digit && !zero {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push(Piece::Number);
        } else {
            out.push(Piece::Char(c));
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Piece {
    Char(char),
    Number,
    Any,
}

fn line_matches(pattern: &[Piece], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((Piece::Char(c), rest)) => text.first() == Some(c) && line_matches(rest, &text[1..]),
        Some((Piece::Number, rest)) => {
            let digits = text.iter().take_while(|c| c.is_ascii_digit()).count();
            (1..=digits).any(|n| line_matches(rest, &text[n..]))
        }
        Some((Piece::Any, rest)) => (0..=text.len()).any(|n| line_matches(rest, &text[n..])),
    }
}

/// Whether `actual` has the shape of `shown` (blank lines ignored on both sides).
fn output_matches(shown: &[String], actual: &[String]) -> bool {
    let shown: Vec<&String> = shown.iter().filter(|l| !l.trim().is_empty()).collect();
    let actual: Vec<Vec<char>> = actual
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim_end().chars().collect())
        .collect();
    // matches[i][j]: shown[i..] matches actual[j..].
    let mut matches = vec![vec![false; actual.len() + 1]; shown.len() + 1];
    matches[shown.len()][actual.len()] = true;
    for i in (0..shown.len()).rev() {
        let any_lines = shown[i].trim() == "…";
        let pattern = line_pattern(shown[i].trim_end());
        for j in (0..=actual.len()).rev() {
            matches[i][j] = if any_lines {
                matches[i + 1][j] || (j < actual.len() && matches[i][j + 1])
            } else {
                j < actual.len() && line_matches(&pattern, &actual[j]) && matches[i + 1][j + 1]
            };
        }
    }
    matches[0][0]
}

fn portcullis(args: &[String]) -> (bool, Vec<String>) {
    let o = Command::new(common::portcullis_cli())
        .args(args)
        .current_dir(common::workspace_root())
        .env("PORTCULLIS_WASM", common::filter().path().unwrap())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (
        o.status.success(),
        text.lines().map(str::to_owned).collect(),
    )
}

fn reason_phrase(status: u64) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// `curl -i 127.0.0.1:10000/PATH` as Envoy with the example configuration would answer it:
/// the filter's own answer through the harness. Envoy adds headers of its own (`date`,
/// `server`, `content-length`), so the README may show fewer headers than Envoy sends, but
/// each one shown must be the filter's, and the status line and body must be exact.
fn check_curl(shown: &Shown) -> Result<(), String> {
    let url = words(&shown.command)
        .into_iter()
        .find(|w| w.starts_with("127.0.0.1:10000"))
        .ok_or("a curl to something other than the README's Envoy (127.0.0.1:10000)")?;
    let path = url.trim_start_matches("127.0.0.1:10000");
    let request = serde_json::json!({"path": path}).to_string();
    let (ok, out) = portcullis(&[
        "eval".into(),
        "policies/portcullis.yaml".into(),
        "--request".into(),
        request,
    ]);
    if !ok {
        return Err(format!("portcullis eval failed:\n{}", out.join("\n")));
    }
    let answer: Value = serde_json::from_str(&out.join("\n")).map_err(|e| e.to_string())?;
    let status = answer["status"].as_u64().unwrap_or(0);
    let mut lines = shown.output.iter();
    let status_line = format!("HTTP/1.1 {status} {}", reason_phrase(status));
    let first = lines.next().map(String::as_str).unwrap_or("");
    if first != status_line {
        return Err(format!(
            "status line: README `{first}`, the filter `{status_line}`"
        ));
    }
    let headers: Vec<(String, String)> = answer["response_headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| Some((h[0].as_str()?.to_owned(), h[1].as_str()?.to_owned())))
        .collect();
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(": ")
            .ok_or_else(|| format!("not a header line: `{line}`"))?;
        if !headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
        {
            return Err(format!(
                "header `{line}` is not in the filter's answer: {headers:?}"
            ));
        }
    }
    let body: Vec<&str> = lines.map(String::as_str).collect();
    let shown_body: Value = serde_json::from_str(&body.join("\n"))
        .map_err(|e| format!("the README's body is not JSON: {e}"))?;
    let actual_body: Value = serde_json::from_str(answer["response_body"].as_str().unwrap_or(""))
        .map_err(|e| format!("the filter's body is not JSON: {e}"))?;
    if shown_body != actual_body {
        return Err(format!(
            "body: README {shown_body}, the filter {actual_body}"
        ));
    }
    Ok(())
}

fn check(shown: &Shown) -> Result<(), String> {
    let args = words(&shown.command);
    match args.first().map(String::as_str) {
        Some("target/debug/portcullis") => {
            let (_, out) = portcullis(&args[1..]);
            if output_matches(&shown.output, &out) {
                Ok(())
            } else {
                Err(format!(
                    "it printed:\n{}\n\nthe README shows:\n{}",
                    out.join("\n"),
                    shown.output.join("\n")
                ))
            }
        }
        Some("curl") => check_curl(shown),
        _ => Err(
            "a command this test does not know how to check: teach harness/tests/readme.rs".into(),
        ),
    }
}

#[test]
fn readme_console_blocks_are_what_the_commands_print() {
    let path: PathBuf = common::workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let blocks = console_blocks(&readme);
    let commands: Vec<&str> = blocks.iter().map(|b| b.command.as_str()).collect();
    // The checks this issue asked for must not silently disappear with an edit.
    for needed in [
        "target/debug/portcullis test policies/",
        "target/debug/portcullis bundle",
        "curl",
    ] {
        assert!(
            commands.iter().any(|c| c.starts_with(needed)),
            "README.md has no console block running `{needed}`: {commands:?}"
        );
    }
    let failures: Vec<String> = blocks
        .iter()
        .filter_map(|b| {
            check(b)
                .err()
                .map(|e| format!("README.md:{}: `$ {}`: {e}", b.line, b.command))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn shape_matching_ignores_counts_and_fills_ellipses() {
    let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
    let shown = lines("test a::x ... ok\n…\n14 passed, 0 failed");
    assert!(output_matches(
        &shown,
        &lines("\ntest a::x ... ok\ntest b ... ok\n\n61 passed, 0 failed")
    ));
    assert!(output_matches(
        &shown,
        &lines("test a::x ... ok\n3 passed, 0 failed")
    ));
    assert!(!output_matches(
        &shown,
        &lines("test a::x ... ok\n61 passed, 1 failed")
    ));
    assert!(!output_matches(
        &shown,
        &lines("test a::y ... ok\n61 passed, 0 failed")
    ));
    assert!(!output_matches(
        &shown,
        &lines("test a::x ... ok\n61 passed, 0 failed\nmore")
    ));
    let shown = lines("value: \"{\\\"jwt\\\": …}\"");
    assert!(output_matches(
        &shown,
        &lines("value: \"{\\\"jwt\\\": {\\\"a\\\": 1}}\"")
    ));
    assert!(!output_matches(
        &shown,
        &lines("value: \"{\\\"policy\\\": 1}\"")
    ));
    assert_eq!(words("a 'b c' d"), vec!["a", "b c", "d"]);
}
