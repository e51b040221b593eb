//! The `portcullis` CLI, end to end through the real .wasm.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let keys = common::workspace_root().join("policies/keys");
    for f in ["jwks.json", "private.jwks.json"] {
        std::fs::copy(keys.join(f), dir.join("keys").join(f)).unwrap();
    }
    std::fs::write(dir.join("admin.cel"), "\"admin\" in jwt.claims.groups\n").unwrap();
    std::fs::write(
        dir.join("portcullis.yaml"),
        r#"
jwt:
  providers:
    - name: local
      issuer: https://issuer.test
      audiences: [api]
      jwks: {file: keys/jwks.json}
  requirements:
    - name: public
      when: request.path.startsWith("/public/")
      require: {allow_missing: {}}
  default_requirement: {provider: local}
policy:
  default_action: deny
  rules:
    - name: public
      allow: request.path.startsWith("/public/")
    - name: admin
      when: request.path.startsWith("/admin")
      allow: {file: admin.cel}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("ok.test.yaml"),
        r#"
config: portcullis.yaml
cases:
  - name: public page
    request: {method: GET, path: /public/x}
    expect: {status: 200, rule: public}
  - name: admin with the group
    request: {method: GET, path: /admin/users, source: "10.1.2.3:5555", tls: {mtls: true}}
    token: {claims: {sub: alice, groups: [admin]}, kid: demo-ec-1}
    expect: {status: 200, rule: admin}
  - name: admin without the group
    request: {method: GET, path: /admin/users}
    token: {claims: {sub: bob, groups: [dev]}}
    expect: {status: 403}
  - name: expired token
    time: 1700000000
    request: {method: GET, path: /admin/users}
    token: {claims: {sub: alice, groups: [admin], exp: 1600000000}}
    expect: {status: 401}
"#,
    )
    .unwrap();
    dir
}

fn wasm() -> PathBuf {
    common::filter().path().unwrap().to_path_buf()
}

fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(common::portcullis_cli())
        .args(args)
        .current_dir(cwd)
        .env("PORTCULLIS_WASM", wasm())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn bundle_inlines_cel_and_jwks_files() {
    let dir = scratch("bundle");
    let o = run(&["bundle", "portcullis.yaml"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["policy"]["rules"][1]["allow"],
        serde_json::json!({"file": "admin.cel", "source": "\"admin\" in jwt.claims.groups\n"})
    );
    assert!(v["jwt"]["providers"][0]["jwks"]["inline"]["keys"].is_array());

    let o = run(
        &[
            "bundle",
            "portcullis.yaml",
            "--envoy-snippet",
            "-o",
            "out/snippet.yaml",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    let snippet = std::fs::read_to_string(dir.join("out/snippet.yaml")).unwrap();
    assert!(snippet.contains("envoy.filters.http.wasm"));
    assert!(snippet.contains("type.googleapis.com/google.protobuf.StringValue"));
}

#[test]
fn bundle_errors_name_file_line_and_column() {
    let dir = scratch("errors");
    std::fs::write(
        dir.join("broken.yaml"),
        "policy:\n  rules: [\n    {name: x\n",
    )
    .unwrap();
    let o = run(&["bundle", "broken.yaml"], &dir);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("broken.yaml:"), "{t}");
    assert!(
        t.contains("line") || t.contains(":4:") || t.contains(":3:"),
        "{t}"
    );

    std::fs::write(dir.join("admin.cel"), "jwt.claims.groups +\n").unwrap();
    let o = run(&["bundle", "portcullis.yaml"], &dir);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("admin.cel"), "{t}");
    assert!(t.contains("policy.rules[1].allow"), "{t}");

    std::fs::remove_file(dir.join("admin.cel")).unwrap();
    let o = run(&["bundle", "portcullis.yaml"], &dir);
    assert!(text(&o).contains("cannot read"), "{}", text(&o));
}

#[test]
fn test_command_reports_like_cargo_test() {
    let dir = scratch("test");
    let o = run(&["test", "."], &dir);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("test ./ok.test.yaml::admin with the group ... ok"),
        "{t}"
    );
    assert_eq!(
        t.trim_end().lines().last(),
        Some("4 passed, 0 failed"),
        "{t}"
    );

    std::fs::write(
        dir.join("bad.test.yaml"),
        "config: portcullis.yaml\ncases:\n  - name: wrong\n    request: {path: /public/x}\n    expect: {status: 403, rule: admin}\n",
    )
    .unwrap();
    let o = run(&["test", "bad.test.yaml", "ok.test.yaml"], &dir);
    let t = text(&o);
    assert!(!o.status.success());
    assert!(t.contains("test bad.test.yaml::wrong ... FAILED"), "{t}");
    assert!(t.contains("status: expected 403, got 200"), "{t}");
    assert!(t.contains("rule: expected admin, got public"), "{t}");
    assert_eq!(
        t.trim_end().lines().last(),
        Some("4 passed, 1 failed"),
        "{t}"
    );

    let o = run(&["test", "bad.test.yaml", "--format", "json"], &dir);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failed"], 1);
}

