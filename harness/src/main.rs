//! `portcullis`: bundle, test, eval, replay and bench Portcullis configurations through the
//! real `.wasm` on the harness's proxy-wasm host. See docs/harness.md.

use portcullis_harness::bundle;
use portcullis_harness::cases::{self, Case, RequestSpec, Runner, TokenSpec, Verdict};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
portcullis — Portcullis configurations through the real .wasm

USAGE:
  portcullis bundle CONFIG.yaml [-o OUT.json] [--envoy-snippet] [--wasm-path PATH]
  portcullis test PATH... [--wasm FILE] [--format text|json]
  portcullis eval CONFIG.yaml --request JSON [--wasm FILE]
  portcullis replay CONFIG.yaml TRAFFIC.jsonl [--against OTHER.yaml] [--wasm FILE]
  portcullis bench CONFIG.yaml [--requests N] [--request JSON] [--wasm FILE]

The .wasm: --wasm, else $PORTCULLIS_WASM, else target/wasm32-wasip1/release/portcullis_filter.wasm
searched upward from the current directory.
";

struct Args {
    positional: Vec<String>,
    options: BTreeMap<String, String>,
    flags: Vec<String>,
}

fn parse_args(args: &[String], with_value: &[&str]) -> Result<Args, String> {
    let mut a = Args {
        positional: Vec::new(),
        options: BTreeMap::new(),
        flags: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(name) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-').filter(|n| n.len() == 1))
        {
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (name.to_owned(), None),
            };
            if with_value.contains(&name.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or(format!("--{name} needs a value"))?,
                };
                a.options.insert(name, v);
            } else {
                a.flags.push(name);
            }
        } else {
            a.positional.push(arg.clone());
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match argv.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        "bundle" => cmd_bundle(rest),
        "test" => cmd_test(rest),
        "eval" => cmd_eval(rest),
        "replay" => cmd_replay(rest),
        "bench" => cmd_bench(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(true)
        }
        other => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn wasm_path(a: &Args) -> Result<PathBuf, String> {
    cases::find_wasm(a.options.get("wasm").map(Path::new))
}

fn cmd_bundle(args: &[String]) -> Result<bool, String> {
    let a = parse_args(args, &["o", "output", "wasm-path"])?;
    let [config] = a.positional.as_slice() else {
        return Err("usage: portcullis bundle CONFIG.yaml [-o OUT.json] [--envoy-snippet]".into());
    };
    let value = bundle::bundle(Path::new(config))?;
    let text = if a.flags.iter().any(|f| f == "envoy-snippet") {
        let wasm = a
            .options
            .get("wasm-path")
            .map(String::as_str)
            .unwrap_or("/etc/envoy/portcullis.wasm");
        bundle::envoy_snippet(&value, wasm)
    } else {
        serde_json::to_string_pretty(&value).map_err(|e| e.to_string())? + "\n"
    };
    match a.options.get("o").or_else(|| a.options.get("output")) {
        Some(out) => {
            if let Some(parent) = Path::new(out)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|e| format!("{out}: {e}"))?;
            }
            std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))?;
        }
        None => print!("{text}"),
    }
    Ok(true)
}

fn cmd_test(args: &[String]) -> Result<bool, String> {
    let a = parse_args(args, &["wasm", "format"])?;
    if a.positional.is_empty() {
        return Err("usage: portcullis test PATH...".into());
    }
    let json_out = a.options.get("format").map(String::as_str) == Some("json");
    let wasm = wasm_path(&a)?;
    let paths: Vec<PathBuf> = a.positional.iter().map(PathBuf::from).collect();
    let files = cases::collect_test_files(&paths)?;
    let total: usize = 0;
    let _ = total;
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures: Vec<(String, Vec<String>)> = Vec::new();
    let mut results = Vec::new();
    if !json_out {
        println!();
    }
    for file in &files {
        let display = file.display().to_string();
        let outcome = cases::load_test_file(file).and_then(|tf| {
            let base = file.parent().unwrap_or(Path::new("."));
            let config = base.join(&tf.config);
            let keys = tf.signing_keys.as_ref().map(|k| base.join(k));
            let runner = Runner::new(&config, keys.as_deref(), &wasm)?;
            Ok((tf, runner))
        });
        let (tf, runner) = match outcome {
            Ok(x) => x,
            Err(e) => {
                failed += 1;
                let name = format!("{display}::(load)");
                if !json_out {
                    println!("test {name} ... FAILED");
                }
                results.push(
                    json!({"file": display, "case": null, "ok": false, "failures": [e.clone()]}),
                );
                failures.push((name, vec![e]));
                continue;
            }
        };
        for case in &tf.cases {
            let name = format!("{display}::{}", case.name);
            let (ok, lines, verdict) = match runner.run_case(case) {
                Ok((v, _ex, f)) => (f.is_empty(), f, Some(v)),
                Err(e) => (false, vec![e], None),
            };
            if !json_out {
                println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
            }
            results.push(json!({
                "file": display, "case": case.name, "ok": ok, "failures": lines, "verdict": verdict,
            }));
            if ok {
                passed += 1;
            } else {
                failed += 1;
                failures.push((name, lines));
            }
        }
    }
    if json_out {
        let out = json!({"results": results, "passed": passed, "failed": failed});
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        if !failures.is_empty() {
            println!("\nfailures:\n");
            for (name, lines) in &failures {
                println!("---- {name} ----");
                for l in lines {
                    println!("  {l}");
                }
                println!();
            }
        }
        println!("\n{passed} passed, {failed} failed");
    }
    Ok(failed == 0)
}

