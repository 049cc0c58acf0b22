"""vlmodel vs transformers on the same random checkpoint: forward latency and greedy tokens/s.

    .venv/bin/python bench/bench_model.py                  # CPU float32, tiny + ~100M, Qwen2-VL/2.5-VL
    .venv/bin/python bench/bench_model.py --families qwen3_vl,qwen3_vl_moe
    .venv/bin/python bench/bench_model.py --families qwen3_5,qwen3_5_moe --threads 1 --clock cpu
    .venv/bin/python bench/bench_model.py --sizes base --families qwen2_vl --device cuda --dtype bfloat16

For each (family, size) a checkpoint with random weights is written with transformers'
``save_pretrained`` and loaded by both libraries.  Qwen2-VL / Qwen2.5-VL run against the
venv's transformers 4.57.6 in this process; the Qwen3-VL and Qwen3.5 families against
transformers 5.23 in a worker process (``bench/ref5_worker.py``, PYTHONPATH=.refs/tf523) that
times itself.  On the CPU (no flash-linear-attention / causal-conv1d) 5.23 runs Qwen3.5's gated
delta rule with its own PyTorch fallback (chunked for the prompt, recurrent per decoded token).
Timings alternate between the two models run after run (so background load hits both
alike); the table reports the best run of each (the least disturbed by other processes),
the JSON rows also the median.
Memory comes from a child process per library that loads the model and runs one
forward and one generation: peak RSS, and the peak minus the RSS right after importing
the library (CPU); the peak CUDA allocation (GPU).
Needs transformers (a test dependency); vlmodel itself never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from _tiny_checkpoints import hf_model, images, prompt  # noqa: E402

import vlmodel  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Wall-clock by default.  ``--clock cpu`` (with ``--threads 1``) times the process's CPU
# seconds instead: on a machine shared with other jobs that is far less noisy, because
# time spent descheduled is not counted.
CLOCK = time.perf_counter


REF5 = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")  # benchmarked against transformers 5.23
WORKER = os.path.join(ROOT, "bench", "ref5_worker.py")


def ref5_env() -> dict:
    """The environment of a ref5_worker process: transformers 5.23 from .refs/tf523."""
    return dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".refs", "tf523"), TRANSFORMERS_VERBOSITY="error")


def inputs(family: str, image_hw: int, device: str) -> dict:
    """One square image between 12 and 20 text tokens (patch 14 for Qwen2, 16 for Qwen3)."""
    if family in REF5:
        from ref5_worker import IDS

        side = image_hw // 16
        grid = torch.tensor([[1, side, side]])
        pv = torch.randn(side * side, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(1)
        ids = torch.cat([torch.randint(10, 390, (12,), generator=g), torch.tensor([IDS["vision_start_token_id"]]),
                         torch.full((side * side // 4,), IDS["image_token_id"]), torch.tensor([IDS["vision_end_token_id"]]),
                         torch.randint(10, 390, (20,), generator=g)])[None]
        mm = (ids == IDS["image_token_id"]).long()
        return {"input_ids": ids.to(device), "pixel_values": pv.to(device), "image_grid_thw": grid.to(device),
                "mm_token_type_ids": mm.to(device)}
    pv, grid = images([(image_hw, image_hw)], seed=0)
    ids = prompt([12, ("image", tuple(int(x) for x in grid[0])), 20], seed=0)
    return {"input_ids": ids.to(device), "pixel_values": pv.to(device), "image_grid_thw": grid.to(device)}


class Ref5:
    """transformers 5.23 in a worker process, driven one command at a time."""

    def __init__(self, path: str, args):
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, "serve", path, os.path.join(path, "inputs.pt"), str(args.threads or 0), args.clock],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ref5_env())

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("transformers 5.23 worker died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def load(engine: str, path: str, dtype: torch.dtype, device: str):
    if engine == "vlmodel":
        return vlmodel.from_pretrained(path, dtype=dtype, device=device)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_once(engine, model, inp, device) -> float:
    if isinstance(model, Ref5):
        return model.ask(cmd="forward")["seconds"]
    sync(device)
    t0 = CLOCK()
    with torch.inference_mode():
        if engine == "vlmodel":
            model(inp["input_ids"], pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"])
        else:
            model(**inp)
    sync(device)
    return CLOCK() - t0


def generate_once(engine, model, inp, new_tokens, device) -> tuple[float, list[int]]:
    if isinstance(model, Ref5):
        out = model.ask(cmd="generate", n=new_tokens)
        return out["seconds"], out["tokens"]
    ids = inp["input_ids"]
    sync(device)
    t0 = CLOCK()
    with torch.inference_mode():
        if engine == "vlmodel":
            out = model.generate(ids, pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"],
                                 max_new_tokens=new_tokens, stop_token_ids=[])
        else:
            out = model.generate(**inp, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=0)
            out = out[:, ids.shape[1]:]
    sync(device)
    return CLOCK() - t0, out[0].tolist()


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024


def child(args) -> None:
    """One engine in a fresh process: load, one forward, one generation; print memory (MiB).

    ``rss_mib``: peak resident memory of the process; ``added_mib``: that peak minus the
    RSS after importing the engine (the model, activations and caches)."""
    dtype, device = DTYPES[args.dtype], args.device
    inp = {k: v.to(device) for k, v in torch.load(args.inputs).items()}
    if args.child == "transformers":
        import transformers  # noqa: F401  (imports count in the baseline, for both libraries)
    else:
        import vlutils.rope  # noqa: F401  (vlmodel's position ids come from here)
    base = _status_mib("VmRSS")
    model = load(args.child, args.path, dtype, device)
    forward_once(args.child, model, inp, device)
    generate_once(args.child, model, inp, args.new_tokens, device)
    if device.startswith("cuda"):
        out = {"added_mib": torch.cuda.max_memory_allocated() / 2**20}
    else:
        peak = _status_mib("VmHWM")  # this process's own high-water mark (ru_maxrss survives fork+exec)
        out = {"rss_mib": peak, "added_mib": peak - base}
    print(json.dumps(out))


def peak_memory(engine: str, path: str, args) -> dict:
    if engine == "transformers" and os.path.exists(os.path.join(path, "ref5")):
        worker = Ref5(path, args)  # a fresh worker: load, one forward, one generation, then its peak
        forward_once(engine, worker, None, args.device)
        generate_once(engine, worker, None, args.new_tokens, args.device)
        out = worker.ask(cmd="memory")
        worker.close()
        return out
    threads = ["--threads", str(args.threads)] if args.threads else []
    cmd = [sys.executable, __file__, *threads, "--child", engine, "--path", path, "--inputs", os.path.join(path, "inputs.pt"),
           "--dtype", args.dtype, "--device", args.device, "--new-tokens", str(args.new_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"memory child for {engine} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_one(family: str, size: str, args) -> dict:
    dtype, device = DTYPES[args.dtype], args.device
    with tempfile.TemporaryDirectory() as path:
        inp = inputs(family, args.image, device)
        torch.save({k: v.cpu() for k, v in inp.items()}, os.path.join(path, "inputs.pt"))
        if family in REF5:
            made = subprocess.run([sys.executable, WORKER, "create", family, size, path], env=ref5_env(),
                                  capture_output=True, text=True, check=True)
            n_params = json.loads(made.stdout.strip().splitlines()[-1])["params"]
            open(os.path.join(path, "ref5"), "w").close()
            models = {"transformers": Ref5(path, args), "vlmodel": load("vlmodel", path, dtype, device)}
        else:
            hf = hf_model(family, seed=0, size=size, init=0.02)
            n_params = sum(p.numel() for p in hf.parameters())
            hf.save_pretrained(path)
            del hf
            models = {e: load(e, path, dtype, device) for e in ("transformers", "vlmodel")}
        fwd = {e: [] for e in models}
        gen = {e: [] for e in models}
        tokens = {}
        for e, m in models.items():  # warm-up
            forward_once(e, m, inp, device)
            generate_once(e, m, inp, 4, device)
        for _ in range(args.repeats):
            for e, m in models.items():
                fwd[e].append(forward_once(e, m, inp, device))
        for _ in range(args.gen_repeats):
            for e, m in models.items():
                seconds, tokens[e] = generate_once(e, m, inp, args.new_tokens, device)
                gen[e].append(seconds)
        if isinstance(models["transformers"], Ref5):
            models["transformers"].close()
        del models
        peaks = {e: peak_memory(e, path, args) for e in ("transformers", "vlmodel")} if not args.no_memory else {}
    ids, grid = inp["input_ids"], inp["image_grid_thw"]
    row = {
        "family": family, "size": size, "params_m": round(n_params / 1e6, 1),
        "reference": "transformers 5.23" if family in REF5 else "transformers 4.57.6",
        "prompt_tokens": ids.shape[1], "visual_tokens": int(grid.prod(-1).sum()) // 4,
        "same_greedy_tokens": tokens["vlmodel"] == tokens["transformers"],
    }
    for e in ("transformers", "vlmodel"):
        row[f"{e}_forward_ms"] = round(1000 * min(fwd[e]), 2)
        row[f"{e}_forward_ms_median"] = round(1000 * statistics.median(fwd[e]), 2)
        row[f"{e}_tokens_per_s"] = round(args.new_tokens / min(gen[e]), 1)
        row[f"{e}_tokens_per_s_median"] = round(args.new_tokens / statistics.median(gen[e]), 1)
        if peaks:
            row[f"{e}_added_mib"] = round(peaks[e]["added_mib"])
            if "rss_mib" in peaks[e]:
                row[f"{e}_peak_rss_mib"] = round(peaks[e]["rss_mib"])
    row["forward_speedup"] = round(row["transformers_forward_ms"] / row["vlmodel_forward_ms"], 2)
    row["tokens_per_s_ratio"] = round(row["vlmodel_tokens_per_s"] / row["transformers_tokens_per_s"], 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,base", help="tiny (~1M) and/or base (~100M parameters)")
    p.add_argument("--families", default="qwen2_vl,qwen2_5_vl")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--image", type=int, default=448, help="square image side in pixels")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time, needs --threads 1 (robust on a busy machine)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1 or args.device != "cpu":
            p.error("--clock cpu needs --threads 1 on the CPU")
        global CLOCK
        CLOCK = time.process_time
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}, "
          f"{args.clock} clock, image {args.image}x{args.image}, {args.new_tokens} new tokens, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows = []
    for size in args.sizes.split(","):
        for family in args.families.split(","):
            row = bench_one(family, size, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = ["family", "size", "params_m", "transformers_forward_ms", "vlmodel_forward_ms", "forward_speedup",
            "transformers_tokens_per_s", "vlmodel_tokens_per_s", "tokens_per_s_ratio"]
    mem = ("transformers_added_mib", "vlmodel_added_mib", "transformers_peak_rss_mib", "vlmodel_peak_rss_mib")
    cols += [c for c in mem if c in rows[0]] + ["same_greedy_tokens"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"# load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
