//! The `bundle` subcommand, shared by `portcullis` and `portcullis-config`.

use crate::bundle;
use crate::lint;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::path::Path;

/// `bundle CONFIG.yaml [-o OUT] [--envoy-snippet [--wasm-path PATH]]`.
pub fn bundle_command() -> Command {
    Command::new("bundle")
        .about("Inline .cel and JWKS files, validate as the filter does, print the plugin JSON")
        .arg(
            Arg::new("config")
                .value_name("CONFIG.yaml")
                .required(true)
                .help("the configuration (YAML or JSON; .cel and JWKS files relative to it)"),
        )
        .arg(
            Arg::new("output")
                .short('o')
                .long("output")
                .value_name("OUT")
                .help("write here instead of stdout"),
        )
        .arg(
            Arg::new("envoy-snippet")
                .long("envoy-snippet")
                .action(ArgAction::SetTrue)
                .help("print the envoy.filters.http.wasm filter block instead"),
        )
        .arg(
            Arg::new("wasm-path")
                .long("wasm-path")
                .value_name("PATH")
                .default_value("/etc/envoy/portcullis.wasm")
                .help("the .wasm filename in the Envoy snippet"),
        )
}

/// Runs `bundle` with the matches of [`bundle_command`].
pub fn run_bundle(m: &ArgMatches) -> Result<(), String> {
    let arg = |name: &str| m.get_one::<String>(name).map(String::as_str);
    let config = arg("config").ok_or("missing CONFIG")?;
    let value = bundle::bundle(Path::new(config))?;
    let text = if m.get_flag("envoy-snippet") {
        bundle::envoy_snippet(
            &value,
            arg("wasm-path").unwrap_or("/etc/envoy/portcullis.wasm"),
        )
    } else {
        serde_json::to_string_pretty(&value).map_err(|e| e.to_string())? + "\n"
    };
    write_output(arg("output"), &text)
}

/// Writes `text` to `output` (creating its directory) or, without one, to stdout.
pub fn write_output(output: Option<&str>, text: &str) -> Result<(), String> {
    match output {
        Some(out) => {
            if let Some(parent) = Path::new(out)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|e| format!("{out}: {e}"))?;
            }
            std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// `lint PATH... [--format text|json|sarif] [--deny-warnings]`.
pub fn lint_command() -> Command {
    Command::new("lint")
        .about("Review configurations for risky settings (findings PC000…, docs/operations.md)")
        .arg(
            Arg::new("paths")
                .value_name("PATH")
                .required(true)
                .num_args(1..)
                .help(
                    "configurations, Istio WasmPlugin / Envoy Gateway manifests, Envoy bootstraps",
                ),
        )
        .arg(
            Arg::new("format")
                .long("format")
                .value_name("FORMAT")
                .value_parser(["text", "json", "sarif"])
                .default_value("text")
                .help("text (cargo-style), json, or sarif (code scanning)"),
        )
        .arg(
            Arg::new("deny-warnings")
                .long("deny-warnings")
                .action(ArgAction::SetTrue)
                .help("exit 1 on warnings too, not only on errors"),
        )
}

/// Runs `lint` with the matches of [`lint_command`]; the process exit status.
pub fn run_lint(m: &ArgMatches) -> u8 {
    let options = lint::Options {
        paths: m
            .get_many::<String>("paths")
            .into_iter()
            .flatten()
            .map(std::path::PathBuf::from)
            .collect(),
        format: m
            .get_one::<String>("format")
            .and_then(|f| f.parse().ok())
            .unwrap_or_default(),
        deny_warnings: m.get_flag("deny-warnings"),
    };
    lint::run(&options)
}
