#!/usr/bin/env python3
"""A meshage handler in Python, standard library only.

Run with: python3 examples/handler.py [PORT]     (or PORT=9000 in the environment; 0 picks one)
then:     meshage node --handler echo=http://127.0.0.1:9000/

The node POSTs each message of its stream here: the body is the message data (JSON), and the
headers X-Stream, X-Partition-Key and X-Service-ID say where it was sent (stream and key are
percent-encoded). The JSON answer goes back to the sender with its status; a 4xx is passed
through, a 5xx becomes a 502. GET is the health check: answer 503 to be taken out of the
cluster, anything below 500 to stay in.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


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
