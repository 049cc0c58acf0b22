"""Benchmark: vlutils' Qwen-VL inputs vs the original remote code, same machine, same run.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_qwen_vl_inputs.py --reference DIR \\
        [--vocab qwen.tiktoken] [--reps 5]

``DIR`` holds the original ``tokenization_qwen.py``, ``qwen_generation_utils.py`` and
``visual.py`` (see scripts/make_qwen_vl_input_fixtures.py; it needs the transformers 4.32.0
folder ``.refs/qwenvl_inputs_ref``). ``--vocab``: a ``qwen.tiktoken`` (default: the tiny test
vocabulary; the real one gives realistic BPE costs).

Workloads, on the stored fixture cases: ``encode`` (362 strings, ``tokenizer.encode``),
``prompt`` (90 ``make_context`` calls with history), ``transform`` (20 image files opened and
transformed to 448x448 tensors). Each side runs in its own subprocess (the original needs its
old transformers): median wall time per workload over ``--reps`` after a warm-up, and the
process's peak RSS (VmHWM, imports included) and the peak growth during the workloads. Outputs
are hashed: the table says whether both sides produced the same ids and tensors.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "qwen_vl_inputs"
REF_ENV = ROOT / ".refs" / "qwenvl_inputs_ref"
WORKLOADS = ("encode", "prompt", "transform")


def status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(side: str, vocab: str, reps: int) -> dict:
    """Runs in a subprocess: time every workload on one side, return times, memory and digests."""
    cases = json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))
    with gzip.open(FIXTURES / "reference.json.gz", "rt", encoding="utf-8") as handle:
        contexts = json.load(handle)["contexts"]
    from PIL import Image

    if side == "vlutils":
        import vlutils
        from vlutils.chat_qwen_vl import make_context
        from vlutils.image_qwen_vl import qwen_vl_transform
        from vlutils.tiktoken_qwen import VL_TAGS

        tokenizer = vlutils.load_tokenizer(vocab)
        image_st = VL_TAGS

        def prompt(case):
            return make_context(tokenizer, case["query"], [tuple(h) for h in case["history"]],
                                "You are a helpful assistant.")[1]

        def transform(path):
            with Image.open(path) as image:
                return qwen_vl_transform(image, 448)
    else:
        import qwen_generation_utils
        import tokenization_qwen
        import visual

        tokenizer = tokenization_qwen.QWenTokenizer(vocab)
        image_st = set(tokenizer.IMAGE_ST)
        vit = visual.VisionTransformer(image_size=448, patch_size=14, width=32, layers=1, heads=2, mlp_ratio=2.0,
                                       n_queries=256, output_dim=128)

        def prompt(case):
            return qwen_generation_utils.make_context(tokenizer, case["query"], [tuple(h) for h in case["history"]],
                                                      system="You are a helpful assistant.")[1]

        def transform(path):  # VisionTransformer.encode's loading and transform
            return vit.image_transform(Image.open(path).convert("RGB"))

    texts = [(c["text"], "all" if c["allowed"] == "all" else image_st) for c in cases["encode"]]
    paths = [FIXTURES / "images" / f["file"] for f in cases["images"][:20]]
    jobs = {
        "encode": lambda: [tokenizer.encode(t, allowed_special=a) for t, a in texts],
        "prompt": lambda: [prompt(c) for c in contexts],
        "transform": lambda: [transform(p) for p in paths],
    }
    before = status_kib("VmRSS")
    out = {"times": {}, "digests": {}}
    for name, job in jobs.items():
        result = job()  # warm-up
        digest = hashlib.sha256()
        for item in result:
            digest.update(item.numpy().tobytes() if hasattr(item, "numpy") else json.dumps(item).encode())
        out["digests"][name] = digest.hexdigest()[:16]
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            job()
            times.append(time.perf_counter() - start)
        out["times"][name] = statistics.median(times)
    out["peak_kib"] = status_kib("VmHWM")
    out["work_kib"] = out["peak_kib"] - before
    return out


def run_side(side: str, args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if side == "original":
        env["PYTHONPATH"] = os.pathsep.join([str(args.ref_env), str(Path(args.reference).resolve())])
    else:
        env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, __file__, "--worker", side, "--vocab", args.vocab, "--reps", str(args.reps)],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="folder with the original remote code")
    parser.add_argument("--ref-env", default=str(REF_ENV))
    parser.add_argument("--vocab", default=str(FIXTURES / "tiny.tiktoken"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--worker", choices=("vlutils", "original"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.vocab, args.reps)))
        return
    if not args.reference:
        parser.error("--reference is required")
    results = {side: run_side(side, args) for side in ("original", "vlutils")}
    ours, ref = results["vlutils"], results["original"]
    print(f"Qwen-VL inputs, vocabulary {Path(args.vocab).name}, median of {args.reps}; "
          f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}\n")
    print("| workload | original (s) | vlutils (s) | speed-up | same output |")
    print("|---|---:|---:|---:|:---:|")
    for name in WORKLOADS:
        same = "yes" if ours["digests"][name] == ref["digests"][name] else "NO"
        print(f"| {name} | {ref['times'][name]:.4f} | {ours['times'][name]:.4f} | "
              f"{ref['times'][name] / ours['times'][name]:.2f}x | {same} |")
    print(f"| peak RSS (MiB, imports included) | {ref['peak_kib'] / 1024:.0f} | {ours['peak_kib'] / 1024:.0f} | "
          f"{ref['peak_kib'] / ours['peak_kib']:.2f}x less | |")
    print(f"| peak growth during the workloads (MiB) | {ref['work_kib'] / 1024:.0f} | {ours['work_kib'] / 1024:.0f} | | |")


if __name__ == "__main__":
    main()
