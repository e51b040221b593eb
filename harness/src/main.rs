//! `portcullis`: bundle, test, eval, replay and bench Portcullis configurations through the
//! real `.wasm` on the harness's proxy-wasm host. See docs/harness.md.

use clap::{Arg, ArgAction, ArgMatches, Command};
use portcullis_harness::bundle;
use portcullis_harness::cases::{self, Case, RequestSpec, Runner, TokenSpec, Verdict};
use portcullis_harness::coverage;
use portcullis_harness::report::{self, CaseResult};
use portcullis_harness::suite;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const WASM_HELP: &str = "The filter's .wasm: --wasm, else $PORTCULLIS_WASM, else \
target/wasm32-wasip1/release/portcullis_filter.wasm searched upward from the current directory.";

fn wasm_arg() -> Arg {
    Arg::new("wasm").long("wasm").value_name("FILE").help(
        "the filter's .wasm (default: $PORTCULLIS_WASM, else \
         target/wasm32-wasip1/release/portcullis_filter.wasm searched upward)",
    )
}

fn config_arg() -> Arg {
    Arg::new("config")
        .value_name("CONFIG.yaml")
        .required(true)
        .help("the configuration (YAML or JSON; .cel and JWKS files relative to it)")
}

fn request_arg(help: &'static str) -> Arg {
    Arg::new("request")
        .long("request")
        .value_name("JSON")
        .help(help)
}

fn format_arg() -> Arg {
    Arg::new("format")
        .long("format")
        .value_name("FORMAT")
        .value_parser(["text", "json", "junit"])
        .default_value("text")
        .help("text (like cargo test), json, or junit (XML for CI systems)")
}

fn cli() -> Command {
    Command::new("portcullis")
        .about(
            "Portcullis configurations through the real .wasm (test, eval, bundle, replay, bench)",
        )
        .after_help(WASM_HELP)
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(portcullis_tools::cli::bundle_command())
        .subcommand(portcullis_tools::cli::lint_command())
        .subcommand(
            Command::new("test")
                .about("Run *.test.yaml decision cases (directories are searched recursively)")
                .arg(
                    Arg::new("paths")
                        .value_name("PATH")
                        .required(true)
                        .num_args(1..)
                        .help("test files or directories"),
                )
                .arg(wasm_arg())
                .arg(format_arg())
                .arg(
                    Arg::new("coverage")
                        .long("coverage")
                        .action(ArgAction::SetTrue)
                        .help(
                            "after the results, report the policy rules (and their `when` \
                             guards) that decided no case",
                        ),
                )
                .arg(
                    Arg::new("min-coverage")
                        .long("min-coverage")
                        .value_name("PCT")
                        .value_parser(clap::value_parser!(f64))
                        .help(
                            "fail (exit 1) when less than PCT percent of the rules and `when` \
                             guards are covered (implies --coverage)",
                        ),
                ),
        )
        .subcommand(
            Command::new("run")
                .about(
                    "Run suites for any proxy-wasm filter: a .wasm, its configuration, \
                     requests, scripted or forwarded upstreams and callouts, expectations",
                )
                .long_about(
                    "Run SUITE.yaml files for any proxy-wasm filter (not only Portcullis): \
                     the .wasm, its plugin configuration (any bytes), clusters answering HTTP \
                     and gRPC callouts (scripted, or forwarded to real servers), requests, and \
                     expected status, headers, body, upstream request, log lines and metrics, \
                     on a virtual clock. Each case runs on a fresh proxy. See docs/harness.md.",
                )
                .arg(
                    Arg::new("suites")
                        .value_name("SUITE.yaml")
                        .required(true)
                        .num_args(1..)
                        .help("suite files"),
                )
                .arg(
                    Arg::new("wasm")
                        .long("wasm")
                        .value_name("FILE")
                        .help("the plugin (overrides the suites' `wasm`)"),
                )
                .arg(format_arg()),
        )
        .subcommand(
            Command::new("eval")
                .about("Send one request and print the decision, headers, logs and counters")
                .arg(config_arg())
                .arg(request_arg(
                    "a case ({\"request\": {...}, \"token\": {...}, \"time\": ...}) or a bare \
                     request ({\"path\": \"/x\", \"token\": {...}}); default GET /",
                ))
                .arg(wasm_arg()),
        )
        .subcommand(
            Command::new("replay")
                .about("Send a JSON-lines traffic file through one VM and tally the outcomes")
                .arg(config_arg())
                .arg(
                    Arg::new("traffic")
                        .value_name("TRAFFIC.jsonl")
                        .required(true)
                        .help("one request per line, as for eval"),
                )
                .arg(
                    Arg::new("against")
                        .long("against")
                        .value_name("OTHER.yaml")
                        .help(
                            "also run the traffic through this configuration and show every \
                             line whose (status, rule) differs; any difference exits 1",
                        ),
                )
                .arg(
                    Arg::new("allow-differences")
                        .long("allow-differences")
                        .action(ArgAction::SetTrue)
                        .requires("against")
                        .help("exit 0 even when the two configurations decide differently"),
                )
                .arg(wasm_arg()),
        )
        .subcommand(
            Command::new("bench")
                .about("Time identical requests through one VM (one core)")
                .arg(config_arg())
                .arg(
                    Arg::new("requests")
                        .long("requests")
                        .value_name("N")
                        .value_parser(clap::value_parser!(u64))
                        .default_value("10000")
                        .help("how many requests to time"),
                )
                .arg(request_arg(
                    "the request, as for eval (default: GET /api/items with a token if signing \
                     keys are next to the config)",
                ))
                .arg(wasm_arg()),
        )
}

