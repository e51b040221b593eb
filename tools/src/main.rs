//! `portcullis-config`: the configuration commands of `portcullis` that need no Wasm runtime.

use clap::{Arg, ArgAction, ArgMatches, Command};
use portcullis_tools::{bundle, token::SigningKeys};
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

fn cli() -> Command {
    Command::new("portcullis-config")
        .about("Bundle and check Portcullis configurations, sign test tokens (no Wasm runtime needed)")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("bundle")
                .about("Inline .cel and JWKS files, validate as the filter does, print the plugin JSON")
                .arg(Arg::new("config").required(true).help("the YAML or JSON configuration"))
                .arg(Arg::new("output").short('o').long("output").help("write here instead of stdout"))
                .arg(
                    Arg::new("envoy-snippet")
                        .long("envoy-snippet")
                        .action(ArgAction::SetTrue)
                        .help("print the envoy.filters.http.wasm filter block instead"),
                )
                .arg(
                    Arg::new("wasm-path")
                        .long("wasm-path")
                        .default_value("/etc/envoy/portcullis.wasm")
                        .help("the .wasm path in the Envoy snippet"),
                ),
        )
        .subcommand(
            Command::new("token")
                .about("Sign a test JWT with a key of a private JWKS")
                .arg(Arg::new("jwks").long("jwks").required(true).help("private JWKS file"))
                .arg(Arg::new("kid").long("kid").help("signing key (default: the first)"))
                .arg(Arg::new("claims").long("claims").required(true).help("claims, as JSON"))
                .arg(Arg::new("header").long("header").help("extra JOSE header fields, as JSON")),
        )
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let result = match matches.subcommand() {
        Some(("bundle", m)) => cmd_bundle(m),
        Some(("token", m)) => cmd_token(m),
        _ => Err("unknown command".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-config: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arg<'m>(m: &'m ArgMatches, name: &str) -> Option<&'m str> {
    m.get_one::<String>(name).map(String::as_str)
}

fn cmd_bundle(m: &ArgMatches) -> Result<(), String> {
    let config = arg(m, "config").unwrap_or_default();
    let value = bundle::bundle(Path::new(config))?;
    let text = if m.get_flag("envoy-snippet") {
        bundle::envoy_snippet(&value, arg(m, "wasm-path").unwrap_or_default())
    } else {
        serde_json::to_string_pretty(&value).map_err(|e| e.to_string())? + "\n"
    };
    write_out(arg(m, "output"), &text)
}

fn cmd_token(m: &ArgMatches) -> Result<(), String> {
    let keys = SigningKeys::load(Path::new(arg(m, "jwks").unwrap_or_default()))?;
    let json = |name: &str| -> Result<Option<Value>, String> {
        arg(m, name)
            .map(|text| serde_json::from_str(text).map_err(|e| format!("--{name}: {e}")))
            .transpose()
    };
    let claims = json("claims")?.unwrap_or(Value::Null);
    let token = keys.sign(arg(m, "kid"), &claims, json("header")?.as_ref())?;
    write_out(None, &format!("{token}\n"))
}

fn write_out(output: Option<&str>, text: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::cli;

    #[test]
    fn the_cli_definition_is_consistent() {
        cli().debug_assert();
    }
}
