#!/usr/bin/env bash
# Runs every fuzz target of the filter (filter/fuzz/) for SECONDS each (default 60), one after
# the other, from the seeds in filter/fuzz/corpus/<target>/. Fails if a target does not build
# or finds a crash, a timeout or an out-of-memory; the input is kept under out/fuzz/artifacts/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# New inputs the fuzzer finds go to out/fuzz/corpus/<target>/ (kept between runs, never committed:
# the seeds stay small). Installs cargo-fuzz if missing; runs on the default (stable) toolchain
# with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/filter/fuzz"
seconds="${1:-60}"
shift || true
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }

say() { printf '\033[1mfuzz:\033[0m %s\n' "$*" >&2; }
die() { printf 'fuzz: FATAL: %s\n' "$*" >&2; exit 1; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install --locked cargo-fuzz >&2 || die "cannot install cargo-fuzz"
fi
# The toolchain a fresh machine has (stable) with RUSTC_BOOTSTRAP=1, so that a run here is a
# run in CI; PORTCULLIS_FUZZ_TOOLCHAIN=nightly picks an installed nightly instead.
if [ -n "${PORTCULLIS_FUZZ_TOOLCHAIN:-}" ]; then
  fuzz=(cargo "+$PORTCULLIS_FUZZ_TOOLCHAIN" fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

# Safe Rust only (the crate denies `unsafe` outside the wasm ABI layer, which is not built
# natively), so AddressSanitizer would mostly halve the executions per second; panics,
# overflow checks and debug assertions are what find bugs here.
build_flags=(--sanitizer none)
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <("${fuzz[@]}" list)

# Per target: the longest input worth trying, and a dictionary of its format's words.
max_len() {
  case "$1" in
    wire) echo 4096 ;; jwks | config) echo 16384 ;; cel) echo 1024 ;; *) echo 8192 ;;
  esac
}
dict() {
  case "$1" in
    cel) echo dict/cel.dict ;; jwks | config | shared_data) echo dict/json.dict ;;
    jwt_token) echo dict/jwt.dict ;; *) ;;
  esac
}

work="$root/out/fuzz"
mkdir -p "$work"
start=$SECONDS
say "building ${targets[*]} (${fuzz[*]})"
"${fuzz[@]}" build "${build_flags[@]}" >&2 || die "the fuzz targets do not build"
say "built in $((SECONDS - start)) s"

failed=()
for target in "${targets[@]}"; do
  [ -d "corpus/$target" ] || die "no seed corpus at filter/fuzz/corpus/$target"
  mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
  args=(-max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$work/artifacts/$target/")
  d="$(dict "$target")"
  [ -z "$d" ] || args+=(-dict="$d")
  say "$target: ${seconds} s"
  log="$work/$target.log"
  if "${fuzz[@]}" run "${build_flags[@]}" "$target" "$work/corpus/$target" "corpus/$target" \
      -- "${args[@]}" >"$log" 2>&1; then
    # The last status line: `#N DONE cov: C ft: F corp: ... exec/s: E ...`.
    grep -E '^#[0-9]+' "$log" | tail -n 1 >&2
  else
    # The panic (or libFuzzer's error) and where the input was saved; the rest is in the log.
    grep -E -A 2 'panicked at|ERROR: libFuzzer|Test unit written|error(\[E[0-9]+\])?:' "$log" | head -n 30 >&2 \
      || tail -n 40 "$log" >&2
    failed+=("$target")
  fi
done
say "total $((SECONDS - start)) s"
((${#failed[@]} == 0)) || die "crashed or failed: ${failed[*]} (inputs in out/fuzz/artifacts/, logs in out/fuzz/*.log)"
