#!/usr/bin/env python3
"""A meshage handler in Python, standard library only.

Run with: python3 examples/handler.py [PORT]     (or PORT=9000 in the environment; 0 picks one)
then:     meshage node --handler echo=http://127.0.0.1:9000/

The node POSTs each message of its stream here: the body is the message data (JSON), and the
headers X-Stream, X-Partition-Key and X-Service-ID say where it was sent (stream and key are
percent-encoded). The JSON answer goes back to the sender with its status; a 4xx is passed
through, a 5xx becomes a 502. GET is the health check: answer 503 to be taken out of the
cluster, anything below 500 to stay in.

Stream `counter` is stateful, as examples/stateful_counter.rs: per key, a count and the ids of
the increments that came with one (`{"op": "add", "n": 1}`, "n" 1 by default, optional "id";
`{"op": "get"}`). On a key it holds nothing for, it takes the
state from the service named by X-Meshage-Previous-Owner (the key moved here), through its node
(MESHAGE_URL, default http://127.0.0.1:8080) with X-Service-ID; `{"op": "take"}` hands a key over
and refuses later increments for it with 409, so that the client sends them again.
COUNTER_HINTS=off makes it ignore X-Meshage-Previous-Owner: a moved key starts over from nothing.
"""

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

NODE = os.environ.get("MESHAGE_URL", "http://127.0.0.1:8080")
HINTS = os.environ.get("COUNTER_HINTS") != "off"
MOVED = object()
KEYS = {}  # key -> {"count": n, "applied": [increment ids]}, or MOVED
LOCKS = {}
GUARD = threading.Lock()


def take(stream, key, service):
    """The key's state from `service`, through the node; None when it had none."""
    request = urllib.request.Request(
        f"{NODE}/api/{quote(stream, safe='')}/{quote(key, safe='')}",
        data=b'{"op": "take"}',
        headers={"Content-Type": "application/json", "X-Service-ID": service},
    )
    with urllib.request.urlopen(request, timeout=2) as answer:
        state = json.load(answer)
        if state.get("count") is None:
            return None
        return {"count": state["count"], "applied": state.get("applied") or []}


def counter(stream, key, previous, data):
    """One counter message: (status, answer)."""
    if data.get("op") not in ("add", "get", "take"):
        return 400, {"error": 'expected {"op": "add" | "get" | "take"}'}
    with GUARD:
        lock = LOCKS.setdefault(key, threading.Lock())
    with lock:
        state = KEYS.get(key)
        if data.get("op") == "take":
            KEYS[key] = MOVED
            if isinstance(state, dict):
                return 200, state
            return 200, {"count": None, "applied": None}
        if not isinstance(state, dict):
            taken = None
            if previous and HINTS:
                try:
                    taken = take(stream, key, previous)
                except (OSError, ValueError) as e:
                    return 409, {"error": f"could not take the key from {previous} ({e}); send it again"}
            if taken is None and state is MOVED:
                return 409, {"error": "this key moved to another service; send it again"}
            state = KEYS[key] = taken or {"count": 0, "applied": []}
        if data.get("op") == "get":
            return 200, state
        n = data.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return 400, {"error": '"n" is a whole number of at least 0'}
        if "id" in data:
            state["applied"].append(str(data["id"]))
        state["count"] += n
        return 200, {"count": state["count"]}


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, so the node reuses its connections.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as e:
            self.answer(400, {"error": f"invalid JSON: {e}"})
            return
        stream = unquote(self.headers.get("X-Stream", ""))
        if stream == "counter":
            key = unquote(self.headers.get("X-Partition-Key", ""))
            previous = self.headers.get("X-Meshage-Previous-Owner")
            self.answer(*counter(stream, key, previous, data))
            return
        self.answer(
            200,
            {
                "handledBy": "python",
                "stream": unquote(self.headers.get("X-Stream", "")),
                "key": unquote(self.headers.get("X-Partition-Key", "")),
                "serviceId": self.headers.get("X-Service-ID"),
                "previousOwner": self.headers.get("X-Meshage-Previous-Owner"),
                "data": data,
            },
        )

    def do_GET(self):
        self.answer(200, {"status": "up"})

    def answer(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def main():
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "9000"))
    host = os.environ.get("HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"listening on http://{host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
