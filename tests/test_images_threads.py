"""process_vision_info's thread pool: input order, real parallelism for slow sources,
thread-safe use from several caller threads, and no process-wide side effects."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import vlutils
from vlutils.errors import VisionInputError


def png(seed: int, width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_slow_urls_are_fetched_in_parallel_and_kept_in_order(http_server):
    """Four URLs that each take 1.5 s to answer, plus local items: the call takes about one
    delay, not four, and the images come back in input order. (The bound, three delays,
    leaves a loaded machine 3 s for the rest and still fails a serial fetch, >= 6 s.)"""
    delay, count = 1.5, 4
    bodies = [png(i) for i in range(count + 2)]
    content = []
    for i in range(count):
        url = http_server.route(f"/threads/slow-{i}.png", body=bodies[i], delay=delay)
        content.append({"type": "image", "image": url, "min_pixels": 1})
        if i == 1:
            content.append({"type": "image", "image": bodies[count], "min_pixels": 1})
    content.append({"type": "image", "image": bodies[count + 1], "min_pixels": 1})
    order = [0, 1, count, 2, 3, count + 1]
    start = time.monotonic()
    images, videos = vlutils.process_vision_info([{"role": "user", "content": content}])
    elapsed = time.monotonic() - start
    assert videos is None
    assert elapsed < delay * count * 0.75, f"{elapsed:.2f}s: not parallel"
    for image, index in zip(images, order, strict=True):
        expected = vlutils.fetch_image({"image": bodies[index], "min_pixels": 1})
        assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_concurrent_callers_get_their_own_results():
    """Several caller threads (e.g. a threaded data loader) share the library safely."""
    datas = [png(100 + i, 40 + 8 * i, 30 + 4 * i) for i in range(6)]
    expected = [np.asarray(vlutils.fetch_image({"image": d})) for d in datas]

    def call(k: int):
        content = [{"image": datas[(k + j) % len(datas)]} for j in range(4)]
        images, _ = vlutils.process_vision_info([{"role": "user", "content": content}])
        return k, [np.asarray(im) for im in images]

    with ThreadPoolExecutor(4) as pool:
        for k, arrays in pool.map(call, range(24)):
            for j, array in enumerate(arrays):
                assert np.array_equal(array, expected[(k + j) % len(datas)])


def test_parallel_fetch_leaves_global_warning_state_alone():
    """Decoding in worker threads must not change the process-wide ``warnings`` filters or
    ``warnings.showwarning`` (``warnings.catch_warnings`` is not thread-safe before Python
    3.14: overlapping uses in threads restore each other's state and can leave a global
    "always" filter, or a dead recorder, installed)."""
    datas = [png(200 + i) for i in range(8)]
    messages = [{"role": "user", "content": [{"image": d} for d in datas]}]
    filters_before = list(warnings.filters)
    show_before = warnings.showwarning
    for _ in range(30):
        vlutils.process_vision_info(messages)
        assert warnings.filters == filters_before
        assert warnings.showwarning is show_before


def test_warnings_as_errors_still_give_typed_errors(tmp_path):
    """Under ``-W error`` a Pillow warning during decode (here DecompressionBombWarning from
    a header claiming just over Pillow's warning threshold) surfaces as a VisionInputError,
    never as a bare Warning."""
    width = 10_000
    height = Image.MAX_IMAGE_PIXELS // width + 1
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            vlutils.fetch_image({"image": str(path)})
        except VisionInputError:
            pass
        except Warning as exc:  # pragma: no cover - the failure this test guards against
            pytest.fail(f"bare warning escaped: {exc!r}")


def test_error_is_not_held_back_by_a_slow_sibling(http_server, silent_server, monkeypatch):
    """Item 0 fails after 0.3 s (HTTP 404); item 1, already running by then, hangs on a server
    that never answers. The error is raised promptly, not after the sibling's read timeout."""
    monkeypatch.setenv("VLUTILS_HTTP_TIMEOUT", "4")
    monkeypatch.setenv("VLUTILS_HTTP_RETRIES", "0")
    content = [
        {"type": "image", "image": http_server.route("/threads/late-404.png", status=404, delay=0.3)},
        {"type": "image", "image": silent_server.url + "sibling.png"},
    ]
    start = time.monotonic()
    with pytest.raises(VisionInputError, match="message 0, item 0"):
        vlutils.process_vision_info([{"role": "user", "content": content}])
    elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"error held back {elapsed:.1f}s by the hanging sibling"  # held back: >= 4 s