/// A request line: a case-like object (`request`, `token`, `time`) or a bare request with an
/// optional `token`.
#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    request: Option<RequestSpec>,
    #[serde(default)]
    token: Option<TokenSpec>,
    #[serde(default)]
    time: Option<u64>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

fn parse_line(text: &str) -> Result<(RequestSpec, Option<TokenSpec>, Option<u64>), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut rest = line.rest;
    rest.remove("name");
    rest.remove("expect");
    let request = match line.request {
        Some(r) => r,
        None => serde_json::from_value(Value::Object(rest)).map_err(|e| e.to_string())?,
    };
    Ok((request, line.token, line.time))
}

fn cmd_eval(args: &[String]) -> Result<bool, String> {
    let a = parse_args(args, &["wasm", "request"])?;
    let [config] = a.positional.as_slice() else {
        return Err("usage: portcullis eval CONFIG.yaml --request JSON".into());
    };
    let request = a
        .options
        .get("request")
        .cloned()
        .unwrap_or_else(|| "{}".into());
    let (spec, token, time) = parse_line(&request).map_err(|e| format!("--request: {e}"))?;
    let runner = Runner::new(Path::new(config), None, &wasm_path(&a)?)?;
    let case = Case {
        name: "eval".into(),
        request: spec,
        token,
        time,
        repeat: None,
        expect: Default::default(),
    };
    let host = portcullis_harness::Host::new();
    let mut vm = runner.start_on(&host)?;
    if let Some(t) = case.time {
        host.set_unix_seconds(t);
    }
    let before = host.metrics();
    let req = runner.request(&case.request, case.token.as_ref(), host.now_unix_seconds())?;
    let ex = vm.request(&req).map_err(|e| e.to_string())?;
    // The filter flushes its counters on ticks: let a second of virtual time pass.
    vm.advance(std::time::Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    let verdict = Verdict::from_exchange(&ex);
    let counters: BTreeMap<String, i64> = host
        .metrics()
        .into_iter()
        .filter_map(|(name, m)| {
            let old = before.get(&name).map(|o| o.value).unwrap_or(0);
            (m.value != old).then(|| (name, m.value - old))
        })
        .collect();
    let out = json!({
        "decision": verdict.decision,
        "status": verdict.status,
        "rule": verdict.rule,
        "error": verdict.error,
        "reason": verdict.reason,
        "decision_header": ex.upstream_header(bundle::DECISION_HEADER),
        "response_headers": ex.response_headers,
        "response_body": String::from_utf8_lossy(&ex.response_body),
        "upstream_request_headers": ex.upstream_request_headers,
        "log": ex.logs.iter().map(|l| format!("[{}] {}", l.level, l.message)).collect::<Vec<_>>(),
        "counters": counters,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
    );
    Ok(true)
}

fn outcome_key(v: &Verdict) -> String {
    let kind = match (v.decision.as_str(), v.status) {
        ("allow", _) => "allow".to_owned(),
        (_, 429) => "429".to_owned(),
        ("deny", s) => format!("deny {s}"),
        (d, _) => d.to_owned(),
    };
    format!("{kind} rule={}", v.rule.as_deref().unwrap_or("-"))
}

fn cmd_replay(args: &[String]) -> Result<bool, String> {
    let a = parse_args(args, &["wasm", "against"])?;
    let [config, traffic] = a.positional.as_slice() else {
        return Err(
            "usage: portcullis replay CONFIG.yaml TRAFFIC.jsonl [--against OTHER.yaml]".into(),
        );
    };
    let wasm = wasm_path(&a)?;
    let runner = Runner::new(Path::new(config), None, &wasm)?;
    let other = match a.options.get("against") {
        Some(o) => Some(Runner::new(Path::new(o), None, &wasm)?),
        None => None,
    };
    let host = portcullis_harness::Host::new();
    let mut vm = runner.start_on(&host)?;
    let other_host = portcullis_harness::Host::new();
    let mut other_vm = match &other {
        Some(r) => Some(r.start_on(&other_host)?),
        None => None,
    };
    let file = std::fs::File::open(traffic).map_err(|e| format!("{traffic}: {e}"))?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut other_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut differ = 0u64;
    let mut n = 0u64;
    let started = Instant::now();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{traffic}: {e}"))?;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (spec, token, time) =
            parse_line(&line).map_err(|e| format!("{traffic}:{}: {e}", i + 1))?;
        if let Some(t) = time {
            host.set_unix_seconds(t);
            other_host.set_unix_seconds(t);
        }
        let now = host.now_unix_seconds();
        let req = runner.request(&spec, token.as_ref(), now)?;
        let ex = vm
            .request(&req)
            .map_err(|e| format!("{traffic}:{}: {e}", i + 1))?;
        let v = Verdict::from_exchange(&ex);
        *counts.entry(outcome_key(&v)).or_default() += 1;
        if let (Some(r), Some(ovm)) = (&other, other_vm.as_mut()) {
            let req = r.request(&spec, token.as_ref(), other_host.now_unix_seconds())?;
            let oex = ovm
                .request(&req)
                .map_err(|e| format!("{traffic}:{}: {e}", i + 1))?;
            let ov = Verdict::from_exchange(&oex);
            *other_counts.entry(outcome_key(&ov)).or_default() += 1;
            if (ov.status, &ov.rule) != (v.status, &v.rule) {
                differ += 1;
                println!(
                    "line {}: {} {} — {}: {} | {}: {}",
                    i + 1,
                    spec.method,
                    spec.path,
                    config,
                    outcome_key(&v),
                    a.options.get("against").map(String::as_str).unwrap_or(""),
                    outcome_key(&ov)
                );
            }
        }
        n += 1;
        if n.is_multiple_of(1000) {
            eprintln!(
                "… {n} requests ({:.0}/s)",
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    println!("{config}: {n} requests");
    for (k, c) in &counts {
        println!("  {c:>8}  {k}");
    }
    if other.is_some() {
        println!(
            "{}:",
            a.options.get("against").map(String::as_str).unwrap_or("")
        );
        for (k, c) in &other_counts {
            println!("  {c:>8}  {k}");
        }
        println!("{differ} requests differ");
    }
    std::io::stdout().flush().ok();
    Ok(true)
}

fn cmd_bench(args: &[String]) -> Result<bool, String> {
    let a = parse_args(args, &["wasm", "requests", "request"])?;
    let [config] = a.positional.as_slice() else {
        return Err("usage: portcullis bench CONFIG.yaml [--requests N]".into());
    };
    let n: u64 = a
        .options
        .get("requests")
        .map(|s| {
            s.parse()
                .map_err(|_| format!("--requests: not a number: {s}"))
        })
        .transpose()?
        .unwrap_or(10_000);
    let runner = Runner::new(Path::new(config), None, &wasm_path(&a)?)?;
    let (spec, token, time) = match a.options.get("request") {
        Some(r) => parse_line(r).map_err(|e| format!("--request: {e}"))?,
        None => {
            let token = runner.keys.as_ref().map(|_| TokenSpec {
                claims: Some(json!({"sub": "bench", "groups": ["admin"], "scope": "read write"})),
                ..TokenSpec::default()
            });
            (
                RequestSpec {
                    method: "GET".into(),
                    path: "/api/items".into(),
                    ..RequestSpec::default()
                },
                token,
                None,
            )
        }
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this `portcullis` is a debug build; the harness itself then costs ~4x more \
             per request: measure with `cargo run --release -p portcullis-harness -- bench ...` \
             or `cargo bench -p portcullis-benches --bench harness` (docs/harness.md, Speed)"
        );
    }
    let host = portcullis_harness::Host::new();
    if let Some(t) = time {
        host.set_unix_seconds(t);
    }
    // As Envoy's default: info and up (the plugin still makes the `proxy_log` calls).
    host.set_log_level(portcullis_harness::LogLevel::Info);
    let mut vm = runner.start_on(&host)?;
    // One token for the whole run (signed once), so the filter's token cache is exercised.
    let req = runner.request(&spec, token.as_ref(), host.now_unix_seconds())?;
    let first = vm.request(&req).map_err(|e| e.to_string())?;
    let verdict = Verdict::from_exchange(&first);
    // Warm-up (untimed), then 5 timed rounds of one VM sending one request at a time, as
    // `cargo bench --bench harness` does (one core).
    for _ in 0..(n / 10).clamp(1, 10_000) {
        vm.request(&req).map_err(|e| e.to_string())?;
    }
    let rounds = 5u64.min(n.max(1));
    let mut best = 0f64;
    let mut total = 0f64;
    let mut done = 0u64;
    for r in 0..rounds {
        let count = n / rounds + u64::from(r < n % rounds);
        let started = Instant::now();
        for _ in 0..count {
            vm.request(&req).map_err(|e| e.to_string())?;
        }
        let secs = started.elapsed().as_secs_f64();
        total += secs;
        done += count;
        if count > 0 && secs > 0.0 {
            best = best.max(count as f64 / secs);
        }
        // The harness keeps every log line and callout; don't let a long run grow them.
        host.clear_logs();
    }
    let secs = total.max(f64::MIN_POSITIVE);
    println!(
        "{done} requests in {total:.3}s: {:.0} requests/s, {:.1} µs/request, best of {rounds} \
         rounds {best:.0} requests/s (one VM, one core; outcome: {})",
        done as f64 / secs,
        secs * 1e6 / done.max(1) as f64,
        outcome_key(&verdict)
    );
    Ok(true)
}
