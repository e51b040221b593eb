#!/usr/bin/env bash
# Builds the filter for wasm32-wasip1 (release) and optimises it with wasm-opt.
# Output: out/portcullis.wasm
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --release --target wasm32-wasip1 -p portcullis-filter >&2
mkdir -p out
raw="${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/portcullis_filter.wasm"
# wasm-opt takes ~15 s: skip it when neither its input nor this script changed.
stamp="out/portcullis.wasm.input.sha256"
want="$(cat "$raw" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ -f out/portcullis.wasm ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  printf 'build: %s up to date\n' out/portcullis.wasm >&2
else
  # The raw module keeps names and the standard library's DWARF for the size profiler
  # (benches/size/by_crate.py); the shipped one has neither.
  wasm-opt -O3 --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-mutable-globals --enable-multivalue --enable-reference-types \
    "$raw" -o out/portcullis.wasm
  echo "$want" >"$stamp"
fi
printf 'build: %s (%s bytes, %s before wasm-opt)\n' out/portcullis.wasm \
  "$(stat -c %s out/portcullis.wasm)" "$(stat -c %s "$raw")" >&2
