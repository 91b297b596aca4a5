#!/usr/bin/env python3
"""Cluster benchmark: meshage against a bare server and nginx, in one run on one machine.

Run with: python3 benches/cluster.py [--quick] [--rounds N] [--duration S] [--only ROWS] [--out FILE]
                                     [--also-binary PATH [--also-label NAME]]

Builds release, starts the baselines (a bare echo server; nginx hashing over three of them; the
least work a forwarding hop can do, examples/min_proxy.rs, in front of one) and a 3-node meshage
cluster on loopback, drives each with
wrk (POST {"hello":"world"}, partition key varied per request, 4 and 64 connections, bounded
duration) and prints one table: req/s, p50, p99, non-2xx answers, and each row's ratio to the bare
server measured in the same run. With --rounds N every row runs N times, interleaved, and each
figure is the median over the rounds, ratios taken within each round. A second 3-node cluster
runs with a cluster key (peer links and forwards over mutual TLS) for the rows "with the key",
and the report gives the keyed forwarded row against the same row without, round by round. A
third serves HTTPS to clients with the operator's certificates (made by `meshage certs`; wrk
speaks TLS) for the row "HTTPS client", reported against the plain local row the same way. It also reports each
node's RSS (idle, peak, and over a soak in the full mode), the cluster's start-to-convergence time (median of several starts) and the time for
the others to drop a SIGKILLed node. With --also-binary, a fourth cluster runs another meshage
binary (another build of it, such as one with `--features otel`) for the rows "local" and
"forwarded" of that build, reported against the same rows of the usual binary round by round.
Installs wrk and nginx from Debian when missing.
Every load is bounded: wrk runs for a fixed duration; every wait has a deadline.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
MESHAGE = os.path.join(TARGET, "release", "meshage")
BARE = os.path.join(TARGET, "release", "examples", "bare_echo")
KEYS = os.path.join(TARGET, "release", "examples", "bench_keys")
MIN_PROXY = os.path.join(TARGET, "release", "examples", "min_proxy")
BODY = '{"hello":"world"}'
KEYED_FORWARDED = "meshage forwarded, with the cluster key (mTLS)"
TLS_LOCAL = "meshage local, HTTPS client (operator TLS)"
# Verifies the operator-TLS cluster's certificates (made by `meshage certs`) for http_json.
TLS_CONTEXT = None
PEER_PROTOCOL = "link"

LUA = r"""
local keys = {}
for line in io.lines(os.getenv("BENCH_KEYS")) do keys[#keys + 1] = line end
local prefix = os.getenv("BENCH_PREFIX")
local i = 0
wrk.method = "POST"
wrk.body = '{"hello":"world"}'
wrk.headers["Content-Type"] = "application/json"
function init(args)
  -- each wrk thread starts at a different place in the key list
  i = math.random(#keys)
end
function request()
  i = i % #keys + 1
  return wrk.format(nil, prefix .. keys[i])
end
"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_tools():
    missing = [p for p, b in (("wrk", "wrk"), ("nginx", "nginx")) if not shutil.which(b) and not os.path.exists("/usr/sbin/" + b)]
    if missing:
        log("installing", *missing)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def build():
    log("building release")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bin", "meshage", "--example", "bare_echo", "--example", "bench_keys",
         "--example", "min_proxy"],
        cwd=ROOT,
        check=True,
    )


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_json(url, data=None, timeout=5):
    req = urllib.request.Request(url, data=data.encode() if data else None, method="POST" if data else "GET")
    if data:
        req.add_header("Content-Type", "application/json")
    context = TLS_CONTEXT if url.startswith("https://") else None
    with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
        return json.loads(r.read())


