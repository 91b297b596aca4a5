#!/usr/bin/env bash
# What does a second hop cost on this machine, whatever does the forwarding? The bound that
# the benchmark issue's "forwarded >= 0.5x the bare server" meets at few connections, for
# BENCHMARKS.md ("Where the time goes now").
#
# Run with: bash benches/hop_bound.sh [ROUNDS] [SECONDS] [CONNS]   (defaults 5, 4, 4; after
# `cargo build --release --bin meshage --examples`; needs wrk and nginx)
#
# Each round drives, with wrk -t2 (POST {"hello":"world"}, keys key-1..key-3000, CONNS
# connections, SECONDS each), one after the other:
#   - bare: a bare echo server (examples/bare_echo.rs), the round's baseline;
#   - min proxy: examples/min_proxy.rs in front of that server: a thread and an upstream
#     connection per client connection, blocking reads and writes, nothing parsed but two
#     lengths. The least work a forwarding hop can do;
#   - nginx: `proxy_pass` with keep-alive to the same server (2 workers, as in cluster.py);
#   - meshage forwarded: an entry node that owns nothing, two owner nodes (`--echo echo`), so
#     every request crosses a peer link.
# and prints each row's req/s and its ratio to the round's bare server, then the medians.
#
# ENTRIES="default MESHAGE_THREADS=1 ..." starts one entry node per word, each with those
# settings in its environment (several separated by commas; `default` for none), all in front of
# the same two owners, and drives each in every round: settings compared in one run.
set -euo pipefail
ROUNDS=${1:-5}
D=${2:-4}
C=${3:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  [ -f "$TMP/nginx.pid" ] && kill -QUIT "$(cat "$TMP/nginx.pid")" 2>/dev/null
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
up() { for _ in $(seq 400); do curl -s -o /dev/null -XPOST -d '{}' "http://127.0.0.1:$1/api/echo/k" && return; sleep 0.05; done; echo "port $1 never answered" >&2; exit 1; }

BARE=$(port SOCK_STREAM); UPSTREAM=$(port SOCK_STREAM); PROXY=$(port SOCK_STREAM); NG=$(port SOCK_STREAM)
"$B/examples/bare_echo" "127.0.0.1:$BARE" >/dev/null 2>&1 & PIDS+=($!)
"$B/examples/bare_echo" "127.0.0.1:$UPSTREAM" >/dev/null 2>&1 & PIDS+=($!)
"$B/examples/min_proxy" "127.0.0.1:$PROXY" "127.0.0.1:$UPSTREAM" >/dev/null 2>&1 & PIDS+=($!)
mkdir -p "$TMP/ngx"
cat > "$TMP/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/ngx; proxy_temp_path $TMP/ngx; fastcgi_temp_path $TMP/ngx;
  uwsgi_temp_path $TMP/ngx; scgi_temp_path $TMP/ngx;
  upstream echo { server 127.0.0.1:$UPSTREAM; keepalive 128; }
  server {
    listen 127.0.0.1:$NG;
    location / { proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
"$NGINX" -c "$TMP/nginx.conf" -p "$TMP" >/dev/null 2>&1 & PIDS+=($!)

export RUST_LOG=warn CLUSTER_HOST=127.0.0.1 HTTP_HOST=127.0.0.1
G=$(port SOCK_DGRAM)
node() { "$B/meshage" node "$@" >/dev/null 2>&1 & PIDS+=($!); }
CLUSTER_PORT=$G HTTP_PORT=$(port SOCK_STREAM) node --echo echo
CLUSTER_PORT=$(port SOCK_DGRAM) HTTP_PORT=$(port SOCK_STREAM) SEEDS=127.0.0.1:$G node --echo echo
read -ra VARIANTS <<< "${ENTRIES:-default}"
ENTRY_PORTS=()
for v in "${VARIANTS[@]}"; do
  E=$(port SOCK_STREAM); ENTRY_PORTS+=("$E")
  settings=(); [ "$v" = default ] || IFS=, read -ra settings <<< "$v"
  env ${settings[@]+"${settings[@]}"} CLUSTER_PORT="$(port SOCK_DGRAM)" HTTP_PORT="$E" SEEDS="127.0.0.1:$G" \
    "$B/meshage" node >/dev/null 2>&1 & PIDS+=($!)
done
services() { curl -s "http://127.0.0.1:$1/api/services" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0; }
for E in "${ENTRY_PORTS[@]}"; do
  for _ in $(seq 800); do [ "$(services "$E")" = 2 ] && break; sleep 0.05; done
  [ "$(services "$E")" = 2 ] || { echo "the entry node on $E never saw both owners" >&2; exit 1; }
done
for p in $BARE $PROXY $NG; do up "$p"; done

drive() { wrk -t2 "-c$C" -d"$1s" -s "$ROOT/benches/keys.lua" "http://127.0.0.1:$2" | awk '/Requests\/sec/ {print $2}'; }
for p in $BARE $PROXY $NG "${ENTRY_PORTS[@]}"; do drive 1 "$p" >/dev/null; done  # warm-up: links, pools
NAMES=()
for v in "${VARIANTS[@]}"; do
  if [ "${#VARIANTS[@]}" = 1 ] && [ "$v" = default ]; then NAMES+=("meshage forwarded"); else NAMES+=("meshage forwarded ($v)"); fi
done
HEADER=$(IFS='|'; echo "${NAMES[*]}")
echo "req/s at $C connections (ratio to the round's bare server): bare | min proxy | nginx | ${HEADER//|/ | }"
for r in $(seq "$ROUNDS"); do
  line="$r $(drive "$D" "$BARE") $(drive "$D" "$PROXY") $(drive "$D" "$NG")"
  for E in "${ENTRY_PORTS[@]}"; do line+=" $(drive "$D" "$E")"; done
  echo "$line"
done | NAMES="$HEADER" python3 -c '
import os, statistics, sys
names = os.environ["NAMES"].split("|")
rows = []
for line in sys.stdin:
    r, *v = line.split(); v = [float(x) for x in v]; rows.append(v)
    print(f"{r}: {v[0]:,.0f} | " + " | ".join(f"{x:,.0f} ({x / v[0]:.2f})" for x in v[1:]), flush=True)
med = lambda f: statistics.median(f(v) for v in rows)
print("median ratio to bare: " + ", ".join(
    [f"min proxy {med(lambda v: v[1] / v[0]):.2f}", f"nginx {med(lambda v: v[2] / v[0]):.2f}"]
    + [f"{n} {med(lambda v: v[3 + i] / v[0]):.2f}" for i, n in enumerate(names)]))
for i, n in enumerate(names):
    print(f"{n}: / min proxy {med(lambda v: v[3 + i] / v[1]):.2f}, / nginx {med(lambda v: v[3 + i] / v[2]):.2f}")'
