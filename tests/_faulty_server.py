"""A misbehaving HTTP server on 127.0.0.1 for fault-injection tests.

Every route is a small function that writes a (possibly broken) answer. Handlers that
stall wait on ``server.stop`` with a bounded timeout, so closing the server ends them
at once and no test can hang on its own server. Nothing here touches any address but
127.0.0.1 (and 127.0.0.2, also loopback, for redirect tests).
"""

from __future__ import annotations

import collections
import http.server
import socket
import threading
from typing import Callable

Route = Callable[[http.server.BaseHTTPRequestHandler], None]
MAX_STALL = 30.0  # upper bound on any stall, even if the test forgets to close the server


class FaultyServer:
    """Threaded HTTP/1.0 server; ``route(path, fn)`` registers a handler, ``requests``
    counts GETs per path, ``close()`` releases every stalled handler."""

    def __init__(self, host: str = "127.0.0.1", keep_alive: bool = False):
        self.routes: dict[str, Route] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            # HTTP/1.1 keeps connections open between requests (for leak tests); every
            # answer must then carry a Content-Length
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_GET(self):  # noqa: N802
                path = self.path.split("?", 1)[0]
                server.requests[path] += 1
                route = server.routes.get(path)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

            def log_message(self, format, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/{path.lstrip('/')}"

    def route(self, path: str, fn: Route) -> str:
        self.routes["/" + path.lstrip("/")] = fn
        return self.url(path)

    def stall(self, seconds: float) -> None:
        self.stop.wait(min(seconds, MAX_STALL))

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self) -> "FaultyServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ answers


def answer(status: int = 200, body: bytes = b"", content_type: str = "application/octet-stream",
           content_length: int | bool = True, headers: dict | None = None) -> Route:
    """A complete answer; ``content_length`` True = correct header, False = none (body
    ends at close), an int = that (possibly lying) value."""

    def fn(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        if content_length is True:
            h.send_header("Content-Length", str(len(body)))
        elif content_length is not False:
            h.send_header("Content-Length", str(int(content_length)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    return fn


def redirect(location: str, status: int = 302) -> Route:
    return answer(status, b"", "text/plain", headers={"Location": location})


def headers_then_stall(server: FaultyServer, seconds: float, declared: int = 10_000, first: bytes = b"") -> Route:
    """Send the status line, headers and ``first`` bytes, then go quiet."""

    def fn(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(declared))
        h.end_headers()
        h.wfile.write(first)
        h.wfile.flush()
        server.stall(seconds)

    return fn


def never_answer(server: FaultyServer, seconds: float) -> Route:
    """Read the request, then say nothing at all."""

    def fn(h: http.server.BaseHTTPRequestHandler) -> None:
        server.stall(seconds)

    return fn


def endless_body(server: FaultyServer, chunk: bytes = b"\0" * 65536, limit: int = 64 << 20) -> Route:
    """200 without Content-Length, streaming up to ``limit`` bytes (the client must stop first)."""

    def fn(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.end_headers()
        sent = 0
        while sent < limit and not server.stop.is_set():
            h.wfile.write(chunk)
            sent += len(chunk)

    return fn


class SilentListener:
    """A TCP port that accepts connections and never reads or writes (bounded by close())."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/img.png"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)
            except (socket.timeout, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()