fn main() -> ExitCode {
    let matches = match cli().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            // --help prints to stdout and exits 0; a bad command line exits 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match matches.subcommand() {
        Some(("bundle", m)) => cmd_bundle(m),
        Some(("lint", m)) => return ExitCode::from(portcullis_tools::cli::run_lint(m)),
        Some(("test", m)) => cmd_test(m),
        Some(("run", m)) => cmd_run(m),
        Some(("eval", m)) => cmd_eval(m),
        Some(("replay", m)) => cmd_replay(m),
        Some(("bench", m)) => cmd_bench(m),
        _ => Err("no command given (see portcullis --help)".into()),
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

fn arg<'m>(m: &'m ArgMatches, name: &str) -> Option<&'m str> {
    m.get_one::<String>(name).map(String::as_str)
}

/// A required argument: clap has refused a command line without it, so this only guards
/// against the definition and the code drifting apart.
fn required<'m>(m: &'m ArgMatches, name: &str) -> Result<&'m str, String> {
    arg(m, name).ok_or_else(|| format!("missing <{name}>"))
}

fn wasm_path(m: &ArgMatches) -> Result<PathBuf, String> {
    cases::find_wasm(arg(m, "wasm").map(Path::new))
}

fn cmd_bundle(m: &ArgMatches) -> Result<bool, String> {
    portcullis_tools::cli::run_bundle(m).map(|()| true)
}

/// The tally of a `portcullis test` run, printed like `cargo test`.
#[derive(Default)]
struct Report {
    /// json or junit: nothing is printed until the end.
    quiet: bool,
    json: bool,
    cases: Vec<CaseResult>,
    passed: usize,
    failed: usize,
    failures: Vec<(String, Vec<String>)>,
    results: Vec<Value>,
}

impl Report {
    /// One result: `case` is `None` for an error in the file as a whole.
    fn add(
        &mut self,
        file: &str,
        case: Option<&str>,
        lines: Vec<String>,
        verdict: Option<Verdict>,
    ) {
        let ok = lines.is_empty();
        let name = format!("{file}::{}", case.unwrap_or("(load)"));
        if !self.quiet {
            println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        }
        self.cases.push(if ok {
            CaseResult::passed(file, case.unwrap_or("(load)"), 0.0)
        } else {
            CaseResult::failed(file, case.unwrap_or("(load)"), lines.clone(), 0.0)
        });
        self.results.push(json!({
            "file": file, "case": case, "ok": ok, "failures": lines, "verdict": verdict,
        }));
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push((name, lines));
        }
    }
}

