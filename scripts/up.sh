#!/usr/bin/env bash
# The main job: Envoy on 127.0.0.1:10000 with the Portcullis filter and the example policies,
# an echoing upstream on :10001 that also serves the JWKS (fetched by the filter), the
# rate-limit service of the global limit (ratelimit-service/ on :10002, admin :10003, over a
# redis-server on :10004), and sample tokens with ready-to-paste curl lines. Ctrl-C stops
# everything this script started.
#
#   scripts/up.sh           run until Ctrl-C
#   scripts/up.sh --check   send the sample requests, print each status, exit non-zero on a surprise
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
check=false
[ "${1:-}" = "--check" ] && check=true
PORT="${PORTCULLIS_PORT:-10000}"; UPSTREAM_PORT="${PORTCULLIS_UPSTREAM_PORT:-10001}"; ADMIN_PORT="${PORTCULLIS_ADMIN_PORT:-9901}"
RLS_PORT="${PORTCULLIS_RLS_PORT:-10002}"; RLS_ADMIN_PORT="${PORTCULLIS_RLS_ADMIN_PORT:-10003}"; REDIS_PORT="${PORTCULLIS_REDIS_PORT:-10004}"

envoy="$(scripts/setup.sh)"
py="$root/.venv/bin/python"

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Generated files and the log: the demo's own, or (--check) a separate set, so that a check
# never touches a running demo.
gen="out"
if $check; then
  # The check runs beside a demo that may be up: it takes free ports of its own.
  read -r PORT UPSTREAM_PORT ADMIN_PORT RLS_PORT RLS_ADMIN_PORT REDIS_PORT < <("$py" -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
  gen="out/check"
else
  for p in "$PORT" "$UPSTREAM_PORT" "$ADMIN_PORT" "$RLS_PORT" "$RLS_ADMIN_PORT" "$REDIS_PORT"; do
    if in_use "$p"; then
      echo "up.sh: port $p on 127.0.0.1 is in use (a demo already running?). Stop it, or choose other" >&2
      echo "       ports with PORTCULLIS_PORT / PORTCULLIS_UPSTREAM_PORT / PORTCULLIS_ADMIN_PORT /" >&2
      echo "       PORTCULLIS_RLS_PORT / PORTCULLIS_RLS_ADMIN_PORT / PORTCULLIS_REDIS_PORT." >&2
      exit 1
    fi
  done
fi
mkdir -p "$gen"

scripts/build.sh
# Bundling runs no .wasm: the small CLI builds without wasmtime.
cargo build -q -p portcullis-tools --bin portcullis-config
cargo build -q -p portcullis-ratelimit-service --bin portcullis-ratelimit
target/debug/portcullis-config bundle policies/portcullis.yaml -o "$gen/plugin.json"
"$py" envoy-examples/render.py envoy-examples/local.envoy.yaml --wasm "$root/out/portcullis.wasm" \
  --plugin-config "$gen/plugin.json" --port "$PORT" --upstream-port "$UPSTREAM_PORT" --admin-port "$ADMIN_PORT" \
  --jwks remote --ratelimit-port "$RLS_PORT" -o "$gen/envoy-local.yaml"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

"$py" envoy-examples/upstream.py --port "$UPSTREAM_PORT" --jwks policies/keys/jwks.json &
pids+=($!)
# The global limit's counters: Redis (nothing saved to disk) and the rate-limit service.
command -v redis-server >/dev/null || { echo "redis-server is missing: run scripts/setup.sh" >&2; exit 1; }
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$gen/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do in_use "$REDIS_PORT" && break; sleep 0.1; done
target/debug/portcullis-ratelimit --grpc "127.0.0.1:$RLS_PORT" --admin "127.0.0.1:$RLS_ADMIN_PORT" \
  --redis "redis://127.0.0.1:$REDIS_PORT" --limits ratelimit-service/limits.yaml >"$gen/ratelimit.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do in_use "$RLS_PORT" && break; sleep 0.1; done
in_use "$RLS_PORT" || { echo "the rate-limit service did not start; its log:" >&2; tail -20 "$gen/ratelimit.log" >&2; exit 1; }
"$envoy" -c "$gen/envoy-local.yaml" --concurrency 2 --use-dynamic-base-id -l warning --component-log-level wasm:info --file-flush-interval-msec 500 \
  >"$gen/envoy.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1; then break; fi
  kill -0 "${pids[0]}" 2>/dev/null || { echo "the upstream exited" >&2; exit 1; }
  kill -0 "${pids[3]}" 2>/dev/null || { echo "Envoy exited; its log:" >&2; tail -30 "$gen/envoy.log" >&2; exit 1; }
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null || { echo "Envoy is not ready; see $gen/envoy.log" >&2; exit 1; }
# The process answering must be ours (a stale Envoy on the same port would make a false pass).
kill -0 "${pids[3]}" 2>/dev/null || { echo "Envoy exited; its log:" >&2; tail -30 "$gen/envoy.log" >&2; exit 1; }

if $check; then
  "$py" envoy-examples/tour.py --base "http://127.0.0.1:$PORT" --check
  exit $?
fi
echo
echo "Portcullis is up: Envoy on http://127.0.0.1:$PORT (admin :$ADMIN_PORT, log out/envoy.log)."
echo "Sample requests (tokens valid for 24 h):"
echo
"$py" envoy-examples/tour.py --base "http://127.0.0.1:$PORT"
echo "The global limit (per-tenant-global, /api/reports) is counted by the rate-limit service:"
echo "  curl -s 127.0.0.1:$RLS_ADMIN_PORT/counters   (its log: $gen/ratelimit.log)"
echo "Ctrl-C stops Envoy, the upstream, the rate-limit service and Redis."
wait "${pids[3]}"
