#!/usr/bin/env bash
# CPU per request: where a node's time goes under one kind of load.
#
# Run with: bash benches/cpu.sh MODE [CONNS] [SECONDS]   (after `python3 benches/cluster.py`
# has built release, or `cargo build --release --bin meshage --example bare_echo --example bench_keys`)
#
# MODE is `bare` (one bare echo server), `local` (a 3-node cluster, keys owned by the entry
# node), `fwd` (keys owned by the other two nodes), `mixed` (all keys), `broadcast` (every key, to
# all 3 services) or `upstream` (keys owned by the entry node, whose service is a handler over
# HTTP: `--handler echo=URL` to a bare echo server, listed last). It drives the entry with wrk (POST
# {"hello":"world"}, 2 threads, CONNS connections, default 64, for SECONDS, default 5, after a
# 1 s warm-up) and prints req/s and, per request, the CPU time each process used (and the share
# of it spent in the kernel) and the context switches of its threads, from /proc; each process's peak RSS; and how much of the whole
# machine's CPU time stayed idle (a high share under load means requests wait on wake-ups,
# not on CPU).
# MESHAGE_THREADS and other settings in the environment reach the nodes. BODY_BYTES=N sends
# {"hello":"xxx…"} with N x's instead of {"hello":"world"}.
#
# With CALLGRIND=1 the entry node (or the bare server) runs under valgrind's callgrind, and the
# script also prints the instructions it executed in user space per request: a count that,
# unlike time, does not move with the machine's load (the kernel's share is not in it), and the
# same less what the node runs idle for as long (gossip and timers, measured first), which does
# not move with the number of requests a run serves either. The
# process runs about 50 times slower under callgrind, so use few connections and short runs.
# CALLGRIND_OUT=FILE keeps the profile, for callgrind_annotate.
set -euo pipefail
MODE=${1:?usage: bash benches/cpu.sh bare|local|fwd|mixed|broadcast|upstream [CONNS] [SECONDS]}
PREFIX=/api/echo/
C=${2:-64}
D=${3:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
TMP=$(mktemp -d)
PIDS=()
UPSTREAM=
cleanup() { kill "${PIDS[@]}" $UPSTREAM 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
sys() { awk '{print $15}' "/proc/$1/stat"; }
# context switches of every thread of a process, voluntary and not
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }
export RUST_LOG=warn CLUSTER_HOST=127.0.0.1 HTTP_HOST=127.0.0.1
H=$(port SOCK_STREAM)
WRAP=
if [ "${CALLGRIND:-0}" = 1 ]; then
  WRAP="valgrind --tool=callgrind --callgrind-out-file=$TMP/callgrind.out"
fi
if [ "$MODE" = bare ]; then
  $WRAP "$B/examples/bare_echo" "127.0.0.1:$H" >/dev/null 2>&1 & PIDS+=($!)
  seq 1 3000 | sed 's/^/k/' > "$TMP/keys"
  for _ in $(seq 400); do curl -s -o /dev/null "http://127.0.0.1:$H/x" -d '{}' && break; sleep 0.05; done
else
  SERVE=(--echo echo)
  if [ "$MODE" = upstream ]; then
    # Every node's service is an HTTP handler: one bare echo server, which all three call.
    U=$(port SOCK_STREAM)
    "$B/examples/bare_echo" "127.0.0.1:$U" >/dev/null 2>&1 & UPSTREAM=$!
    for _ in $(seq 400); do curl -s -o /dev/null "http://127.0.0.1:$U/x" -d '{}' && break; sleep 0.05; done
    SERVE=(--handler "echo=http://127.0.0.1:$U/")
  fi
  G=$(port SOCK_DGRAM)
  CLUSTER_PORT=$G HTTP_PORT=$H $WRAP "$B/meshage" node "${SERVE[@]}" >/dev/null 2>&1 & PIDS+=($!)
  for _ in 1 2; do
    CLUSTER_PORT=$(port SOCK_DGRAM) HTTP_PORT=$(port SOCK_STREAM) SEEDS=127.0.0.1:$G \
      "$B/meshage" node "${SERVE[@]}" >/dev/null 2>&1 & PIDS+=($!)
  done
  if [ -n "$UPSTREAM" ]; then PIDS+=("$UPSTREAM"); fi
  services() { curl -s "http://127.0.0.1:$H/api/services" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0; }
  for _ in $(seq 800); do [ "$(services)" = 3 ] && break; sleep 0.05; done
  read -r LOCAL IDS < <(curl -s "http://127.0.0.1:$H/api/services" | python3 -c "
import json, sys, urllib.request
node = json.load(urllib.request.urlopen('http://127.0.0.1:$H/api/health'))['node']
s = json.load(sys.stdin)
print(next(x['id'] for x in s if x['node'] == node), ','.join(x['id'] for x in s))")
  case $MODE in
    local|upstream) SIDE=L ;;
    fwd) SIDE=R ;;
    mixed) SIDE=. ;;
    broadcast) SIDE=. PREFIX=/api/broadcast/echo/ ;;
    *) echo "unknown mode $MODE" >&2; exit 2 ;;
  esac
  "$B/examples/bench_keys" "$LOCAL" "$IDS" 3000 | awk -v s="$SIDE" '$1 ~ s {print $2}' > "$TMP/keys"