fn cmd_test(m: &ArgMatches) -> Result<bool, String> {
    let wasm = wasm_path(m)?;
    let paths: Vec<PathBuf> = m
        .get_many::<String>("paths")
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .collect();
    let files = cases::collect_test_files(&paths)?;
    if files.is_empty() {
        // Zero tests passing is not a pass: a mistyped directory would look green.
        return Err("no *.test.yaml files found".into());
    }
    let format = arg(m, "format").unwrap_or("text");
    let mut report = Report {
        quiet: format != "text",
        json: format == "json",
        ..Report::default()
    };
    if !report.quiet {
        println!();
    }
    let min_coverage = m.get_one::<f64>("min-coverage").copied();
    let coverage_wanted = m.get_flag("coverage") || min_coverage.is_some();
    let mut coverage = coverage::Coverage::default();
    for file in &files {
        let display = file.display().to_string();
        let outcome = cases::plan_test_file(file).and_then(|plan| {
            let base = file.parent().unwrap_or(Path::new("."));
            let config = base.join(&plan.config);
            let keys = plan.signing_keys.as_ref().map(|k| base.join(k));
            let runner =
                Runner::new(&config, keys.as_deref(), &wasm)?.with_clusters(plan.clusters.clone());
            Ok((plan, runner, config))
        });
        let (plan, runner, config) = match outcome {
            Ok(x) => x,
            Err(e) => {
                report.add(&display, None, vec![e], None);
                continue;
            }
        };
        for planned in &plan.cases {
            let (lines, verdict) = match &planned.case {
                Ok(case) => match runner.run_case(case) {
                    Ok((v, _ex, f)) => (f, Some(v)),
                    Err(e) => (vec![e], None),
                },
                Err(e) => (vec![e.clone()], None),
            };
            coverage.record(&config, &runner.config, verdict.as_ref());
            report.add(&display, Some(&planned.name), lines, verdict);
        }
        if coverage_wanted {
            let cases: Vec<&Case> = plan
                .cases
                .iter()
                .filter_map(|p| p.case.as_ref().ok())
                .collect();
            coverage.probe_guards(&config, &runner, &cases);
        }
    }
    let coverage_ok = min_coverage.is_none_or(|min| coverage.percent() >= min);
    if format == "junit" {
        print!("{}", report::junit("portcullis test", &report.cases));
        if coverage_wanted {
            eprint!("{}", coverage.text());
        }
    } else if report.json {
        let mut out =
            json!({"results": report.results, "passed": report.passed, "failed": report.failed});
        if coverage_wanted {
            out["coverage"] = coverage.json();
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        if !report.failures.is_empty() {
            println!("\nfailures:\n");
            for (name, lines) in &report.failures {
                println!("---- {name} ----");
                for l in lines {
                    println!("  {l}");
                }
                println!();
            }
        }
        if coverage_wanted {
            print!("\n{}", coverage.text());
        }
        println!("\n{} passed, {} failed", report.passed, report.failed);
    }
    if let Some(min) = min_coverage {
        if !coverage_ok {
            eprintln!(
                "coverage {:.1}% is below --min-coverage {min}%",
                coverage.percent()
            );
        }
    }
    Ok(report.failed == 0 && coverage_ok)
}

fn cmd_run(m: &ArgMatches) -> Result<bool, String> {
    let wasm = arg(m, "wasm").map(PathBuf::from);
    let format = arg(m, "format").unwrap_or("text");
    let mut results = Vec::new();
    for path in m.get_many::<String>("suites").into_iter().flatten() {
        let loaded = suite::load(Path::new(path), wasm.as_deref())?;
        results.extend(suite::run(&loaded));
    }
    match format {
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&results)).map_err(|e| e.to_string())?
        ),
        "junit" => print!("{}", report::junit("portcullis run", &results)),
        _ => print!("{}", report::text(&results)),
    }
    Ok(results.iter().all(|r| r.passed))
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

fn cmd_eval(m: &ArgMatches) -> Result<bool, String> {
    let config = required(m, "config")?;
    let request = arg(m, "request").unwrap_or("{}");
    let (spec, token, time) = parse_line(request).map_err(|e| format!("--request: {e}"))?;
    let runner = Runner::new(Path::new(config), None, &wasm_path(m)?)?;
    let case = Case {
        name: "eval".into(),
        request: spec,
        token,
        time,
        repeat: None,
        clusters: Default::default(),
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

fn cmd_replay(m: &ArgMatches) -> Result<bool, String> {
    let config = required(m, "config")?;
    let traffic = required(m, "traffic")?;
    let against = arg(m, "against");
    let wasm = wasm_path(m)?;
    let runner = Runner::new(Path::new(config), None, &wasm)?;
    let other = match against {
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
                    against.unwrap_or(""),
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
    let mut same = true;
    if let Some(against) = against {
        println!("{against}: {n} requests");
        for (k, c) in &other_counts {
            println!("  {c:>8}  {k}");
        }
        println!("{differ} requests differ");
        if differ > 0 && !m.get_flag("allow-differences") {
            eprintln!("the configurations decide differently (--allow-differences to exit 0)");
            same = false;
        }
    }
    std::io::stdout().flush().ok();
    Ok(same)
}

fn cmd_bench(m: &ArgMatches) -> Result<bool, String> {
    let config = required(m, "config")?;
    let n = m.get_one::<u64>("requests").copied().unwrap_or(10_000);
    let runner = Runner::new(Path::new(config), None, &wasm_path(m)?)?;
    let (spec, token, time) = match arg(m, "request") {
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

#[cfg(test)]
mod tests {
    use super::cli;

    #[test]
    fn the_cli_definition_is_consistent() {
        cli().debug_assert();
    }
}
