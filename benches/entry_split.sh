#!/usr/bin/env bash
# Is forwarding at 4 connections held back by the entry node's worker threads handing requests
# to each other? An experiment, for BENCHMARKS.md ("Where the time goes now").
#
# Run with: bash benches/entry_split.sh [ROUNDS] [SECONDS]   (after `python3 benches/cluster.py`
# has built release, or `cargo build --release --bin meshage --example bare_echo`)
#
# Two owner nodes serve the echo stream; three entry nodes serve nothing, so every request an
# entry gets is forwarded over a peer link. Each round drives, with wrk (POST {"hello":"world"},
# keys key-1..key-3000, 4 connections in all, SECONDS each, default 4):
#   - a bare echo server (examples/bare_echo.rs), the baseline of the round;
#   - one entry with its default worker threads (one per core), wrk -t2 -c4;
#   - one entry with one worker thread (MESHAGE_THREADS=1), wrk -t2 -c4;
#   - two single-threaded entries at once, wrk -t1 -c2 each: what thread-per-core entry nodes
#     (each thread with its own connections and links, nothing handed between threads) would
#     do at best. Their sum is printed.
set -euo pipefail
ROUNDS=${1:-3}
D=${2:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
TMP=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
export RUST_LOG=warn CLUSTER_HOST=127.0.0.1 HTTP_HOST=127.0.0.1
G=$(port SOCK_DGRAM)
node() { "$B/meshage" node "$@" >/dev/null 2>&1 & PIDS+=($!); }
CLUSTER_PORT=$G HTTP_PORT=$(port SOCK_STREAM) node --echo echo
CLUSTER_PORT=$(port SOCK_DGRAM) HTTP_PORT=$(port SOCK_STREAM) SEEDS=127.0.0.1:$G node --echo echo
E1=$(port SOCK_STREAM); E2=$(port SOCK_STREAM); E3=$(port SOCK_STREAM)
CLUSTER_PORT=$(port SOCK_DGRAM) HTTP_PORT=$E1 SEEDS=127.0.0.1:$G node
MESHAGE_THREADS=1 CLUSTER_PORT=$(port SOCK_DGRAM) HTTP_PORT=$E2 SEEDS=127.0.0.1:$G node
MESHAGE_THREADS=1 CLUSTER_PORT=$(port SOCK_DGRAM) HTTP_PORT=$E3 SEEDS=127.0.0.1:$G node
BARE=$(port SOCK_STREAM)
"$B/examples/bare_echo" "127.0.0.1:$BARE" >/dev/null 2>&1 & PIDS+=($!)
services() { curl -s "http://127.0.0.1:$1/api/services" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0; }
for e in $E1 $E2 $E3; do
  for _ in $(seq 800); do [ "$(services "$e")" = 2 ] && break; sleep 0.05; done
done
drive() { wrk "-t$1" "-c$2" -d"${D}s" -s "$ROOT/benches/keys.lua" "http://127.0.0.1:$3" | awk '/Requests\/sec/ {print $2}'; }
drive 2 4 "$E1" >/dev/null  # warm-up: links open, pools fill
echo "round: bare | one entry, default threads | one entry, 1 thread | two 1-thread entries (sum); req/s at 4 connections, ratio to bare"
for r in $(seq "$ROUNDS"); do
  bare=$(drive 2 4 "$BARE")
  one=$(drive 2 4 "$E1")
  single=$(drive 2 4 "$E2")
  drive 1 2 "$E2" > "$TMP/a" & W=$!
  drive 1 2 "$E3" > "$TMP/b"
  wait "$W"
  python3 -c "
bare, one, single, split = $bare, $one, $single, $(cat "$TMP/a") + $(cat "$TMP/b")
print(f'$r: {bare:,.0f} | {one:,.0f} ({one / bare:.2f}) | {single:,.0f} ({single / bare:.2f}) | {split:,.0f} ({split / bare:.2f})')"
done