fi
BODY="'{\"hello\":\"world\"}'"
if [ -n "${BODY_BYTES:-}" ]; then BODY="'{\"hello\":\"' .. string.rep('x', $BODY_BYTES) .. '\"}'"; fi
cat > "$TMP/keys.lua" <<LUA
local keys = {}
for line in io.lines("$TMP/keys") do keys[#keys + 1] = line end
local i = 0
wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"
wrk.body = $BODY
function init(args) i = math.random(#keys) end
function request() i = i % #keys + 1; return wrk.format(nil, "$PREFIX" .. keys[i]) end
LUA
wrk -t2 -c"$C" -d1s -s "$TMP/keys.lua" "http://127.0.0.1:$H" >/dev/null
if [ -n "$WRAP" ]; then
  # What the node does with no request (gossip, timers) over as long as the load runs, so that
  # it can be told apart from what requests cost: the first dump, then the load's.
  callgrind_control -z "${PIDS[0]}" >/dev/null 2>&1
  sleep "$D"
  callgrind_control -d "${PIDS[0]}" >/dev/null 2>&1
fi
# the whole machine's idle and busy time, in ticks, from the first line of /proc/stat
machine() { awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
read -r idle0 busy0 < <(machine)
before=(); sw0=(); sys0=(); for p in "${PIDS[@]}"; do before+=("$(ticks "$p")"); sw0+=("$(switches "$p")"); sys0+=("$(sys "$p")"); done
wrk -t2 -c"$C" -d"${D}s" -s "$TMP/keys.lua" "http://127.0.0.1:$H" > "$TMP/wrk.out"
after=(); sw1=(); sys1=(); for p in "${PIDS[@]}"; do after+=("$(ticks "$p")"); sw1+=("$(switches "$p")"); sys1+=("$(sys "$p")"); done
read -r idle1 busy1 < <(machine)
RPS=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk.out")
HZ=$(getconf CLK_TCK)
line="$MODE c=$C: $RPS req/s;"
for i in "${!PIDS[@]}"; do
  used=$(( ${after[$i]} - ${before[$i]} ))
  sw=$(( ${sw1[$i]} - ${sw0[$i]} ))
  ksys=$(( ${sys1[$i]} - ${sys0[$i]} ))
  peak=$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[$i]}/status")
  line+=$(python3 -c "print(f' node{$i + 1} {$used / $HZ / $D:.2f} cores, {$used / $HZ * 1e6 / ($RPS * $D):.1f} us/req ({$ksys / max(1, $used):.0%} kernel), {$sw / ($RPS * $D):.2f} switches/req, peak RSS {$peak / 1024:.1f} MB', end=';')")
done
line+=$(python3 -c "print(f' machine {($idle1 - $idle0) / max(1, $idle1 - $idle0 + $busy1 - $busy0):.0%} idle')")
echo "$line"
if [ -n "$WRAP" ]; then
  callgrind_control -d "${PIDS[0]}" >/dev/null 2>&1
  summary() { awk '/^summary:/ {n += $2} END {print n}' "$1"; }
  IDLE=$(summary "$TMP"/callgrind.out.1)
  IR=$(summary "$TMP"/callgrind.out.2)
  REQS=$(awk '/requests in/ {print $1}' "$TMP/wrk.out")
  python3 -c "print(f'entry: {$IR / $REQS:,.0f} instructions per request (user space, callgrind), {$REQS} requests; {($IR - $IDLE) / $REQS:,.0f} less the {$IDLE / $D / 1e6:.1f} M/s the node runs idle')"
  if [ -n "${CALLGRIND_OUT:-}" ]; then cp "$TMP"/callgrind.out.2 "$CALLGRIND_OUT"; fi
fi
grep -E "Non-2xx|Socket errors" "$TMP/wrk.out" || true
