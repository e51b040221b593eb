#!/usr/bin/env bash
# Builds the filter for wasm32-wasip1 (release) and optimises it with wasm-opt.
# Output: out/portcullis.wasm
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --release --target wasm32-wasip1 -p portcullis-filter >&2
mkdir -p out
# Cargo puts it under CARGO_TARGET_DIR when that is set (e.g. a target directory shared by
# several worktrees).
raw="${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/portcullis_filter.wasm"
wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-mutable-globals --enable-multivalue --enable-reference-types \
  "$raw" -o out/portcullis.wasm
printf 'build: %s (%s bytes, %s before wasm-opt)\n' out/portcullis.wasm \
  "$(stat -c %s out/portcullis.wasm)" "$(stat -c %s "$raw")" >&2
