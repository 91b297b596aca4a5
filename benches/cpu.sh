#!/usr/bin/env bash
# CPU per request: where a node's time goes under one kind of load.
#
# Run with: bash benches/cpu.sh MODE [CONNS] [SECONDS]   (after `python3 benches/cluster.py`
# has built release, or `cargo build --release --bin meshage --example bare_echo --example bench_keys`)
#
# MODE is `bare` (one bare echo server), `local` (a 3-node cluster, keys owned by the entry
# node), `fwd` (keys owned by the other two nodes) or `broadcast` (every key, to all 3 services). It drives the entry with wrk (POST
# {"hello":"world"}, 2 threads, CONNS connections, default 64, for SECONDS, default 5, after a
# 1 s warm-up) and prints req/s and the CPU time each process used, from /proc, per request.
# MESHAGE_THREADS and other settings in the environment reach the nodes.
set -euo pipefail
MODE=${1:?usage: bash benches/cpu.sh bare|local|fwd|broadcast [CONNS] [SECONDS]}
PREFIX=/api/echo/
C=${2:-64}
D=${3:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
TMP=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
export RUST_LOG=warn CLUSTER_HOST=127.0.0.1 HTTP_HOST=127.0.0.1
H=$(port SOCK_STREAM)
if [ "$MODE" = bare ]; then
  "$B/examples/bare_echo" "127.0.0.1:$H" >/dev/null & PIDS+=($!)
  seq 1 3000 | sed 's/^/k/' > "$TMP/keys"
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$H/x" -d '{}' && break; sleep 0.05; done
else
  G=$(port SOCK_DGRAM)
  CLUSTER_PORT=$G HTTP_PORT=$H "$B/meshage" node --echo echo >/dev/null 2>&1 & PIDS+=($!)
  for _ in 1 2; do
    CLUSTER_PORT=$(port SOCK_DGRAM) HTTP_PORT=$(port SOCK_STREAM) SEEDS=127.0.0.1:$G \
      "$B/meshage" node --echo echo >/dev/null 2>&1 & PIDS+=($!)
  done
  services() { curl -s "http://127.0.0.1:$H/api/services" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0; }
  for _ in $(seq 200); do [ "$(services)" = 3 ] && break; sleep 0.05; done
  read -r LOCAL IDS < <(curl -s "http://127.0.0.1:$H/api/services" | python3 -c "
import json, sys, urllib.request
node = json.load(urllib.request.urlopen('http://127.0.0.1:$H/api/health'))['node']
s = json.load(sys.stdin)
print(next(x['id'] for x in s if x['node'] == node), ','.join(x['id'] for x in s))")
  case $MODE in
    local) SIDE=L ;;
    fwd) SIDE=R ;;
    broadcast) SIDE=. PREFIX=/api/broadcast/echo/ ;;
    *) echo "unknown mode $MODE" >&2; exit 2 ;;
  esac
  "$B/examples/bench_keys" "$LOCAL" "$IDS" 3000 | awk -v s="$SIDE" '$1 ~ s {print $2}' > "$TMP/keys"
fi
cat > "$TMP/keys.lua" <<LUA
local keys = {}
for line in io.lines("$TMP/keys") do keys[#keys + 1] = line end
local i = 0
wrk.method = "POST"; wrk.body = '{"hello":"world"}'; wrk.headers["Content-Type"] = "application/json"
function init(args) i = math.random(#keys) end
function request() i = i % #keys + 1; return wrk.format(nil, "$PREFIX" .. keys[i]) end
LUA
wrk -t2 -c"$C" -d1s -s "$TMP/keys.lua" "http://127.0.0.1:$H" >/dev/null
before=(); for p in "${PIDS[@]}"; do before+=("$(ticks "$p")"); done
wrk -t2 -c"$C" -d"${D}s" -s "$TMP/keys.lua" "http://127.0.0.1:$H" > "$TMP/wrk.out"
after=(); for p in "${PIDS[@]}"; do after+=("$(ticks "$p")"); done
RPS=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk.out")
HZ=$(getconf CLK_TCK)
line="$MODE c=$C: $RPS req/s;"
for i in "${!PIDS[@]}"; do
  used=$(( ${after[$i]} - ${before[$i]} ))
  line+=$(python3 -c "print(f' node{$i + 1} {$used / $HZ / $D:.2f} cores, {$used / $HZ * 1e6 / ($RPS * $D):.1f} us/req', end=';')")
done
echo "${line%;}"
grep -E "Non-2xx|Socket errors" "$TMP/wrk.out" || true
