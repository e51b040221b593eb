//! The `bundle` subcommand, shared by `portcullis` and `portcullis-config`.

use crate::bundle;
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
