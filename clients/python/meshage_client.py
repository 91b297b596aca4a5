"""A client of a meshage node's HTTP API, standard library only (Python 3.8 and later).

    from meshage_client import MeshClient, MeshError
    mesh = MeshClient("http://127.0.0.1:8080")
    mesh.send("echo", "alice", {"hello": "world"})   # the owner's answer

The same surface and meaning as the Rust client (src/client.rs) and the ``meshage`` commands:
one request per call, no retries of its own (the node retries what cannot have run), and any
status outside 2xx raised as a MeshError. See README.md beside this file.
"""

import http.client
import json
import socket
import ssl
import time
import urllib.parse
from typing import Any, List, Optional

__all__ = ["MeshClient", "MeshError"]
__version__ = "0.1.0"

#: Stream names the HTTP API keeps for its own routes: a send cannot reach them.
RESERVED_STREAMS = ("broadcast", "locate", "members")

#: The default ``timeout``: what the ``meshage`` commands wait, in seconds.
DEFAULT_TIMEOUT = 30.0

#: The default ``max_response_bytes``: a larger answer is refused, not buffered.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024

_NOTHING = object()


class MeshError(Exception):
    """Why a call failed.

    ``status`` is the node's HTTP status, or 0 when no answer came; ``message`` the node's
    error text; ``kind`` the class the ``meshage`` command's exit codes tell apart:
    ``bad_input`` (a 4xx other than 401, 403 and 404, or input refused before sending),
    ``not_found`` (404: no service on the stream), ``unauthorized`` (401 or 403),
    ``unreachable`` (no answer: refused connection, TLS failure, or the timeout) and
    ``failed`` (anything else, such as a 502 when a key's owner is down); ``body`` the node's
    JSON error body (``{"error": "..."}``) or None; ``timed_out`` whether the call ran out of
    its timeout.
    """

    def __init__(
        self,
        status: int,
        message: str,
        body: Any = None,
        kind: Optional[str] = None,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body
        self.kind = kind or _kind_of(status)
        self.timed_out = timed_out

    def __str__(self) -> str:
        return "{} ({})".format(self.message, self.status) if self.status else self.message


def _kind_of(status: int) -> str:
    if status == 0:
        return "unreachable"
    if status == 404:
        return "not_found"
    if status in (401, 403):
        return "unauthorized"
    if 400 <= status < 500:
        return "bad_input"
    return "failed"


class MeshClient:
    """A client of one node.

    ``url`` is ``http://host:port``, ``https://host:port`` or ``host:port``. Each call waits at
    most ``timeout`` seconds. ``token`` is sent as ``Authorization: Bearer TOKEN``. Over HTTPS
    the node's certificate is verified against the system's CA bundle, or against ``cafile``
    (PEM) alone when given. Raises MeshError (``bad_input``) on a URL that is not
    ``http[s]://host[:port]`` or a token a header cannot hold.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        cafile: Optional[str] = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.url, self._scheme, self._host, self._port = _base_url(url)
        if not timeout > 0:
            raise MeshError(0, "timeout must be a positive number of seconds", kind="bad_input")
        self.timeout = float(timeout)
        self.max_response_bytes = max_response_bytes
        self._context = None  # type: Optional[ssl.SSLContext]
        if self._scheme == "https":
            try:
                self._context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as e:
                raise MeshError(
                    0, "cannot read the CA file {}: {}".format(cafile, e), kind="bad_input"
                ) from None
        self._authorization = None  # type: Optional[str]
        token = (token or "").strip()
        if token:
            # Only visible ASCII and spaces: anything else could split or forge a header.
            if not all(" " <= c <= "~" for c in token):
                raise MeshError(
                    0, "the API token holds characters a header cannot", kind="bad_input"
                )
            self._authorization = "Bearer " + token

    def __repr__(self) -> str:
        # Shows the node, never the token.
        return "MeshClient({!r})".format(self.url)

    def send(self, stream: str, key: str, message: Any = _NOTHING) -> Any:
        """Sends ``message`` (any JSON value; ``{}`` when not given) to the service that owns
        ``key`` on ``stream`` and returns its answer. ``POST /api/{stream}/{key}``."""
        _check_stream(stream)
        if stream in RESERVED_STREAMS:
            raise MeshError(
                0,
                "the stream name `{}` is reserved by the HTTP API".format(stream),
                kind="bad_input",
            )
        return self._call("POST", _message_path("/api/", stream, key), message)

    def broadcast(self, stream: str, key: str, message: Any = _NOTHING) -> List[Any]:
        """Sends ``message`` to every service of ``stream``: a list with one entry per service,
        its answer or ``{"error", "serviceId", "status"}`` for a service that failed (not a
        failure of the call). ``key`` reaches every handler as the partition key.
        ``POST /api/broadcast/{stream}/{key}``."""
        _check_stream(stream)
        return self._call("POST", _message_path("/api/broadcast/", stream, key), message)

    def services(self, stream: Optional[str] = None) -> List[dict]:
        """Every routable service (``GET /api/services``), or only those of ``stream``:
        ``[{"id", "stream", "node", "endpoints": [{"endpointType", "description"}]}]``."""
        services = self._call("GET", "/api/services")
        if stream is None:
            return services
        return [s for s in services if s.get("stream") == stream]

    def members(self) -> List[dict]:
        """Every node the node knows, with its state and services (``GET /api/members``)."""
        return self._call("GET", "/api/members")

    def locate(self, stream: str, key: str) -> dict:
        """The service and node that own ``key`` on ``stream``, without running anything:
        ``{"stream", "partitionKey", "serviceId", "node", "endpoint", "local", "services",
        "tableVersion"}``. ``GET /api/locate/{stream}/{key}``."""
        _check_stream(stream)
        return self._call("GET", _message_path("/api/locate/", stream, key))

    def _call(self, method: str, path: str, message: Any = _NOTHING) -> Any:
        headers = {"Accept": "application/json"}
        body = None
        if method == "POST":
            headers["Content-Type"] = "application/json"
            try:
                text = json.dumps({} if message is _NOTHING else message, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise MeshError(
                    0, "the message is not JSON: {}".format(e), kind="bad_input"
                ) from None
            body = text.encode("utf-8")
        if self._authorization:
            headers["Authorization"] = self._authorization
        deadline = time.monotonic() + self.timeout
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._context
            )  # type: http.client.HTTPConnection
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            _shorten(conn, deadline)
            response = conn.getresponse()
            status = response.status
            text = self._read(conn, response, deadline)
        except MeshError:
            raise
        except socket.timeout:
            raise MeshError(
                0,
                "{}: no answer within {:g} s".format(self.url, self.timeout),
                kind="unreachable",
                timed_out=True,
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise MeshError(
                0, "{}: cannot reach it: {}".format(self.url, e), kind="unreachable"
            ) from None
        finally:
            conn.close()
        try:
            value = json.loads(text)
        except ValueError:
            value = _NOTHING
        if 200 <= status < 300:
            return text if value is _NOTHING else value
        raise MeshError(
            status,
            _error_message(status, value, text),
            body=None if value is _NOTHING else value,
        )

    def _read(self, conn: http.client.HTTPConnection, response: Any, deadline: float) -> str:
        """The answer's text, refused once it passes ``max_response_bytes``; every read
        waits at most until the call's deadline."""
        limit = self.max_response_bytes
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise _too_large(response.status, limit)
        chunks = []
        total = 0
        while True:
            _shorten(conn, deadline)
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise _too_large(response.status, limit)
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")


def _shorten(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Lets the next read wait only as long as the call has left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("deadline passed")
    if conn.sock is not None:
        conn.sock.settimeout(left)


def _base_url(url: str) -> tuple:
    given = str(url or "").strip()

    def bad(why: str) -> MeshError:
        return MeshError(0, "invalid node URL `{}`: {}".format(given, why), kind="bad_input")

    parsed = urllib.parse.urlsplit(given if "://" in given else "http://" + given)
    if parsed.scheme not in ("http", "https"):
        raise bad("only http:// and https:// are supported")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        raise bad("expected http://host:port") from None
    if not host or parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise bad("expected http://host:port")
    if parsed.username or parsed.password:
        raise bad("credentials go in the token argument, not the URL")
    if port is None:
        port = 443 if parsed.scheme == "https" else 80
    netloc = parsed.netloc
    return "{}://{}".format(parsed.scheme, netloc), parsed.scheme, host, port


def _check_stream(stream: str) -> None:
    if not isinstance(stream, str) or not stream:
        raise MeshError(0, "the stream name is empty", kind="bad_input")


def _message_path(prefix: str, stream: str, key: str) -> str:
    """``prefix`` + the stream and key, each percent-encoded as one path segment."""
    quote = urllib.parse.quote
    return "{}{}/{}".format(prefix, quote(stream, safe=""), quote(str(key), safe=""))


def _too_large(status: int, limit: int) -> MeshError:
    return MeshError(
        status,
        "the answer is larger than max_response_bytes ({})".format(limit),
        kind="failed",
    )


def _error_message(status: int, value: Any, text: str) -> str:
    """The node's ``error`` text, else the body's text on one line, else the status."""
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return value["error"]
    return " ".join(text.split()) or "HTTP {}".format(status)
