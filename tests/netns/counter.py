#!/usr/bin/env python3
"""A counting handler for the failure tests: how many times each request ran.

Run with: python3 tests/netns/counter.py HOST PORT NAME
then:     meshage node --handler count=http://HOST:PORT/

POST: the body is `{"id": ..., "sleep_ms": n}`; it sleeps n ms (work in flight when a node
dies), counts one more execution of `id`, and answers `{"id", "count", "node"}`.
GET /counts: `{"node": NAME, "counts": {id: executions}}`. GET /ran: `{"node": NAME, "ran":
{key: [unix time of each execution]}}` (the key from X-Partition-Key). Any other GET: the health
check.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTS = {}
RAN = {}
LOCK = threading.Lock()
NAME = sys.argv[3] if len(sys.argv) > 3 else "counter"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
            request_id = str(data["id"])
        except (ValueError, KeyError, TypeError) as e:
            self.answer(400, {"error": f"expected {{\"id\": ...}}: {e}"})
            return
        sleep_ms = data.get("sleep_ms") or 0
        if sleep_ms:
            time.sleep(sleep_ms / 1000)
        key = self.headers.get("X-Partition-Key", "")
        with LOCK:
            COUNTS[request_id] = COUNTS.get(request_id, 0) + 1
            count = COUNTS[request_id]
            RAN.setdefault(key, []).append(time.time())
        self.answer(200, {"id": request_id, "count": count, "node": NAME})

    def do_GET(self):
        if self.path == "/counts":
            with LOCK:
                counts = dict(COUNTS)
            self.answer(200, {"node": NAME, "counts": counts})
        elif self.path == "/ran":
            with LOCK:
                ran = {key: list(times) for key, times in RAN.items()}
            self.answer(200, {"node": NAME, "ran": ran})
        else:
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
    host, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"listening on http://{host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
