"""Bad image inputs raise the specific VisionInputError subclass, name the input (and its
position when called through process_vision_info), and fail within a few seconds.
Also: ``import vlutils`` is quiet and light."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlutils
from vlutils.errors import (
    DecodeError,
    FetchError,
    FetchTimeoutError,
    InvalidMessageError,
    InvalidOptionError,
    SizeLimitError,
    SourceNotFoundError,
    UnsupportedSourceError,
    VisionInputError,
)
from vlutils.sources import FetchSettings, resolve_source

FAST = 5.0  # seconds: every failure must be reported at least this quickly
REPO = Path(__file__).resolve().parents[1]


def png_bytes(width: int = 40, height: int = 30, color=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    files = {
        "good.png": png_bytes(),
        "empty.jpg": b"",
        "truncated.jpg": jpeg_bytes()[:300],
        "text.jpg": b"this is not an image\n" * 10,
        "bomb.png": huge_png_header(100_000, 100_000),
        "bomb_mid.png": huge_png_header(20_000, 10_000),  # 200 Mpx: over the limit, under 2**31
        "ratio.png": png_bytes(201, 1),
        "ratio_tall.png": png_bytes(2, 404),
    }
    paths = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        paths[name] = root / name
    (root / "a_directory.jpg").mkdir()
    paths["dir"] = root / "a_directory.jpg"
    paths["missing"] = root / "no_such_file.jpg"
    return paths


def expect_error(error_type, ele, *, names=None, patch: int = 14):
    """fetch_image(ele) raises exactly-typed ``error_type`` quickly, naming the input."""
    start = time.monotonic()
    with pytest.raises(error_type) as info:
        vlutils.fetch_image(ele, image_patch_size=patch)
    elapsed = time.monotonic() - start
    assert elapsed < FAST, f"took {elapsed:.1f}s"
    exc = info.value
    assert isinstance(exc, VisionInputError) and isinstance(exc, ValueError)
    message = str(exc)
    for name in names or []:
        assert name in message, f"{name!r} not in {message!r}"
    assert len(message) < 600, message
    return exc


@pytest.mark.parametrize(
    "source",
    ["/no/such/dir/x.jpg", "data:image/png;base64,@@@@", "data:image/png;base64," + "A" * 5000 + "!", b"\x00" * 10],
    ids=["path", "data-uri", "long-data-uri", "bytes"],
)
def test_errors_survive_pickle(source):
    """Errors cross DataLoader worker processes unchanged: same type, message and position."""
    with pytest.raises(VisionInputError) as info:
        vlutils.process_vision_info([{"role": "user", "content": [{"image": source}]}])
    exc = info.value
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc)
    assert str(clone) == str(exc)
    assert clone.position == exc.position == "message 0, item 0"


# ----------------------------------------------------------------------------- local files


def test_missing_file(bad_files):
    path = str(bad_files["missing"])
    expect_error(SourceNotFoundError, {"image": path}, names=[path])
    expect_error(SourceNotFoundError, {"image": "file://" + path}, names=[path])
    expect_error(SourceNotFoundError, {"image": "relative/missing.png"}, names=["relative/missing.png"])


def test_directory(bad_files):
    path = str(bad_files["dir"])
    exc = expect_error(SourceNotFoundError, {"image": path}, names=[path])
    assert "directory" in str(exc)


def test_empty_file(bad_files):
    path = str(bad_files["empty.jpg"])
    exc = expect_error(DecodeError, {"image": path}, names=[path])
    assert "empty" in str(exc)


@pytest.mark.parametrize("name", ["truncated.jpg", "text.jpg"])
def test_undecodable_file(bad_files, name):
    path = str(bad_files[name])
    expect_error(DecodeError, {"image": path}, names=[path])
    expect_error(DecodeError, {"image": Path(path).read_bytes()}, names=["bytes"])


def test_local_file_over_byte_cap(bad_files, monkeypatch):
    monkeypatch.setenv("VLUTILS_MAX_BYTES", "100")
    path = str(bad_files["good.png"])
    assert os.path.getsize(path) > 100
    expect_error(SizeLimitError, {"image": path}, names=[path])


# ----------------------------------------------------------------------------- strings and objects


@pytest.mark.parametrize(
    "source",
    [
        "data:image/png;base64,!!!!not*base64!!!!",
        "data:image/png;base64,iVBORw0KGgo=====x",
        "data:image/png;base64,",
    ],
)
def test_invalid_base64_data_uri(source):
    expect_error(UnsupportedSourceError, {"image": source}, names=["data:image/png;base64"])


def test_base64_that_is_not_an_image():
    text = base64.b64encode(b"hello, this decodes but is no image at all" * 3).decode()
    expect_error(DecodeError, {"image": text})
    expect_error(DecodeError, {"image": "data:image/jpeg;base64," + text}, names=["data:image/jpeg;base64"])


def test_long_source_is_shortened_in_message():
    payload = "data:image/png;base64," + "A" * 2_000_000 + "!"
    exc = expect_error(UnsupportedSourceError, {"image": payload})
    assert "data:image/png;base64" in str(exc)


@pytest.mark.parametrize("scheme", ["ftp", "hdfs", "gs", "rtsp"])
def test_unsupported_scheme(scheme):
    url = f"{scheme}://example.com/a.jpg"
    exc = expect_error(UnsupportedSourceError, {"image": url}, names=[url])
    assert scheme in str(exc)


@pytest.mark.parametrize(
    "value,error",
    [
        (None, InvalidMessageError),
        ("", InvalidMessageError),
        (12345, UnsupportedSourceError),
        (3.5, UnsupportedSourceError),
        (["a.jpg"], UnsupportedSourceError),
        (b"", UnsupportedSourceError),
        (np.zeros((10, 10, 3), np.float32), UnsupportedSourceError),
        (np.zeros((10, 10, 2), np.uint8), UnsupportedSourceError),
        (np.zeros((2, 10, 10, 3), np.uint8), UnsupportedSourceError),
        (np.zeros((0, 10, 3), np.uint8), DecodeError),
    ],
    ids=["none", "empty-str", "int", "float", "list", "empty-bytes", "float-array", "2-channels", "4d", "empty-array"],
)
def test_unusable_values(value, error):
    expect_error(error, {"image": value})


def test_item_without_image_field():
    expect_error(InvalidMessageError, {"type": "image"})
    expect_error(InvalidMessageError, {"type": "image_url", "image_url": {"link": "x.png"}})


@pytest.mark.parametrize("item", ["a.jpg", 42, None, ["a.jpg"]])
def test_fetch_image_non_dict(item):
    with pytest.raises(InvalidMessageError):
        vlutils.fetch_image(item)


# ----------------------------------------------------------------------------- limits and options


@pytest.mark.parametrize("name", ["bomb.png", "bomb_mid.png"])
def test_pixel_limit(bad_files, http_server, name):
    path = bad_files[name]
    assert path.stat().st_size < 200  # the header alone claims billions of pixels
    exc = expect_error(SizeLimitError, {"image": str(path)}, names=[str(path)])
    assert "pixel" in str(exc).lower() or "bomb" in str(exc).lower()
    data = path.read_bytes()
    expect_error(SizeLimitError, {"image": data})
    expect_error(SizeLimitError, {"image": "data:image/png;base64," + base64.b64encode(data).decode()})
    url = http_server.route(f"/bomb/{name}", body=data)
    expect_error(SizeLimitError, {"image": url}, names=[url])


@pytest.mark.parametrize("name", ["ratio.png", "ratio_tall.png"])
@pytest.mark.parametrize("patch", [14, 16])
def test_aspect_ratio_over_200(bad_files, name, patch):
    path = str(bad_files[name])
    exc = expect_error(SizeLimitError, {"image": path}, names=[path, "200"], patch=patch)
    assert "ratio" in str(exc)


def test_aspect_ratio_via_resized_options(bad_files):
    path = str(bad_files["good.png"])
    expect_error(SizeLimitError, {"image": path, "resized_height": 1, "resized_width": 250}, names=[path])
    expect_error(SizeLimitError, {"image": path, "resized_height": 5000, "resized_width": 20}, names=[path])


def test_min_pixels_over_max_pixels(bad_files):
    path = str(bad_files["good.png"])
    exc = expect_error(InvalidOptionError, {"image": path, "min_pixels": 200_000, "max_pixels": 100_000}, names=[path])
    assert "min_pixels" in str(exc) and "max_pixels" in str(exc)
    with pytest.raises(InvalidOptionError):
        vlutils.smart_resize(100, 100, 28, min_pixels=5000, max_pixels=4000)


@pytest.mark.parametrize(
    "options",
    [
        {"min_pixels": "1000"},
        {"max_pixels": "big"},
        {"max_pixels": None},
        {"min_pixels": float("nan")},
        {"max_pixels": float("inf")},
        {"min_pixels": True},
        {"min_pixels": -5},
        {"max_pixels": 0},
        {"resized_height": "100", "resized_width": 100},
        {"resized_height": 100, "resized_width": [100]},
        {"resized_height": 0, "resized_width": 100},
        {"resized_height": -28, "resized_width": 100},
    ],
    ids=lambda o: ",".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_wrong_typed_options(bad_files, options):
    path = str(bad_files["good.png"])
    exc = expect_error(InvalidOptionError, {"image": path, **options}, names=[path])
    assert any(key in str(exc) for key in options)


@pytest.mark.parametrize("patch", ["14", 0, -14, 14.5, None, True])
def test_wrong_image_patch_size(bad_files, patch):
    ele = {"image": str(bad_files["good.png"])}
    with pytest.raises(InvalidOptionError, match="image_patch_size"):
        vlutils.fetch_image(ele, image_patch_size=patch)
    messages = [{"role": "user", "content": [ele]}]
    with pytest.raises(InvalidOptionError, match="image_patch_size"):
        vlutils.process_vision_info(messages, image_patch_size=patch)


# ----------------------------------------------------------------------------- HTTP


def test_http_404(http_server):
    url = http_server.route("/missing-404.png", status=404, body=b"not here")
    exc = expect_error(FetchError, {"image": url}, names=[url, "404"])
    assert not isinstance(exc, FetchTimeoutError)
    assert http_server.requests["/missing-404.png"] == 1  # a 4xx is not retried


def test_http_404_from_directory(http_server):
    url = http_server.url("nothing/here.jpg")
    expect_error(FetchError, {"image": url}, names=[url, "404"])


def test_http_500_is_retried_then_reported(http_server, monkeypatch):
    monkeypatch.setenv("VLUTILS_HTTP_RETRIES", "2")
    url = http_server.route("/flaky-500.png", status=500, body=b"oops")
    expect_error(FetchError, {"image": url}, names=[url, "500"])
    assert http_server.requests["/flaky-500.png"] == 3


def test_http_retry_then_success(http_server):
    """A transient 503 followed by the image: the retry gives the right result."""
    body = png_bytes(50, 40, (1, 2, 3))
    calls = []

    def answer(handler):
        calls.append(1)
        status, data = (503, b"busy") if len(calls) == 1 else (200, body)
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    url = http_server.handle("/retry-once.png", answer)
    image = vlutils.fetch_image({"image": url})
    assert len(calls) == 2
    assert image.getpixel((0, 0)) == (1, 2, 3)


def test_http_server_never_answers(silent_server, monkeypatch):
    monkeypatch.setenv("VLUTILS_HTTP_TIMEOUT", "0.5")
    monkeypatch.setenv("VLUTILS_HTTP_CONNECT_TIMEOUT", "0.5")
    url = silent_server.url + "hang.jpg"
    start = time.monotonic()
    expect_error(FetchTimeoutError, {"image": url}, names=[url])
    assert time.monotonic() - start < 8.0  # 3 tries of 0.5 s; a timeout not honoured hangs for good


def test_http_never_answers_with_settings(silent_server):
    settings = FetchSettings(connect_timeout=0.3, read_timeout=0.3, retries=0)
    url = silent_server.url + "settings.jpg"
    start = time.monotonic()
    with pytest.raises(FetchTimeoutError, match="settings.jpg"):
        resolve_source(url, settings)
    assert time.monotonic() - start < 6.0  # 0.3 s limits; a timeout not honoured hangs for good


def test_http_connection_refused(monkeypatch):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("VLUTILS_HTTP_RETRIES", "1")
    url = f"http://127.0.0.1:{port}/x.png"
    exc = expect_error(FetchError, {"image": url}, names=[url])
    assert not isinstance(exc, FetchTimeoutError)


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "streamed"])
def test_http_body_over_size_cap(http_server, monkeypatch, content_length):
    monkeypatch.setenv("VLUTILS_MAX_BYTES", "5000")
    body = png_bytes(40, 30) + b"\0" * 200_000
    url = http_server.route(f"/big-{content_length}.png", body=body, content_length=content_length)
    exc = expect_error(SizeLimitError, {"image": url}, names=[url, "5000"])
    assert "limit" in str(exc)


def test_http_body_not_an_image(http_server):
    url = http_server.route("/page.jpg", body=b"<html>hello</html>", headers={"Content-Type": "text/html"})
    expect_error(DecodeError, {"image": url}, names=[url])


# ----------------------------------------------------------------------------- positions via process_vision_info


def messages_with(bad_item, good_path) -> list[dict]:
    return [
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": good_path},
                {"type": "text", "text": "and"},
                bad_item,
                {"type": "image", "image": good_path},
            ],
        },
    ]


def bad_items(bad_files, http_server, silent_server):
    return [
        (SourceNotFoundError, {"type": "image", "image": str(bad_files["missing"])}, str(bad_files["missing"])),
        (SourceNotFoundError, {"type": "image", "image": str(bad_files["dir"])}, str(bad_files["dir"])),
        (DecodeError, {"type": "image", "image": str(bad_files["empty.jpg"])}, "empty.jpg"),
        (DecodeError, {"type": "image", "image": str(bad_files["truncated.jpg"])}, "truncated.jpg"),
        (DecodeError, {"type": "image", "image": str(bad_files["text.jpg"])}, "text.jpg"),
        (UnsupportedSourceError, {"type": "image", "image": "data:image/png;base64,@@@"}, "data:image/png"),
        (UnsupportedSourceError, {"type": "image", "image": "ftp://h/a.jpg"}, "ftp://h/a.jpg"),
        (FetchError, {"type": "image", "image": http_server.url("absent.png")}, "absent.png"),
        (FetchTimeoutError, {"type": "image", "image": silent_server.url + "p.jpg"}, "p.jpg"),
        (SizeLimitError, {"type": "image", "image": str(bad_files["bomb.png"])}, "bomb.png"),
        (SizeLimitError, {"type": "image", "image": str(bad_files["ratio.png"])}, "ratio.png"),
        (InvalidOptionError, {"type": "image", "image": str(bad_files["good.png"]), "min_pixels": 9e9, "max_pixels": 1}, "good.png"),
        (InvalidOptionError, {"type": "image", "image": str(bad_files["good.png"]), "max_pixels": "x"}, "good.png"),
        (InvalidMessageError, {"type": "image"}, "image"),
        (InvalidMessageError, {"type": "image_url", "image_url": {"href": "a.png"}}, "image_url"),
    ]


def test_errors_name_position_in_message(bad_files, http_server, silent_server, monkeypatch):
    monkeypatch.setenv("VLUTILS_HTTP_TIMEOUT", "0.5")
    good = str(bad_files["good.png"])
    for error, item, name in bad_items(bad_files, http_server, silent_server):
        start = time.monotonic()
        with pytest.raises(error) as info:
            vlutils.process_vision_info(messages_with(item, good))
        assert time.monotonic() - start < FAST, item
        assert type(info.value) is error or (error is FetchError and type(info.value) is FetchError), info.value
        message = str(info.value)
        assert "message 1, item 2" in message, message
        assert "conversation" not in message.split("message 1")[0], message
        assert name in message, message


def test_errors_name_position_in_batch(bad_files):
    good = str(bad_files["good.png"])
    batch = [
        messages_with({"type": "image", "image": good}, good),
        [{"role": "user", "content": [{"type": "text", "text": "x"}, {"image": str(bad_files["missing"])}]}],
    ]
    with pytest.raises(SourceNotFoundError) as info:
        vlutils.process_vision_info(batch)
    assert "conversation 1, message 0, item 1" in str(info.value)
    assert str(bad_files["missing"]) in str(info.value)


def test_first_bad_item_in_order_is_reported(bad_files):
    """With several bad items fetched in parallel, the first one in input order is reported."""
    content = [{"image": str(bad_files["good.png"])} for _ in range(6)]
    content[3] = {"image": str(bad_files["missing"])}
    content[5] = {"image": str(bad_files["text.jpg"])}
    with pytest.raises(SourceNotFoundError, match="message 0, item 3"):
        vlutils.process_vision_info([{"role": "user", "content": content}])


@pytest.mark.parametrize(
    "conversations",
    [
        "hello",
        42,
        [{"role": "user"}],
        [{"role": "user", "content": [42]}],
        [{"role": "user", "content": [{"type": "text", "text": "a"}, None]}],
        [["not a message"]],
    ],
    ids=["str", "int", "no-content", "int-item", "none-item", "batch-of-str"],
)
def test_malformed_conversations(conversations):
    start = time.monotonic()
    with pytest.raises(InvalidMessageError) as info:
        vlutils.process_vision_info(conversations)
    assert time.monotonic() - start < FAST
    if conversations == [{"role": "user", "content": [42]}]:
        assert "message 0, item 0" in str(info.value)
    if conversations == [{"role": "user", "content": [{"type": "text", "text": "a"}, None]}]:
        assert "message 0, item 1" in str(info.value)


# ----------------------------------------------------------------------------- import hygiene


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLUTILS_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )


def test_import_is_quiet_and_light():
    proc = run_python(
        """
        import json, sys
        import vlutils
        heavy = [m for m in ("torchvision", "decord", "torchcodec", "qwen_vl_utils", "transformers") if m in sys.modules]
        sys.stderr.write(json.dumps(heavy))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert json.loads(proc.stderr) == []


