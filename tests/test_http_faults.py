"""HTTP faults against a real, misbehaving server on 127.0.0.1 (tests/_faulty_server.py).

Limits are set small through the environment (what ``FetchSettings.from_env`` reads,
so the whole public path ``process_vision_info`` is exercised): connect 1 s, read
0.5 s, total 2 s, 2 retries, 1 MiB cap. Each test asserts the error type, that the
message names the URL and its position, how many requests the server saw, and the
elapsed time against those limits (with slack for a loaded 2-core CI machine).
"""

from __future__ import annotations

import gzip
import io
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

import vlutils
import vlutils.sources
from qwen_vl_utils.vision_process import smart_resize as qwen_smart_resize
from vlutils.errors import DecodeError, describe_source, FetchError, FetchTimeoutError, SizeLimitError, VisionInputError
from vlutils.sources import FetchSettings

from _faulty_server import (
    FaultyServer,
    SilentListener,
    answer,
    endless_body,
    headers_then_stall,
    never_answer,
    redirect,
)

READ_TIMEOUT = 0.5
TOTAL_TIMEOUT = 2.0
RETRIES = 2
MAX_BYTES = 1 << 20
SLACK = 1.5  # scheduling / interpreter slack on a busy CI runner


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    monkeypatch.setenv("VLUTILS_HTTP_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("VLUTILS_HTTP_TIMEOUT", str(READ_TIMEOUT))
    monkeypatch.setenv("VLUTILS_HTTP_TOTAL_TIMEOUT", str(TOTAL_TIMEOUT))
    monkeypatch.setenv("VLUTILS_HTTP_RETRIES", str(RETRIES))
    monkeypatch.setenv("VLUTILS_MAX_BYTES", str(MAX_BYTES))
    for name in ("VLUTILS_SAFE_MODE", "VLUTILS_ALLOWED_ROOTS", "VLUTILS_ALLOWED_SCHEMES", "VLUTILS_ALLOWED_NETWORKS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with FaultyServer() as srv:
        yield srv


def png_bytes(size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def fetch(url: str, expected: type[VisionInputError], match: str, budget: float) -> VisionInputError:
    """Run process_vision_info on one image URL (second item of a user message) and
    check error type, message and elapsed time."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image", "image": url}]}]
    start = time.monotonic()
    with pytest.raises(expected, match=match) as info:
        vlutils.process_vision_info(messages)
    elapsed = time.monotonic() - start
    text = str(info.value)
    assert text.startswith("message 0, item 1: ") and describe_source(url) in text, text
    assert elapsed < budget, f"{elapsed:.2f}s > {budget:.2f}s for {url}: {text}"
    return info.value


def test_settings_come_from_env():
    s = FetchSettings.from_env()
    assert (s.read_timeout, s.total_timeout, s.retries, s.max_bytes) == (READ_TIMEOUT, TOTAL_TIMEOUT, RETRIES, MAX_BYTES)


def test_ok_baseline(server):
    url = server.route("/ok.png", answer(body=png_bytes(), content_type="image/png"))
    images, _ = vlutils.process_vision_info([{"role": "user", "content": [{"image": url}]}])
    height, width = qwen_smart_resize(24, 32, factor=28)  # the reference's arithmetic
    assert images[0].size == (width, height)
    assert server.requests["/ok.png"] == 1


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_4xx_is_not_retried(server, status):
    url = server.route(f"/e{status}", answer(status, b"nope", "text/plain"))
    fetch(url, FetchError, f"HTTP {status}", budget=SLACK)
    assert server.requests[f"/e{status}"] == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried_a_bounded_number_of_times(server, status):
    url = server.route(f"/e{status}", answer(status, b"down", "text/plain"))
    backoff = FetchSettings().backoff * (2**RETRIES - 1)
    fetch(url, FetchError, f"HTTP {status}", budget=backoff + SLACK)
    assert server.requests[f"/e{status}"] == RETRIES + 1


def test_transient_503_then_success(server):
    calls = []

    def flaky(h):
        calls.append(1)
        (answer(503, b"busy") if len(calls) == 1 else answer(body=png_bytes(), content_type="image/png"))(h)

    url = server.route("/flaky.png", flaky)
    images, _ = vlutils.process_vision_info([{"role": "user", "content": [{"image": url}]}])
    assert len(images) == 1 and server.requests["/flaky.png"] == 2


def test_connection_refused_is_retried_and_bounded():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.png"
    backoff = FetchSettings().backoff * (2**RETRIES - 1)
    fetch(url, FetchError, "connection failed", budget=backoff + SLACK)


def test_server_that_never_answers(server):
    url = server.route("/silent", never_answer(server, 20))
    fetch(url, FetchTimeoutError, "within", budget=READ_TIMEOUT * (RETRIES + 1) + SLACK)
    assert server.requests["/silent"] >= 1


def test_listener_that_never_reads():
    listener = SilentListener()
    try:
        fetch(listener.url, FetchTimeoutError, "within", budget=READ_TIMEOUT * (RETRIES + 1) + SLACK)
    finally:
        listener.close()


def test_headers_then_stall(server):
    url = server.route("/stall", headers_then_stall(server, 20, declared=10_000, first=png_bytes()[:20]))
    fetch(url, FetchTimeoutError, "stalled", budget=READ_TIMEOUT + SLACK)
    assert server.requests["/stall"] == 1


def test_slow_drip_hits_the_total_deadline(server):
    """One byte every 0.2 s never trips the 0.5 s read timeout; the 2 s total deadline
    must still end the download (a trickling server must not hold a worker for hours)."""

    def drip(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(30):  # at most 6 s, then the connection closes
            if server.stop.is_set():
                return
            h.wfile.write(b"\0")
            h.wfile.flush()
            server.stall(0.2)

    url = server.route("/drip", drip)
    fetch(url, FetchTimeoutError, "longer than", budget=TOTAL_TIMEOUT + READ_TIMEOUT + SLACK)


def test_body_over_cap_with_content_length(server):
    url = server.route("/big", answer(body=b"\0" * (MAX_BYTES + 1), content_type="image/png"))
    fetch(url, SizeLimitError, f"Content-Length {MAX_BYTES + 1} exceeds", budget=SLACK)
    assert server.requests["/big"] == 1


def test_body_over_cap_without_content_length(server):
    url = server.route("/endless", endless_body(server))
    fetch(url, SizeLimitError, f"exceeds the {MAX_BYTES}-byte limit", budget=SLACK)
    assert server.requests["/endless"] == 1


def test_lying_small_content_length_cannot_bypass_cap(server):
    url = server.route("/liar", answer(body=b"\0" * (4 * MAX_BYTES), content_type="image/png", content_length=False,
                                        headers={"X-Note": "no length"}))
    fetch(url, SizeLimitError, "byte limit", budget=SLACK)


def test_gzip_bomb_is_capped_after_decompression(server):
    bomb = gzip.compress(b"\0" * (16 * MAX_BYTES), compresslevel=9)
    assert len(bomb) < MAX_BYTES // 8
    url = server.route("/bomb", answer(body=bomb, content_type="image/png", headers={"Content-Encoding": "gzip"}))
    fetch(url, SizeLimitError, "byte limit", budget=SLACK)


def test_gzip_body_larger_than_the_image_is_not_truncation(server):
    """Content-Length counts the encoded bytes: a gzip body slightly larger than the image it
    holds (stored, or an incompressible JPEG) is complete, not truncated."""
    png = png_bytes((300, 200))
    body = gzip.compress(png, compresslevel=0)
    assert len(body) > len(png)
    url = server.route("/stored-gzip", answer(body=body, content_type="image/png", headers={"Content-Encoding": "gzip"}))
    images, _ = vlutils.process_vision_info([{"role": "user", "content": [{"image": url}]}])
    assert images[0].size == vlutils.fetch_image({"image": png}).size


def test_truncated_gzip_body(server):
    body = gzip.compress(png_bytes((300, 200)), compresslevel=0)
    url = server.route("/trunc-gzip", answer(body=body[: len(body) // 2], content_type="image/png",
                                            content_length=len(body), headers={"Content-Encoding": "gzip"}))
    fetch(url, FetchError, "truncated", budget=SLACK)


def test_truncated_body(server):
    png = png_bytes((300, 200))
    url = server.route("/trunc", answer(body=png[: len(png) // 2], content_type="image/png", content_length=len(png)))
    fetch(url, FetchError, "truncated", budget=SLACK)


def test_redirect_loop(server):
    url = server.route("/loop", redirect("/loop"))
    fetch(url, FetchError, "redirects", budget=SLACK)
    assert server.requests["/loop"] == FetchSettings().max_redirects + 1


def test_redirect_ping_pong(server):
    server.route("/ping", redirect("/pong", 301))
    url = server.url("/ping")
    server.route("/pong", redirect("/ping", 307))
    fetch(url, FetchError, "redirects", budget=SLACK)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1:70/_x",
                                    "data:image/png;base64,AAAA"])
def test_redirect_to_non_http_scheme(server, target):
    path = f"/to-{target.split(':')[0]}"
    url = server.route(path, redirect(target))
    fetch(url, FetchError, "unsupported scheme", budget=SLACK)
    assert server.requests[path] == 1


def test_redirect_without_location(server):
    """requests does not treat a 3xx without Location as a redirect: its empty body is
    then refused as an empty image, which is clear enough."""
    url = server.route("/noloc", answer(302, b"", "text/plain"))
    fetch(url, VisionInputError, "empty|redirect|302", budget=SLACK)


def test_html_instead_of_image(server):
    html = b"<!doctype html><html><head><title>Login</title></head><body>Please sign in</body></html>"
    url = server.route("/page.png", answer(body=html, content_type="text/html"))
    fetch(url, DecodeError, "not a recognised image format", budget=SLACK)


def test_empty_200_body(server):
    url = server.route("/empty.png", answer(body=b"", content_type="image/png"))
    fetch(url, DecodeError, "empty", budget=SLACK)


def test_one_bad_url_among_good_ones_names_its_position(server):
    good = server.route("/g.png", answer(body=png_bytes(), content_type="image/png"))
    bad = server.route("/b404", answer(404, b"", "text/plain"))
    messages = [
        {"role": "user", "content": [{"image": good}, {"image": good}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "and"}, {"image": good}, {"image": bad}]},
    ]
    with pytest.raises(FetchError, match=r"^message 2, item 2: .*/b404: HTTP 404"):
        vlutils.process_vision_info(messages)


def _have_video() -> bool:
    try:
        from vlutils.video import fetch_video  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_video(), reason="vlutils.video not available yet")
@pytest.mark.parametrize("fault", ["stall", "silent", "404", "truncated", "over_cap"])
def test_video_url_faults_clean_up(server, fault, tmp_path, monkeypatch):
    """Videos are streamed to a temporary file: each fault is a typed error within the
    limits and the file is gone afterwards."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    clip = (Path(__file__).resolve().parent.parent / "fixtures" / "bad" / "ok_video.mp4").read_bytes()
    routes = {
        "stall": (headers_then_stall(server, 20, declared=len(clip), first=clip[:1000]), FetchTimeoutError),
        "silent": (never_answer(server, 20), FetchTimeoutError),
        "404": (answer(404, b"", "text/plain"), FetchError),
        "truncated": (answer(body=clip[: len(clip) // 3], content_type="video/mp4", content_length=len(clip)),
                      FetchError),
        "over_cap": (endless_body(server), SizeLimitError),
    }
    route, error = routes[fault]
    url = server.route(f"/v-{fault}.mp4", route)
    messages = [{"role": "user", "content": [{"type": "video", "video": url}]}]
    start = time.monotonic()
    with pytest.raises(error, match="^message 0, item 0: "):
        vlutils.process_vision_info(messages)
    assert time.monotonic() - start < READ_TIMEOUT * (RETRIES + 1) + TOTAL_TIMEOUT + SLACK
    assert list(folder.iterdir()) == []


# ------------------------------------------------------------- malformed answers and URLs


def raw_reply(data: bytes):
    """Write ``data`` verbatim instead of an HTTP answer (the connection then closes)."""

    def fn(h):
        h.wfile.write(data)
        h.wfile.flush()
        h.close_connection = True

    return fn


MALFORMED = [
    ("bad_chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n", FetchError, False),
    ("ssh_banner", b"SSH-2.0-OpenSSH_9.0\r\n", FetchError, True),
    ("empty_reply", b"", FetchError, True),
    ("http09_body", b"\x89PNG\r\n\x1a\nnot really", FetchError, True),
    ("header_line_too_long", b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 4\r\n\r\nxxxx",
     FetchError, True),
    ("too_many_headers", b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500))
     + b"Content-Length: 4\r\n\r\nxxxx", FetchError, True),
    ("bad_content_length", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nxxxx", DecodeError, False),
    ("bad_gzip", b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnotgzip123", FetchError, False),
    ("redirect_bad_ipv6", b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n", FetchError, False),
]
XFAIL_MALFORMED: dict = {}


@pytest.mark.parametrize("name, data, expected, retried", [
    pytest.param(*row, id=row[0], marks=[XFAIL_MALFORMED[row[0]]] if row[0] in XFAIL_MALFORMED else [])
    for row in MALFORMED
])
def test_malformed_answers(server, name, data, expected, retried):
    url = server.route(f"/{name}", raw_reply(data))
    backoff = FetchSettings().backoff * (2**RETRIES - 1)
    fetch(url, expected, ".", budget=backoff + SLACK)
    assert server.requests[f"/{name}"] == (RETRIES + 1 if retried else 1)




@pytest.mark.parametrize("url", [
    "http://a b.example/x.png",
    "http://:80/x.png",
    "http://127.0.0.1:99999/x.png",
    "http://127.0.0.1:-1/x.png",
    pytest.param("http://[::1"),
    pytest.param("https://[::ffff:999.1.1.1]/x.png"),
    pytest.param("http://" + "a" * 300 + ".example/x.png", id="label-too-long"),  # fails before any DNS query
])
def test_malformed_urls_are_typed(url, connections_forbidden):
    fetch(url, FetchError, ".", budget=SLACK)


@pytest.fixture
def connections_forbidden(monkeypatch):
    """These URLs must fail while parsing: no name may be resolved, no socket connected."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to resolve or connect: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
