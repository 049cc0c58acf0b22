"""Benchmark: a chat server's media load. Each turn of a conversation resends every earlier
image (URLs on a loopback HTTP server that adds latency to every request) plus one new image.

    .venv/bin/python bench/bench_serving.py [--turns 20] [--sessions 1] [--latency 0.05] [--size 1280x960]

Runners, each in its own subprocess (peak RSS is that process's high-water mark, imports
included): qwen-vl-utils 0.0.14 (the reference), vlutils sync and async, each without and
with ``vlutils.MediaCache``. With ``--sessions N`` the async runners serve N conversations
concurrently on one event loop; the sync runners serve them one after another. Every runner's
outputs are hashed and compared with the reference's. Reported per runner: HTTP requests the
server saw, total seconds, peak RSS, and the speed-up over the reference. Generated JPEGs go
to ``bench/media/serving/`` (git-ignored). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEDIA = HERE / "media" / "serving"
RUNNERS = ("qwen-vl-utils", "vlutils sync", "vlutils sync + cache", "vlutils async", "vlutils async + cache")


def make_images(count: int, width: int, height: int) -> list[Path]:
    sys.path.insert(0, str(HERE))
    from bench_images import photo_array  # photo-like JPEGs of realistic size
    from PIL import Image

    MEDIA.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = MEDIA / f"turn{i:02d}_{width}x{height}.jpg"
        if not path.exists():
            Image.fromarray(photo_array(width, height, seed=i)).save(path, quality=90)
        paths.append(path)
    return paths


class Server:
    """Threaded loopback server for MEDIA, sleeping ``latency`` seconds before each answer."""

    def __init__(self, latency: float):
        self.requests = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(MEDIA), **kwargs)

            def do_GET(self):  # noqa: N802
                with lock:
                    outer.requests += 1
                time.sleep(latency)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def conversation(urls: list[str], turn: int) -> list[dict]:
    """The messages of turn ``turn`` (0-based): one user message per image so far."""
    messages = []
    for i in range(turn + 1):
        messages.append({"role": "user", "content": [{"type": "image", "image": urls[i]},
                                                     {"type": "text", "text": f"What is new in picture {i}?"}]})
        if i < turn:
            messages.append({"role": "assistant", "content": f"Picture {i} shows something."})
    return messages


# ------------------------------------------------------------------------ child side


def _digest(images) -> str:
    h = hashlib.sha256()
    for image in images:
        h.update(repr(image.size).encode())
        h.update(image.tobytes())
    return h.hexdigest()


def child(runner: str, urls: list[str], turns: int, sessions: int) -> dict:
    import resource

    digests = []
    if runner == "qwen-vl-utils":
        from qwen_vl_utils import process_vision_info
    else:
        import asyncio

        import vlutils
        import vlutils.aio  # noqa: F401 - imported before the clock starts
    start = time.perf_counter()
    if runner == "qwen-vl-utils":
        for _ in range(sessions):
            for turn in range(turns):
                digests.append(_digest(process_vision_info(conversation(urls, turn))[0]))
    else:
        if runner.endswith("+ cache"):
            vlutils.set_cache(vlutils.MediaCache(max_bytes=1 << 30))
        if "async" in runner:
            async def session():
                out = []
                for turn in range(turns):
                    out.append(_digest((await vlutils.aprocess_vision_info(conversation(urls, turn)))[0]))
                return out

            async def main():
                return await asyncio.gather(*(session() for _ in range(sessions)))

            for result in asyncio.run(main()):
                digests += result
        else:
            for _ in range(sessions):
                for turn in range(turns):
                    digests.append(_digest(vlutils.process_vision_info(conversation(urls, turn))[0]))
        if runner.endswith("+ cache"):
            stats = vlutils.cache.current().stats()
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "digest": hashlib.sha256("".join(digests).encode()).hexdigest()}
    if runner.endswith("+ cache"):
        result["cache"] = stats
    return result


# ----------------------------------------------------------------------- parent side


def run_child(runner: str, urls: list[str], args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", runner, "--turns", str(args.turns), "--sessions", str(args.sessions),
         "--urls", json.dumps(urls)],
        env=env, capture_output=True, text=True, timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{runner} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits per request")
    parser.add_argument("--size", default="1280x960", help="WxH of the JPEGs")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.urls), args.turns, args.sessions)))
        return 0

    width, height = map(int, args.size.split("x"))
    paths = make_images(args.turns, width, height)
    server = Server(args.latency)
    urls = [f"{server.base}/{p.name}" for p in paths]
    print(f"# {args.turns} turns x {args.sessions} session(s), {args.size} JPEGs, {args.latency * 1000:.0f} ms "
          f"latency per request; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}\n")
    rows, reference = [], None
    for runner in args.runners.split(","):
        before = server.requests
        result = run_child(runner, urls, args)
        result["requests"] = server.requests - before
        if runner == "qwen-vl-utils":
            reference = result
        rows.append((runner, result))
    print("| runner | HTTP requests | total s | speed-up | peak RSS MiB | identical | cache hits / misses |")
    print("|---|---:|---:|---:|---:|---|---|")
    for runner, r in rows:
        speed = f"{reference['seconds'] / r['seconds']:.2f}x" if reference else ""
        same = "" if reference is None or runner == "qwen-vl-utils" else ("yes" if r["digest"] == reference["digest"]
                                                                            else "NO")
        cache = f"{r['cache']['hits']} / {r['cache']['misses']}" if "cache" in r else ""
        print(f"| {runner} | {r['requests']} | {r['seconds']:.2f} | {speed} | {r['peak_rss_mb']:.0f} | {same} | {cache} |")
    print(f"\nload after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
