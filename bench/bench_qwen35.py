"""Qwen3.5 / Qwen3.5-MoE: vlmodel vs transformers 5.23 (its PyTorch fallback of the gated delta rule).

    .venv/bin/python bench/bench_qwen35.py                      # CPU float32, tiny + ~100M, both families
    .venv/bin/python bench/bench_qwen35.py --sizes base --families qwen3_5 --threads 1 --clock cpu

transformers 5.23 lives in ``.refs/tf523`` (``scripts/install_refs.sh``); the script re-runs
itself with it on ``PYTHONPATH``.  Without ``flash-linear-attention`` / ``causal-conv1d``
(CPU), transformers uses its own PyTorch chunked delta rule for the prompt and the
recurrent one per decoded token: the comparison the issue asks for.

Per (family, size): transformers builds a random model (std 0.02), ``save_pretrained``s it,
vlmodel loads the files; one 448x448 image (patch 16: 196 visual tokens) + 32 text tokens.
Forward latency alternates between the two models (best and median reported), greedy
generation of 32 tokens likewise (tokens must be identical), and each library's peak RSS
comes from a child process that loads, runs one forward and one generation.
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
REF = os.path.join(ROOT, ".refs", "tf523")
IDS = dict(image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503)
CLOCK = time.perf_counter


def configs(family: str, size: str) -> tuple[dict, dict]:
    """(text, vision) kwargs of a random model: tiny (~1M) or base (~100M parameters)."""
    if size == "tiny":
        text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                    linear_key_head_dim=16, linear_value_head_dim=16)
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
        moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64)
    else:
        text = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=64, linear_num_key_heads=4,
                    linear_num_value_heads=8, linear_key_head_dim=64, linear_value_head_dim=64)
        vision = dict(depth=12, hidden_size=384, intermediate_size=1024, num_heads=6, out_hidden_size=512)
        moe = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=384, shared_expert_intermediate_size=512)
    rotary_half = int(text["head_dim"] * 0.25) // 2
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.25,
                                 "mrope_section": [rotary_half - 2 * (rotary_half // 3), rotary_half // 3,
                                                   rotary_half // 3], "mrope_interleaved": True},
                initializer_range=0.02, full_attention_interval=4)
    if family == "qwen3_5_moe":
        text.pop("intermediate_size")
        text.update(moe)
    vision.update(patch_size=16, num_position_embeddings=2304, initializer_range=0.02)
    return text, vision


def build_reference(family: str, size: str, path: str) -> int:
    import transformers

    names = {"qwen3_5": "Qwen3_5", "qwen3_5_moe": "Qwen3_5Moe"}[family]
    text, vision = configs(family, size)
    config = getattr(transformers, names + "Config")(text_config=text, vision_config=vision, **IDS)
    torch.manual_seed(0)
    model = getattr(transformers, names + "ForConditionalGeneration")._from_config(config, attn_implementation="sdpa")
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def load(engine: str, path: str):
    if engine == "vlmodel":
        import vlmodel

        return vlmodel.from_pretrained(path, dtype=torch.float32)
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()


def inputs(image: int) -> dict:
    side = image // 16
    g = torch.Generator().manual_seed(0)
    text = lambda n: torch.randint(10, 490, (n,), generator=g).tolist()  # noqa: E731
    ids = torch.tensor([text(12) + [502] + [500] * (side * side // 4) + [503] + text(20)])
    return dict(input_ids=ids, pixel_values=torch.randn(side * side, 3 * 2 * 16 * 16, generator=g),
                image_grid_thw=torch.tensor([[1, side, side]]))


def _kwargs(engine: str, inp: dict) -> dict:
    if engine == "vlmodel":
        return dict(inp)
    return dict(inp, mm_token_type_ids=(inp["input_ids"] == IDS["image_token_id"]).int())  # 5.x needs it


def forward_once(engine, model, inp) -> float:
    t0 = CLOCK()
    with torch.inference_mode():
        model(**_kwargs(engine, inp))
    return CLOCK() - t0


def generate_once(engine, model, inp, new_tokens) -> tuple[float, list[int]]:
    t0 = CLOCK()
    with torch.inference_mode():
        kw = _kwargs(engine, inp)
        if engine == "vlmodel":
            out = model.generate(kw.pop("input_ids"), max_new_tokens=new_tokens, stop_token_ids=[], **kw)
        else:
            out = model.generate(**kw, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=0)[:, inp["input_ids"].shape[1]:]
    return CLOCK() - t0, out[0].tolist()


def child(args) -> None:
    """One engine in a fresh process: load, one forward, one generation; print peak RSS (MiB)."""
    import transformers  # noqa: F401  (both pay the same import in the baseline)
    import vlmodel  # noqa: F401

    rss = lambda f: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(f + ":")) / 1024  # noqa: E731,E741
    base = rss("VmRSS")
    model, inp = load(args.child, args.path), inputs(args.image)
    forward_once(args.child, model, inp)
    generate_once(args.child, model, inp, args.new_tokens)
    print(json.dumps({"rss_mib": rss("VmHWM"), "added_mib": rss("VmHWM") - base}))


def peak_memory(engine: str, path: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--path", path, "--image", str(args.image),
           "--new-tokens", str(args.new_tokens)] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if out.returncode:
        raise RuntimeError(f"memory child for {engine} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_one(family: str, size: str, args) -> dict:
    with tempfile.TemporaryDirectory() as path:
        n_params = build_reference(family, size, path)
        models = {e: load(e, path) for e in ("transformers", "vlmodel")}
        inp = inputs(args.image)
        fwd, gen, tokens = {e: [] for e in models}, {e: [] for e in models}, {}
        for e, m in models.items():  # warm-up
            forward_once(e, m, inp)
            generate_once(e, m, inp, 4)
        for _ in range(args.repeats):
            for e, m in models.items():
                fwd[e].append(forward_once(e, m, inp))
        for _ in range(args.gen_repeats):
            for e, m in models.items():
                seconds, tokens[e] = generate_once(e, m, inp, args.new_tokens)
                gen[e].append(seconds)
        del models
        peaks = {} if args.no_memory else {e: peak_memory(e, path, args) for e in ("transformers", "vlmodel")}
    row = {"family": family, "size": size, "params_m": round(n_params / 1e6, 1),
           "prompt_tokens": inp["input_ids"].shape[1], "same_greedy_tokens": tokens["vlmodel"] == tokens["transformers"]}
    for e in ("transformers", "vlmodel"):
        row[f"{e}_forward_ms"] = round(1000 * min(fwd[e]), 1)
        row[f"{e}_forward_ms_median"] = round(1000 * statistics.median(fwd[e]), 1)
        row[f"{e}_tokens_per_s"] = round(args.new_tokens / min(gen[e]), 1)
        row[f"{e}_tokens_per_s_median"] = round(args.new_tokens / statistics.median(gen[e]), 1)
        if peaks:
            row[f"{e}_peak_rss_mib"] = round(peaks[e]["rss_mib"])
    row["forward_speedup"] = round(row["transformers_forward_ms"] / row["vlmodel_forward_ms"], 2)
    row["tokens_per_s_ratio"] = round(row["vlmodel_tokens_per_s"] / row["transformers_tokens_per_s"], 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,base")
    p.add_argument("--families", default="qwen3_5,qwen3_5_moe")
    p.add_argument("--image", type=int, default=448, help="square image side in pixels (multiple of 32)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time (needs --threads 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if os.environ.get("VLMODEL_BENCH_TF523") != "1":  # re-run with transformers 5.23 importable
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REF, ROOT]), VLMODEL_BENCH_TF523="1",
                   TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
        sys.exit(subprocess.call([sys.executable, __file__, *sys.argv[1:]], env=env))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    global CLOCK
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            p.error("--clock cpu needs --threads 1")
        CLOCK = time.process_time
    import transformers

    print(f"# transformers {transformers.__version__}, torch {torch.__version__}, CPU float32, threads "
          f"{torch.get_num_threads()}, {args.clock} clock, image {args.image}x{args.image}, {args.new_tokens} new "
          f"tokens, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows = []
    for size in args.sizes.split(","):
        for family in args.families.split(","):
            rows.append(bench_one(family, size, args))
            print(json.dumps(rows[-1]), flush=True)
    cols = ["family", "size", "params_m", "transformers_forward_ms", "vlmodel_forward_ms", "forward_speedup",
            "transformers_tokens_per_s", "vlmodel_tokens_per_s", "tokens_per_s_ratio"]
    cols += [c for c in ("transformers_peak_rss_mib", "vlmodel_peak_rss_mib") if c in rows[0]] + ["same_greedy_tokens"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"# load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
