//! Test helpers: building the test filters once per test binary.
#![allow(dead_code)]

use portcullis_harness::WasmModule;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default()
}

/// Builds (once per test binary) and loads a wasm32-wasip1 cdylib of the workspace.
///
/// If `PORTCULLIS_TEST_FILTERS_DIR` is set, the `.wasm` is taken from there and nothing is
/// built (the test script built it). Otherwise `cargo build --release --target wasm32-wasip1
/// -p <package>` runs once, into the workspace target dir.
pub fn wasm(package: &str) -> WasmModule {
    static BUILT: OnceLock<Vec<(String, Result<PathBuf, String>)>> = OnceLock::new();
    let _ = &BUILT;
    let file = format!("{}.wasm", package.replace('-', "_"));
    let path = match std::env::var_os("PORTCULLIS_TEST_FILTERS_DIR") {
        Some(dir) => PathBuf::from(dir).join(&file),
        None => {
            build_once(package);
            workspace_root()
                .join("target/wasm32-wasip1/release")
                .join(&file)
        }
    };
    WasmModule::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn build_once(package: &str) {
    static LOCK: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut done = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|p| p == package) {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Keep the test filters' name section (the workspace release profile strips it) so trap
    // backtraces show function names.
    let keep_names = format!("profile.release.package.{package}.strip=false");
    let mut args = vec![
        "build",
        "--release",
        "--target",
        "wasm32-wasip1",
        "-p",
        package,
    ];
    if package != "portcullis-filter" {
        args.extend(["--config", keep_names.as_str()]);
    }
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(&args)
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "building {package} for wasm32-wasip1 failed"
    );
    done.push(package.to_owned());
}

pub fn callout() -> WasmModule {
    wasm("portcullis-test-callout")
}

/// The main filter: `$PORTCULLIS_WASM` if set, else built once into the workspace target dir.
pub fn filter() -> WasmModule {
    match std::env::var_os("PORTCULLIS_WASM") {
        Some(p) => WasmModule::load(PathBuf::from(p)).unwrap_or_else(|e| panic!("{e}")),
        None => {
            build_once("portcullis-filter");
            WasmModule::load(
                workspace_root().join("target/wasm32-wasip1/release/portcullis_filter.wasm"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        }
    }
}

/// The `portcullis` binary under test: `$PORTCULLIS_CLI` if set, else cargo's. The override
/// exists for target directories shared between checkouts, where another checkout's build may
/// replace `target/debug/portcullis` between this one's build and its tests.
pub fn portcullis_cli() -> PathBuf {
    std::env::var_os("PORTCULLIS_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portcullis")))
}

pub fn probe() -> WasmModule {
    wasm("portcullis-test-probe")
}

/// The probe's `.wasm` path (built once, like [`wasm`]).
pub fn probe_path() -> PathBuf {
    let _ = probe();
    match std::env::var_os("PORTCULLIS_TEST_FILTERS_DIR") {
        Some(dir) => PathBuf::from(dir).join("portcullis_test_probe.wasm"),
        None => workspace_root().join("target/wasm32-wasip1/release/portcullis_test_probe.wasm"),
    }
}