def wait_for(what, cond, timeout=20, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")


class Procs:
    """Every child process, killed at exit whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, args, env=None, name=""):
        p = subprocess.Popen(args, env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p.name = name
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                # nginx's master must stop its workers itself: ask, never SIGKILL it.
                p.terminate() if p.name == "nginx" else p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def make_certs(tmp):
    """A CA and three node certificates made by `meshage certs`, in tmp/pki; returns the dir."""
    global TLS_CONTEXT
    pki = os.path.join(tmp, "pki")
    subprocess.run([MESHAGE, "certs", "ca", "--out", pki], check=True, capture_output=True)
    for i in range(3):
        subprocess.run([MESHAGE, "certs", "node", "--ca", pki, "--name", f"node{i + 1}", "--out", pki],
                       check=True, capture_output=True)
    TLS_CONTEXT = ssl.create_default_context(cafile=os.path.join(pki, "ca.pem"))
    return pki


def start_cluster(procs, key=None, pki=None, binary=None):
    """Three meshage nodes on loopback, with the cluster key `key` if given, and serving HTTPS
    with the operator's certificates of `pki` if given; returns (processes, urls, seconds until
    converged)."""
    gossip = [free_port(socket.SOCK_DGRAM) for _ in range(3)]
    http = [free_port() for _ in range(3)]
    scheme = "https" if pki else "http"
    urls = [f"{scheme}://127.0.0.1:{p}" for p in http]
    started = time.monotonic()
    nodes = []
    for i in range(3):
        env = {
            "CLUSTER_HOST": "127.0.0.1",
            "CLUSTER_PORT": str(gossip[i]),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(http[i]),
            "RUST_LOG": "warn",
            "MESHAGE_PEER_PROTOCOL": PEER_PROTOCOL,
        }
        if i > 0:
            env["SEEDS"] = f"127.0.0.1:{gossip[0]}"
        if key:
            env["MESHAGE_CLUSTER_KEY"] = key
        if pki:
            env["MESHAGE_TLS_CERT"] = os.path.join(pki, f"node{i + 1}.pem")
            env["MESHAGE_TLS_KEY"] = os.path.join(pki, f"node{i + 1}-key.pem")
            env["MESHAGE_TLS_CA"] = os.path.join(pki, "ca.pem")
        nodes.append(procs.start([binary or MESHAGE, "node", "--echo", "echo"], env, name=f"node{i + 1}"))

    def converged():
        return all(len(http_json(u + "/api/services", timeout=1)) == 3 for u in urls)

    wait_for("3-node convergence", converged, timeout=30, step=0.005)
    return nodes, urls, time.monotonic() - started


def wrk(url, prefix, keys_file, conns, duration):
    env = dict(os.environ, BENCH_KEYS=keys_file, BENCH_PREFIX=prefix)
    threads = min(2, conns)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "--latency", "-s", LUA_FILE, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    if errors:
        bad += sum(int(x) for x in errors.groups())
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "bad": bad}


def nginx_conf(dirname, listen, upstreams):
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in upstreams)
    conf = f"""