def test_works_without_torchvision_decord_torchcodec(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, size=(300, 200, 3), dtype=np.uint8)).save(path)
    proc = run_python(
        f"""
        import sys
        sys.modules["torchvision"] = None
        sys.modules["decord"] = None
        sys.modules["torchcodec"] = None
        from vlutils import process_vision_info
        messages = [{{"role": "user", "content": [{{"type": "image", "image": {str(path)!r}}}, {{"type": "text", "text": "hi"}}]}}]
        images, videos = process_vision_info(messages)
        assert videos is None
        print(images[0].size, images[0].mode)
        """
    )
    assert proc.returncode == 0, proc.stderr
    height, width = round(300 / 28) * 28, round(200 / 28) * 28  # within min/max pixels: plain rounding
    assert proc.stdout.strip() == f"{(width, height)} RGB"
    assert proc.stderr == ""


# ----------------------------------------------------------------------------- resource hygiene


def open_fds_to(path: Path) -> list[str]:
    fd_dir = Path("/proc/self/fd")
    found = []
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == str(path):
                found.append(fd.name)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_no_file_handles_left_open(bad_files, tmp_path):
    """Images are fully loaded and their files closed, also after a decode failure."""
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes())
    images = [vlutils.fetch_image({"image": str(good)}) for _ in range(3)]
    images += vlutils.process_vision_info([{"role": "user", "content": [{"image": "file://" + str(good)}] * 3}])[0]
    assert open_fds_to(good) == []
    assert all(image.size[0] > 0 for image in images)
    for name in ("truncated.jpg", "text.jpg", "empty.jpg"):
        with pytest.raises(DecodeError):
            vlutils.fetch_image({"image": str(bad_files[name])})
        assert open_fds_to(bad_files[name]) == []
    good.unlink()  # loaded images do not depend on the file any more
    assert images[0].tobytes()


def test_credentials_in_urls_are_not_repeated_in_errors(http_server):
    """Error messages end up in logs: a URL's user name and password must not."""
    url = http_server.url("missing-credentials.jpg").replace("http://", "http://bob:s3cret@")
    with pytest.raises(vlutils.errors.FetchError) as info:
        vlutils.process_vision_info([{"role": "user", "content": [{"image": url}]}])
    assert "s3cret" not in str(info.value) and "bob" not in str(info.value)
    assert "***@" in str(info.value)