#[test]
fn eval_prints_decision_and_trace() {
    let dir = scratch("eval");
    let o = run(
        &[
            "eval",
            "portcullis.yaml",
            "--request",
            r#"{"request": {"path": "/admin/x"}, "token": {"claims": {"sub": "a", "groups": ["admin"]}}}"#,
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"], "admin");
    assert_eq!(v["decision_header"], "allow; rule=admin");

    let o = run(
        &[
            "eval",
            "portcullis.yaml",
            "--request",
            r#"{"path": "/admin/x"}"#,
        ],
        &dir,
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], 401);
}

#[test]
fn replay_counts_and_diffs() {
    let dir = scratch("replay");
    let other = std::fs::read_to_string(dir.join("portcullis.yaml"))
        .unwrap()
        .replace("default_action: deny", "default_action: allow");
    std::fs::write(dir.join("other.yaml"), other).unwrap();
    std::fs::write(
        dir.join("traffic.jsonl"),
        concat!(
            "{\"method\": \"GET\", \"path\": \"/public/a\"}\n",
            "{\"path\": \"/api\", \"token\": {\"claims\": {\"sub\": \"x\"}}}\n",
            "{\"request\": {\"path\": \"/admin\"}, \"token\": {\"claims\": {\"sub\": \"x\", \"groups\": [\"admin\"]}}}\n",
        ),
    )
    .unwrap();
    let o = run(
        &[
            "replay",
            "portcullis.yaml",
            "traffic.jsonl",
            "--against",
            "other.yaml",
        ],
        &dir,
    );
    let t = text(&o);
    // A difference is a failure unless asked otherwise: a CI step comparing two policies
    // must not pass while they disagree.
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("3 requests"), "{t}");
    assert!(t.contains("allow rule=public"), "{t}");
    assert!(t.contains("deny 403 rule=-"), "{t}");
    assert!(t.contains("line 2: GET /api"), "{t}");
    assert!(t.contains("1 requests differ"), "{t}");

    let o = run(
        &[
            "replay",
            "portcullis.yaml",
            "traffic.jsonl",
            "--against",
            "other.yaml",
            "--allow-differences",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 requests differ"), "{}", text(&o));

    let o = run(
        &[
            "replay",
            "portcullis.yaml",
            "traffic.jsonl",
            "--against",
            "portcullis.yaml",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 requests differ"), "{}", text(&o));
}

#[test]
fn every_command_has_help_with_all_its_options() {
    let dir = scratch("help");
    let expected: [(&str, &[&str]); 5] = [
        (
            "bundle",
            &["--output", "-o", "--envoy-snippet", "--wasm-path"],
        ),
        ("test", &["--wasm", "--format"]),
        ("eval", &["--request", "--wasm"]),
        ("replay", &["--against", "--allow-differences", "--wasm"]),
        ("bench", &["--requests", "--request", "--wasm"]),
    ];
    for (command, options) in expected {
        let o = run(&[command, "--help"], &dir);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{command} --help: {}", text(&o));
        assert!(out.contains("Usage: portcullis"), "{command} --help: {out}");
        for option in options {
            assert!(
                out.contains(option),
                "{command} --help lacks {option}: {out}"
            );
        }
    }
    let o = run(&["--help"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&[], &dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&["bundle", "--no-such-option", "portcullis.yaml"], &dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--no-such-option"), "{}", text(&o));
    let o = run(&["bench", "portcullis.yaml", "--requests", "many"], &dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn bundle_errors_point_at_the_yaml_line_and_name_the_rule() {
    let dir = scratch("located");
    let config = std::fs::read_to_string(dir.join("portcullis.yaml")).unwrap();
    std::fs::write(
        dir.join("typo.yaml"),
        config.replace(
            "      allow: {file: admin.cel}",
            "      alow: {file: admin.cel}",
        ),
    )
    .unwrap();
    let o = run(&["bundle", "typo.yaml"], &dir);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    let line = config
        .lines()
        .position(|l| l.contains("allow: {file: admin.cel}"))
        .unwrap()
        + 1;
    assert!(
        t.contains(&format!(
            "typo.yaml:{line}:7: field `policy.rules[1].alow` (rule `admin`): unknown field `alow`"
        )),
        "{t}"
    );
    // The JSON position of the converted document means nothing to the reader.
    assert!(!t.contains(" at line "), "{t}");

    std::fs::write(
        dir.join("limits.yaml"),
        format!("{config}rate_limits:\n  limits:\n    - {{name: per-user, key: jwt.claims.sub, requests: many, period_s: 1}}\n"),
    )
    .unwrap();
    let o = run(&["bundle", "limits.yaml"], &dir);
    let t = text(&o);
    let line = config.lines().count() + 3;
    assert!(
        t.contains(&format!(
            "limits.yaml:{line}:45: field `rate_limits.limits[0].requests` (limit `per-user`): invalid type"
        )),
        "{t}"
    );

    // A CEL error in an inline expression: the YAML position of the field, the expression's own.
    std::fs::write(
        dir.join("cel.yaml"),
        config.replace(
            "allow: request.path.startsWith(\"/public/\")",
            "allow: request.path.startsWith(",
        ),
    )
    .unwrap();
    let o = run(&["bundle", "cel.yaml"], &dir);
    let t = text(&o);
    let line = config
        .lines()
        .position(|l| l.contains("allow: request.path.startsWith"))
        .unwrap()
        + 1;
    assert!(
        t.contains(&format!("cel.yaml:{line}:7: field `policy.rules[0].allow` (rule `public`): CEL error at line 1, column")),
        "{t}"
    );

    // A .cel file in another directory is named from where the command runs.
    std::fs::create_dir_all(dir.join("sub/keys")).unwrap();
    std::fs::copy(dir.join("keys/jwks.json"), dir.join("sub/keys/jwks.json")).unwrap();
    std::fs::write(dir.join("sub/portcullis.yaml"), &config).unwrap();
    std::fs::write(dir.join("sub/admin.cel"), "\"admin\" in\n").unwrap();
    let o = run(&["bundle", "sub/portcullis.yaml"], &dir);
    let t = text(&o);
    assert!(t.contains("sub/portcullis.yaml:"), "{t}");
    assert!(
        t.contains("(rule `admin`): CEL error at sub/admin.cel:"),
        "{t}"
    );
}

#[test]
fn test_file_errors_name_the_line_and_the_case() {
    let root = common::workspace_root();
    let o = run(
        &["test", "harness/tests/fixtures/asserts-nothing.test.yaml"],
        &root,
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let file = "harness/tests/fixtures/asserts-nothing.test.yaml";
    assert!(t.contains(&format!("test {file}::good ... ok")), "{t}");
    assert!(
        t.contains(&format!("test {file}::checks nothing ... FAILED")),
        "{t}"
    );
    assert!(
        t.contains(&format!("test {file}::misspelt ... FAILED")),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "{file}:10:5: field `cases[1].expect` (case `checks nothing`): the case asserts nothing"
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "{file}:14:7: field `cases[2].expect.stauts` (case `misspelt`): unknown field `stauts`"
        )),
        "{t}"
    );
    assert_eq!(
        t.trim_end().lines().last(),
        Some("1 passed, 2 failed"),
        "{t}"
    );

    let dir = scratch("testfile");
    std::fs::write(
        dir.join("top.test.yaml"),
        "config: portcullis.yaml\ncase:\n  - name: x\n",
    )
    .unwrap();
    let o = run(&["test", "top.test.yaml"], &dir);
    let t = text(&o);
    assert!(t.contains("test top.test.yaml::(load) ... FAILED"), "{t}");
    assert!(
        t.contains("top.test.yaml:2:1: field `case`: unknown field `case`"),
        "{t}"
    );

    std::fs::write(
        dir.join("empty.test.yaml"),
        "config: portcullis.yaml\ncases: []\n",
    )
    .unwrap();
    let o = run(&["test", "empty.test.yaml"], &dir);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("empty.test.yaml:2:1: field `cases`: no cases"),
        "{t}"
    );

    let o = run(&["test", "no-such-dir"], &dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn bench_runs() {
    let dir = scratch("bench");
    let o = run(&["bench", "portcullis.yaml", "--requests", "200"], &dir);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("requests/s"), "{t}");
}

/// `portcullis run` on the probe's example suite, in each output format.
#[test]
fn run_executes_a_generic_suite_in_text_json_and_junit() {
    let wasm = common::probe_path();
    let suite = common::workspace_root().join("harness/test-filters/probe/probe.suite.yaml");
    let run = |format: &str| {
        Command::new(common::portcullis_cli())
            .args([
                "run",
                suite.to_str().unwrap(),
                "--wasm",
                wasm.to_str().unwrap(),
            ])
            .args(["--format", format])
            .output()
            .unwrap()
    };
    let text = run("text");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&text.stderr)
    );
    assert!(
        stdout.trim_end().ends_with("8 passed, 0 failed"),
        "{stdout}"
    );
    let json: Value = serde_json::from_slice(&run("json").stdout).unwrap();
    assert_eq!(json["passed"], 8);
    let junit = String::from_utf8_lossy(&run("junit").stdout).into_owned();
    assert!(junit.contains("tests=\"8\" failures=\"0\""), "{junit}");
}

/// A failing expectation fails the run (exit 1) and says what differed.
#[test]
fn run_reports_a_mismatch() {
    let dir = std::env::temp_dir().join(format!("portcullis-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let suite = dir.join("bad.suite.yaml");
    std::fs::write(
        &suite,
        "configuration: x\ncases:\n  - name: wrong status\n    request: {headers: {x-probe: local}}\n    expect: {status: 200}\n  - name: asserts nothing\n    expect: {}\n",
    )
    .unwrap();
    let out = Command::new(common::portcullis_cli())
        .args(["run", suite.to_str().unwrap(), "--wasm"])
        .arg(common::probe_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("status: expected 200, got 403"), "{stdout}");
    assert!(stdout.contains("expects nothing"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("0 passed, 2 failed"),
        "{stdout}"
    );
}

/// `portcullis test --format junit` and `--min-coverage`.
#[test]
fn test_junit_and_min_coverage() {
    let dir = scratch("junit");
    let out = run(&["test", "ok.test.yaml", "--format", "junit"], &dir);
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{xml}");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<testcase classname="), "{xml}");
    // Two rules, one of them guarded: 100% needs the guard seen true and false.
    let out = run(&["test", "ok.test.yaml", "--min-coverage", "100"], &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("coverage: "), "{stdout}");
    let complete = stdout.contains("(100.0%)");
    assert_eq!(out.status.success(), complete, "{stdout}");
}
