"""Packed 4-bit vlmodel vs the float model on CPU: weight memory, peak memory, prefill and decode speed.

    .venv/bin/python bench/bench_quant.py                    # ~100M Qwen2-VL, GPTQ 4-bit group 128
    .venv/bin/python bench/bench_quant.py --format awq --group 128 --runs 5

A ~100M-parameter Qwen2-VL checkpoint (``_tiny_checkpoints`` size "base") gets its decoder
linear layers replaced by random 4-bit codes in the chosen format (``_quant_checkpoints``);
the float checkpoint holds the same, dequantized, weights.  Each variant runs in its own
child process (load, one prefill of an image prompt, greedy decoding) so that its peak RSS
is its own:

* ``fp32`` / ``bf16``: the float checkpoint loaded in that dtype;
* ``q4-bf16`` / ``q4-fp32``: the packed checkpoint, activations in that dtype (bf16 uses
  torch's CPU int4 kernel at full speed; its float32 path is exact but slower).

Reported: resident bytes of all weights and of the decoder linears (packed buffers count),
peak RSS (and the peak minus the RSS after the imports, before loading), prefill tokens/s (best of ``--runs``), decode tokens/s (``--new`` tokens after the
prompt, best of ``--runs``), and ratios against fp32.  ``--clock cpu`` (with ``--threads 1``)
times the process's CPU seconds instead of wall-clock: on a machine shared with other jobs
that is far less noisy, since time spent descheduled is not counted.  transformers has no CPU path for
GPTQ/AWQ checkpoints (its integrations need GPTQModel/AutoAWQ kernels), so it is not in
this table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

VARIANTS = {"fp32": ("float", torch.float32), "bf16": ("float", torch.bfloat16),
            "q4-bf16": ("quant", torch.bfloat16), "q4-fp32": ("quant", torch.float32)}


def build(workdir: str, fmt: str, group: int) -> None:
    from _quant_checkpoints import write_dequantized, write_quantized
    from _tiny_checkpoints import hf_model, save_hub_layout

    save_hub_layout(hf_model("qwen2_vl", seed=0, size="base", init=0.02), os.path.join(workdir, "src"))
    refs = write_quantized(os.path.join(workdir, "src"), os.path.join(workdir, "quant"), fmt, bits=4, group=group,
                           reference=False)
    write_dequantized(os.path.join(workdir, "quant"), refs, os.path.join(workdir, "float"))


def status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status: VmRSS now, VmHWM its peak
    (unlike ru_maxrss, VmHWM restarts at exec, so a child does not inherit its parent's)."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def child(workdir: str, variant: str, runs: int, new: int, clock=time.perf_counter) -> dict:
    import vlmodel
    from _tiny_checkpoints import images, prompt
    from vlmodel.quant import quantized_layers

    kind, dtype = VARIANTS[variant]
    imported = status_mb("VmRSS")  # torch, vlmodel and the test helpers, before any weights
    model = vlmodel.from_pretrained(os.path.join(workdir, kind), dtype=dtype)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    weights = sum(t.nbytes for t in tensors.values())
    linears = [m for n, m in model.named_modules() if n.startswith("model.layers.") and isinstance(m, torch.nn.Linear)]
    linear_bytes = sum(m.resident_bytes() if m in quantized_layers(model).values() else
                       sum(t.nbytes for t in (*m.parameters(), *m.buffers())) for m in linears)
    pv, grid = images([(224, 224)], seed=0)
    ids = prompt([12, ("image", tuple(int(x) for x in grid[0])), 20], seed=0)
    text = prompt([16], seed=1)
    prefill, decode = [], []
    with torch.no_grad():
        for _ in range(runs):
            t = clock()
            model(ids, pixel_values=pv, image_grid_thw=grid, logits_to_keep=1)
            prefill.append(ids.shape[1] / (clock() - t))
            t = clock()
            model.generate(text, max_new_tokens=1, stop_token_ids=[])
            one = clock() - t
            t = clock()
            model.generate(text, max_new_tokens=new + 1, stop_token_ids=[])
            decode.append(new / max(clock() - t - one, 1e-9))
    return {"variant": variant, "weights_mb": weights / 2**20, "decoder_linears_mb": linear_bytes / 2**20,
            "peak_rss_mb": status_mb("VmHWM"), "peak_over_import_mb": status_mb("VmHWM") - imported,
            "prefill_tok_s": max(prefill), "decode_tok_s": max(decode), "prompt_tokens": ids.shape[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default="gptq", choices=["gptq", "awq", "ct"])
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new", type=int, default=32, help="decoded tokens per run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--child", nargs=2, metavar=("WORKDIR", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        print(json.dumps(child(args.child[0], args.child[1], args.runs, args.new, clock)))
        return
    with tempfile.TemporaryDirectory() as workdir:
        build(workdir, args.format, args.group)
        rows = []
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--child", workdir, variant, "--runs", str(args.runs),
                                  "--new", str(args.new), "--threads", str(args.threads), "--clock", args.clock],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"format {args.format}, 4 bits, group {args.group}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock, prompt {base['prompt_tokens']} tokens, {args.new} decoded")
    print(f"{'variant':8} {'weights MB':>10} {'dec.lin MB':>10} {'peak RSS':>9} {'peak-imp':>9} {'prefill t/s':>11} "
          f"{'decode t/s':>10} {'decode x fp32':>13} {'dec.lin x bf16':>14}")
    bf16 = rows[1]
    for r in rows:
        print(f"{r['variant']:8} {r['weights_mb']:10.1f} {r['decoder_linears_mb']:10.1f} {r['peak_rss_mb']:9.0f} "
              f"{r['peak_over_import_mb']:9.0f} "
              f"{r['prefill_tok_s']:11.1f} {r['decode_tok_s']:10.1f} {r['decode_tok_s'] / base['decode_tok_s']:13.2f} "
              f"{r['decoder_linears_mb'] / bf16['decoder_linears_mb']:14.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
