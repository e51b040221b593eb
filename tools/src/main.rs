//! `portcullis-config`: the configuration commands of `portcullis` that need no Wasm runtime.

use clap::{Arg, ArgMatches, Command};
use portcullis_tools::{cli, token::SigningKeys};
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

fn cli() -> Command {
    Command::new("portcullis-config")
        .about(
            "Bundle and check Portcullis configurations, sign test tokens (no Wasm runtime needed)",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(cli::bundle_command())
        .subcommand(cli::lint_command())
        .subcommand(
            Command::new("token")
                .about("Sign a test JWT with a key of a private JWKS")
                .arg(
                    Arg::new("jwks")
                        .long("jwks")
                        .required(true)
                        .help("private JWKS file"),
                )
                .arg(
                    Arg::new("kid")
                        .long("kid")
                        .help("signing key (default: the first)"),
                )
                .arg(
                    Arg::new("claims")
                        .long("claims")
                        .required(true)
                        .help("claims, as JSON"),
                )
                .arg(
                    Arg::new("header")
                        .long("header")
                        .help("extra JOSE header fields, as JSON"),
                ),
        )
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let result = match matches.subcommand() {
        Some(("bundle", m)) => cli::run_bundle(m),
        Some(("token", m)) => cmd_token(m),
        Some(("lint", m)) => return ExitCode::from(cli::run_lint(m)),
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

fn cmd_token(m: &ArgMatches) -> Result<(), String> {
    let keys = SigningKeys::load(Path::new(arg(m, "jwks").unwrap_or_default()))?;
    let json = |name: &str| -> Result<Option<Value>, String> {
        arg(m, name)
            .map(|text| serde_json::from_str(text).map_err(|e| format!("--{name}: {e}")))
            .transpose()
    };
    let claims = json("claims")?.unwrap_or(Value::Null);
    let token = keys.sign(arg(m, "kid"), &claims, json("header")?.as_ref())?;
    cli::write_output(None, &format!("{token}\n"))
}

#[cfg(test)]
mod tests {
    use super::cli;

    #[test]
    fn the_cli_definition_is_consistent() {
        cli().debug_assert();
    }
}
