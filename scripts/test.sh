#!/usr/bin/env bash
# Every test: formatting, lints, native unit and conformance tests, harness tests, policy
# tests through the real .wasm, and end-to-end tests against a real Envoy (--concurrency 2).
# Installs what it needs (scripts/setup.sh) or fails; it never skips the Envoy tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setup"
envoy="$(scripts/setup.sh)"
export PORTCULLIS_ENVOY="$envoy"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (native, all targets; and the wasm shell)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p portcullis-filter --target wasm32-wasip1 -- -D warnings

step "build the filter (.wasm)"
scripts/build.sh
export PORTCULLIS_WASM="$root/out/portcullis.wasm"

step "size budget: out/portcullis.wasm (benches/size/budget.bytes)"
scripts/size-budget.sh

step "cargo test (native unit, conformance, harness)"
cargo test --workspace 2>&1 | tee out/cargo-test.log
echo "-- cargo test summary:"
grep -E '^test result:' out/cargo-test.log

step "fuzz smoke: every target builds and survives ${PORTCULLIS_FUZZ_SECONDS:-20} s (scripts/fuzz.sh)"
# Catches a target that stops building or a decoder that crashes on its seeds or soon after;
# the long campaigns are run by hand (docs/fuzzing.md).
scripts/fuzz.sh "${PORTCULLIS_FUZZ_SECONDS:-20}"

step "policy tests through the .wasm (portcullis test policies/)"
# `cargo test --workspace` built the CLI for the harness's integration tests; building it
# alone would resolve wasmtime's features differently and rebuild it.
[ -x target/debug/portcullis ] || { echo "target/debug/portcullis was not built by cargo test" >&2; exit 1; }
target/debug/portcullis test policies/

step "bundle the example configuration"
target/debug/portcullis bundle policies/portcullis.yaml -o out/plugin.json

step "portcullis lint: the example configuration and manifests (docs/operations.md)"
target/debug/portcullis lint --deny-warnings policies/portcullis.yaml \
  envoy-examples/istio/wasmplugin.yaml envoy-examples/envoy-gateway/extension-policy.yaml

step "envoy --mode validate every Envoy config under envoy-examples/"
"$root/.venv/bin/python" envoy-examples/validate_all.py --envoy "$envoy" --wasm "$PORTCULLIS_WASM" --plugin-config out/plugin.json --portcullis target/debug/portcullis

step "build the rate-limit service (global limits: envoy-examples/tests/global_ratelimit_e2e_test.py)"
cargo build -p portcullis-ratelimit-service --bin portcullis-ratelimit

step "end-to-end tests against a real Envoy"
"$root/.venv/bin/python" -m unittest discover -s envoy-examples/tests -t envoy-examples -p '*_test.py' -v

step "all tests passed"