worker_processes 2;
daemon off;
pid {dirname}/nginx.pid;
error_log {dirname}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dirname}/body;
  proxy_temp_path {dirname}/proxy;
  fastcgi_temp_path {dirname}/fastcgi;
  uwsgi_temp_path {dirname}/uwsgi;
  scgi_temp_path {dirname}/scgi;
  upstream echo {{
    hash $request_uri consistent;
{servers}
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    path = os.path.join(dirname, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def key_files(tmp, entry, prefix):
    """Keys of the echo stream whose owner is on `entry` ("local"), elsewhere ("forwarded"), and
    both ("mixed"), each in a file of its own named with `prefix`."""
    node_id = http_json(entry + "/api/health")["node"]
    services = http_json(entry + "/api/services")
    local_id = next(s["id"] for s in services if s["node"] == node_id)
    ids = ",".join(s["id"] for s in services)
    lines = subprocess.run([KEYS, local_id, ids, "3000"], capture_output=True, text=True, check=True).stdout.split("\n")
    keysets = {"L": [], "R": []}
    for line in filter(None, lines):
        side, key = line.split(" ", 1)
        keysets[side].append(key)
    files = {}
    for name, keys in (("local", keysets["L"]), ("forwarded", keysets["R"]), ("mixed", keysets["L"] + keysets["R"])):
        path = os.path.join(tmp, prefix + name + ".keys")
        with open(path, "w") as f:
            f.write("\n".join(sorted(keys, key=lambda k: hash(k))) + "\n")
        files[name] = path
    # Sanity: the answers are the echo, for local and forwarded keys alike.
    for side in ("L", "R"):
        answer = http_json(f"{entry}/api/echo/{keysets[side][0]}", BODY)
        assert answer == {"echoed": {"hello": "world"}}, answer
    return files


def main():
    global LUA_FILE, PEER_PROTOCOL
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs; finishes in under a minute")
    ap.add_argument("--out", help="also write the report (markdown) to this file")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--peer-protocol", default="link", choices=["link", "http1", "http2"], help="how nodes forward to each other")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every row this many times, interleaved, and report medians (ratios are taken within each round)")
    ap.add_argument("--duration", type=int, help="seconds per row (default 10, or 2 with --quick)")
    ap.add_argument("--also-binary", help="a second meshage binary (another build), run as a cluster of its own "
                                          "for the rows local and forwarded, reported against the usual binary")
    ap.add_argument("--also-label", default="other build", help="how the rows of --also-binary are named")
    ap.add_argument("--only", help="comma-separated parts of row names: run only the rows that contain one "
                                   "(the bare server and nginx always run: the ratios need them); no soak")
    args = ap.parse_args()
    PEER_PROTOCOL = args.peer_protocol
    duration = args.duration or (2 if args.quick else 10)
    rounds = max(1, args.rounds)
    starts = 3 if args.quick else 7
    conns = [4, 64]

    ensure_tools()
    if not args.no_build:
        build()
    tmp = tempfile.mkdtemp(prefix="meshage-bench-")
    LUA_FILE = os.path.join(tmp, "keys.lua")
    with open(LUA_FILE, "w") as f:
        f.write(LUA)
    procs = Procs()
    began = time.monotonic()
    try:
        # Baselines: three bare servers, nginx hashing over them, and the least a forwarding hop
        # can do (examples/min_proxy.rs: blocking reads and writes, a thread per connection) in
        # front of one of them: the bound of any forwarder's "x bare" on this machine.
        bare_ports = [free_port() for _ in range(3)]
        for p in bare_ports:
            procs.start([BARE, f"127.0.0.1:{p}"], name="bare")
        nginx_port = free_port()
        procs.start(["nginx", "-c", nginx_conf(tmp, nginx_port, bare_ports), "-p", tmp], name="nginx")
        min_proxy_port = free_port()
        procs.start([MIN_PROXY, f"127.0.0.1:{min_proxy_port}", f"127.0.0.1:{bare_ports[1]}"], name="min proxy")
        bare_url = f"http://127.0.0.1:{bare_ports[0]}"
        nginx_url = f"http://127.0.0.1:{nginx_port}"
        min_proxy_url = f"http://127.0.0.1:{min_proxy_port}"
        wait_for("bare servers", lambda: http_json(bare_url + "/x", BODY)["echoed"] == {"hello": "world"})
        wait_for("nginx", lambda: http_json(nginx_url + "/x", BODY)["echoed"] == {"hello": "world"})
        wait_for("min proxy", lambda: http_json(min_proxy_url + "/x", BODY)["echoed"] == {"hello": "world"})

        nodes, urls, first_convergence = start_cluster(procs)
        entry = urls[0]
        files = key_files(tmp, entry, "")
        idle_rss = [rss_kb(p.pid) for p in nodes]
        # The same cluster with a cluster key: peers link and forward over mutual TLS.
        key = base64.b64encode(os.urandom(32)).decode()
        keyed_nodes, keyed_urls, _ = start_cluster(procs, key=key)
        keyed_entry = keyed_urls[0]
        keyed_files = key_files(tmp, keyed_entry, "keyed-")
        keyed_idle_rss = [rss_kb(p.pid) for p in keyed_nodes]
        # The same cluster serving HTTPS to clients with the operator's certificates.
        tls_nodes, tls_urls, _ = start_cluster(procs, pki=make_certs(tmp))
        tls_entry = tls_urls[0]
        tls_files = key_files(tmp, tls_entry, "tls-")

        also, also_nodes = [], []
        if args.also_binary:
            also_nodes, also_urls, _ = start_cluster(procs, binary=args.also_binary)
            also_files = key_files(tmp, also_urls[0], "also-")
            also = [(f"meshage {kind}, {args.also_label}", also_urls[0], "/api/echo/", also_files[kind])
                    for kind in ("local", "forwarded")]

        wanted = [w.strip() for w in args.only.split(",")] if args.only else None
        rows = (
            ("bare server", bare_url, "/api/echo/", files["mixed"]),
            ("nginx consistent hash -> 3 bare", nginx_url, "/api/echo/", files["mixed"]),
            ("min proxy -> bare (least work a hop can do)", min_proxy_url, "/api/echo/", files["mixed"]),
            ("meshage local", entry, "/api/echo/", files["local"]),
            (TLS_LOCAL, tls_entry, "/api/echo/", tls_files["local"]),
            ("meshage forwarded", entry, "/api/echo/", files["forwarded"]),
            (KEYED_FORWARDED, keyed_entry, "/api/echo/", keyed_files["forwarded"]),
            ("meshage mixed", entry, "/api/echo/", files["mixed"]),
            ("meshage broadcast (3 services)", entry, "/api/broadcast/echo/", files["mixed"]),
            *also,
        )
        rows = [r for r in rows if wanted is None or r[0].startswith(("bare", "nginx")) or any(w in r[0] for w in wanted)]

        runs = []
        for rnd in range(rounds):
            for c in conns:
                for name, url, prefix, keys in rows:
                    log(f"round {rnd + 1}/{rounds}: wrk {name} c={c} {duration}s")
                    r = wrk(url, prefix, keys, c, duration)
                    r.update(name=name, conns=c, round=rnd)
                    runs.append(r)
        peak_rss = [rss_kb(p.pid, "VmHWM") for p in nodes]
        keyed_peak_rss = [rss_kb(p.pid, "VmHWM") for p in keyed_nodes]
        for p in keyed_nodes + tls_nodes + also_nodes:
            p.kill()
            p.wait()

        soak = None
        if not args.quick and not args.only:
            log("soak: 60 s of mixed load at 64 connections, sampling RSS")
            env = dict(os.environ, BENCH_KEYS=files["mixed"], BENCH_PREFIX="/api/echo/")
            w = subprocess.Popen(["wrk", "-t2", "-c64", "-d60s", "-s", LUA_FILE, entry], env=env, stdout=subprocess.DEVNULL)
            samples = []
            t0 = time.monotonic()
            while w.poll() is None and time.monotonic() - t0 < 90:
                samples.append([rss_kb(p.pid) for p in nodes])
                time.sleep(5)
            w.wait(timeout=30)
            after = [rss_kb(p.pid) for p in nodes]
            soak = {"samples": samples, "after": after}

        # Failure detection: SIGKILL node 3, time until nodes 1 and 2 drop its service.
        killed_at = time.monotonic()
        nodes[2].send_signal(signal.SIGKILL)
        wait_for("the others to drop the killed node", lambda: all(len(http_json(u + "/api/services", timeout=1)) == 2 for u in urls[:2]), timeout=30, step=0.005)
        detect = time.monotonic() - killed_at
        for p in nodes:
            p.kill()
            p.wait()

        convergence = [first_convergence]
        for _ in range(starts - 1):
            ns, _, t = start_cluster(procs)
            convergence.append(t)
            for p in ns:
                p.kill()
                p.wait()
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    # Ratios are taken within a round (the same minute on a shared machine), then the median of
    # each figure over the rounds is reported.
    base = {(r["round"], r["conns"], kind): r for r in runs
            for kind in ("bare", "nginx") if r["name"].startswith("bare" if kind == "bare" else "nginx")}
    rows = []
    seen = []
    for r in runs:
        if (r["name"], r["conns"]) not in seen:
            seen.append((r["name"], r["conns"]))
    for name, c in seen:
        mine = [r for r in runs if r["name"] == name and r["conns"] == c]

        def med(f):
            return statistics.median(f(r) for r in mine)

        rows.append({
            "name": name, "conns": c, "rps": med(lambda r: r["rps"]), "p50": med(lambda r: r["p50"]),
            "p99": med(lambda r: r["p99"]), "bad": sum(r["bad"] for r in mine),
            "x_bare": med(lambda r: r["rps"] / base[(r["round"], c, "bare")]["rps"]),
            "x_nginx": med(lambda r: r["rps"] / base[(r["round"], c, "nginx")]["rps"]),
            "p99_bare": med(lambda r: r["p99"] / base[(r["round"], c, "bare")]["p99"]),
            "spread": (min(r["rps"] / base[(r["round"], c, "bare")]["rps"] for r in mine),
                       max(r["rps"] / base[(r["round"], c, "bare")]["rps"] for r in mine)),
        })
    out = []
    mode = "quick" if args.quick else "full"
    medians = f"; median of {rounds} interleaved rounds" if rounds > 1 else ""
    out.append(f"meshage cluster benchmark ({mode}): {duration} s per row{medians}, wrk -t2, loopback, "
               f"{os.cpu_count()} cores; load generator on the same cores; peers forward over {PEER_PROTOCOL}")
    out.append("")
    spread_head = " × bare min-max |" if rounds > 1 else ""
    out.append("| row | conns | req/s | p50 ms | p99 ms | non-2xx/errors | × bare | × nginx | p99 × bare |" + spread_head)
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if rounds > 1 else ""))
    for r in rows:
        spread = f" {r['spread'][0]:.2f}-{r['spread'][1]:.2f} |" if rounds > 1 else ""
        out.append(
            f"| {r['name']} | {r['conns']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['bad']} | "
            f"{r['x_bare']:.2f} | {r['x_nginx']:.2f} | {r['p99_bare']:.2f} |{spread}"
        )
    out.append("")
    for c in conns:
        pairs = [(k["rps"], p["rps"]) for k in runs for p in runs
                 if k["name"] == KEYED_FORWARDED and p["name"] == "meshage forwarded"
                 and k["conns"] == p["conns"] == c and k["round"] == p["round"]]
        if pairs:
            ratios = [k / p for k, p in pairs]
            spread = f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
            out.append(f"- forwarded with the cluster key (mutual TLS between nodes) at {c} connections: "
                       f"{statistics.median(ratios):.2f}x the same row without{spread}")
    for c in conns:
        pairs = [(k["rps"], p["rps"]) for k in runs for p in runs
                 if k["name"] == TLS_LOCAL and p["name"] == "meshage local"
                 and k["conns"] == p["conns"] == c and k["round"] == p["round"]]
        if pairs:
            ratios = [k / p for k, p in pairs]
            spread = f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
            out.append(f"- local with an HTTPS client (operator TLS, keep-alive connections) at {c} connections: "
                       f"{statistics.median(ratios):.2f}x the same row over plain HTTP{spread}")
    for kind in ("local", "forwarded"):
        for c in conns:
            pairs = [(k["rps"], p["rps"]) for k in runs for p in runs
                     if k["name"] == f"meshage {kind}, {args.also_label}" and p["name"] == f"meshage {kind}"
                     and k["conns"] == p["conns"] == c and k["round"] == p["round"]]
            if pairs:
                ratios = [k / p for k, p in pairs]
                spread = f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
                out.append(f"- {kind}, {args.also_label}, at {c} connections: "
                           f"{statistics.median(ratios):.2f}x the same row of the usual binary{spread}")
    out.append(f"- RSS per node, idle after start: {', '.join(f'{k / 1024:.1f} MB' for k in idle_rss)}; "
               f"peak after the load rows: {', '.join(f'{k / 1024:.1f} MB' for k in peak_rss)}")
    out.append(f"- RSS per keyed node, idle after start: {', '.join(f'{k / 1024:.1f} MB' for k in keyed_idle_rss)}; "
               f"peak after the load rows: {', '.join(f'{k / 1024:.1f} MB' for k in keyed_peak_rss)}")
    if soak:
        flat = [[s[i] for s in soak["samples"]] for i in range(3)]
        out.append("- RSS during a 60 s mixed soak at 64 connections (min-max per node): "
                   + ", ".join(f"{min(f) / 1024:.1f}-{max(f) / 1024:.1f} MB" for f in flat))
    out.append(f"- start to convergence (every node lists 3 services), {len(convergence)} starts: median "
               f"{statistics.median(convergence) * 1000:.0f} ms (min {min(convergence) * 1000:.0f}, max {max(convergence) * 1000:.0f})")
    out.append(f"- SIGKILLed node dropped by both others after {detect * 1000:.0f} ms")
    out.append(f"- total benchmark time {time.monotonic() - began:.0f} s")
    report = "\n".join(out)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
