"""vlmodel's qwen_vl vs the ORIGINAL Qwen-VL-Chat remote code: forward and greedy decoding on CPU.

    PYTHONPATH=. .venv/bin/python bench/bench_qwen_vl.py --reference /tmp/ref/qwen_vl_chat
    PYTHONPATH=. .venv/bin/python bench/bench_qwen_vl.py --reference DIR --size tiny --rounds 2

``--reference``: a folder holding the original ``modeling_qwen.py``, ``visual.py``,
``qwen_generation_utils.py``, ``tokenization_qwen.py``, ``configuration_qwen.py`` (see
scripts/make_qwen_vl_fixtures.py for where they come from); they run with transformers 4.32.0
from ``.refs/qwenvl_ref`` (``--ref-env``) in their own processes.  Not runnable in CI (the
remote code is not on PyPI).

The reference process builds a random checkpoint of the chosen size with the original classes,
``save_pretrained``s it and writes the prompt (one image, the original's make_context layout with
a tiny tiktoken vocabulary), then both libraries, each in a fresh process per round, load that
checkpoint and time:

* forward: one prefill of the prompt (the original opens and transforms the image file inside its
  forward; ours is given the same pixel values, its transform is timed separately by vlutils);
* decode: ``generate`` of ``--new-tokens`` greedy tokens minus one forward, per token.

Processes alternate (reference, ours, reference, ours...) so background load hits both; the best
round counts.  Times are the process's CPU seconds with ``--threads`` torch threads (default 1:
on a shared machine far steadier than wall time), wall seconds are reported too.  Memory: each
process's peak RSS (VmHWM), split into the peak while importing + loading and the peak while
running (VmHWM reset after loading), and that minus the RSS once loaded.  vlmodel's weights stay
memory-mapped from the safetensors files (file-backed pages, resident once first used), so its
"run peak - loaded" includes the weights being paged in; the growth of anonymous memory (RssAnon)
over the runs is what running itself allocates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF_FILES = ("modeling_qwen.py", "visual.py", "qwen_generation_utils.py", "tokenization_qwen.py", "configuration_qwen.py")
log = logging.getLogger("bench_qwen_vl")

# (decoder, ViT) sizes; the Resampler always yields 256 tokens per image, the ViT sees (image / 14)^2 patches
SIZES = {
    "tiny": dict(text=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, kv_channels=64,
                           intermediate_size=384),
                 visual=dict(width=64, layers=2, heads=4, mlp_ratio=4.0, image_size=224)),
    "small": dict(text=dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, kv_channels=64,
                            intermediate_size=2816),
                  visual=dict(width=256, layers=6, heads=8, mlp_ratio=4.9231, image_size=448)),
}


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status in MB (VmRSS: now, VmHWM: the peak since start or reset)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Start a new VmHWM peak from the current RSS (Linux clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def import_reference(folder: Path):
    """The original files, unmodified, as the package ``qwen_vl_chat`` (they use relative imports)."""
    import importlib

    pkg = Path(tempfile.mkdtemp(prefix="qwen_vl_ref_")) / "qwen_vl_chat"
    pkg.mkdir()
    for name in REF_FILES:
        shutil.copy(folder / name, pkg / name)
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(pkg.parent))
    return (importlib.import_module("qwen_vl_chat.modeling_qwen"), importlib.import_module("qwen_vl_chat.configuration_qwen"),
            importlib.import_module("qwen_vl_chat.tokenization_qwen"), importlib.import_module("qwen_vl_chat.qwen_generation_utils"))


def make_checkpoint(args) -> None:
    """Reference process: random checkpoint, image, prompt ids and the original's pixel values."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_qwen_vl_fixtures import CORPUS, learn_tiktoken, write_tiktoken

    modeling, configuration, tokenization, gen_utils = import_reference(Path(args.reference))
    work = Path(args.work)
    ckpt = work / "checkpoint"
    ckpt.mkdir(parents=True)
    write_tiktoken(learn_tiktoken(CORPUS, 120), ckpt / "qwen.tiktoken")
    tok = tokenization.QWenTokenizer(str(ckpt / "qwen.tiktoken"))
    size = SIZES[args.size]
    visual = dict(size["visual"], patch_size=14, output_dim=size["text"]["hidden_size"], image_start_id=tok.img_start_id)
    # flags as in the released config.json (NTK / log-n on, seq_length 2048: inactive at this prompt length)
    config = configuration.QWenConfig(vocab_size=(len(tok) + 63) // 64 * 64, fp32=True, use_flash_attn=False,
                                      visual=visual, seq_length=2048, use_dynamic_ntk=True, use_logn_attn=True,
                                      **size["text"])
    torch.manual_seed(0)
    model = modeling.QWenLMHeadModel(config).float().eval()
    model.save_pretrained(ckpt, safe_serialization=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(work / "image.png")
    query = tok.from_list_format([{"image": str(work / "image.png")}, {"text": "Describe the picture in detail."}])
    _, ids = gen_utils.make_context(tok, query, history=[], system="You are a helpful assistant.")
    pixel_values = model.transformer.visual.image_transform(Image.open(work / "image.png").convert("RGB"))[None]
    save_file({"input_ids": torch.tensor([ids]), "pixel_values": pixel_values.contiguous()}, str(work / "inputs.safetensors"))


def run_worker(args) -> None:
    """Time one library in this process; print one JSON line."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    inputs = load_file(str(work / "inputs.safetensors"))
    ids = inputs["input_ids"]
    if args.worker == "reference":
        modeling, configuration, _, _ = import_reference(Path(args.reference))
        from transformers import GenerationConfig

        model = modeling.QWenLMHeadModel.from_pretrained(work / "checkpoint", torch_dtype=torch.float32).eval()
        model.generation_config.eos_token_id = None  # always --new-tokens tokens
        gen_config = GenerationConfig(chat_format="chatml")

        def forward():
            return model(ids).logits

        def decode():
            return model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                                  generation_config=gen_config)[0, ids.shape[1]:]
    else:
        import vlmodel

        model = vlmodel.from_pretrained(work / "checkpoint", dtype=torch.float32)
        pv = inputs["pixel_values"]

        def forward():
            return model(ids, pixel_values=pv).logits

        def decode():
            return model.generate(ids, pixel_values=pv, max_new_tokens=args.new_tokens, stop_token_ids=[])[0]
    load_peak, loaded, loaded_anon = status_mb("VmHWM"), status_mb("VmRSS"), status_mb("RssAnon")
    reset_peak()
    fwd, dec = [], []
    with torch.inference_mode():
        for _ in range(args.repeats):
            logits, cpu, wall = timed(forward)
            fwd.append((cpu, wall))
            tokens, cpu, wall = timed(decode)
            dec.append((cpu, wall))
    best_f = min(fwd)
    best_d = min(dec)
    per_token = [(d[0] - best_f[0]) / (args.new_tokens - 1) for d in dec]
    print(json.dumps({
        "library": args.worker, "forward_cpu_s": best_f[0], "forward_wall_s": best_f[1],
        "generate_cpu_s": best_d[0], "generate_wall_s": best_d[1], "decode_cpu_s_per_token": max(min(per_token), 1e-9),
        "median_forward_cpu_s": statistics.median(f[0] for f in fwd), "prompt_tokens": ids.shape[1],
        "peak_rss_mb": max(load_peak, status_mb("VmHWM")), "load_peak_rss_mb": load_peak, "loaded_rss_mb": loaded,
        "run_peak_rss_mb": status_mb("VmHWM"), "run_anon_growth_mb": status_mb("RssAnon") - loaded_anon,
        "tokens": [int(t) for t in tokens],
        "last_logits_max": float(logits[0, -1].abs().max()),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="folder with the original remote-code files")
    parser.add_argument("--ref-env", default=str(ROOT / ".refs" / "qwenvl_ref"), help="transformers 4.32 target folder")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--worker", choices=["reference", "ours", "make"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "make":
        return make_checkpoint(args)
    if args.worker:
        return run_worker(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ref_env = dict(os.environ, PYTHONPATH=args.ref_env, TRANSFORMERS_VERBOSITY="error")
    our_env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = [sys.executable, os.path.abspath(__file__), "--reference", args.reference, "--size", args.size,
              "--threads", str(args.threads), "--repeats", str(args.repeats), "--new-tokens", str(args.new_tokens)]
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(script + ["--worker", "make", "--work", work], env=ref_env, check=True, timeout=1800)
        results: dict[str, list[dict]] = {"reference": [], "ours": []}
        for _ in range(args.rounds):
            for library, env in (("reference", ref_env), ("ours", our_env)):
                proc = subprocess.run(script + ["--worker", library, "--work", work], env=env, check=True,
                                      capture_output=True, text=True, timeout=1800)
                results[library].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = {lib: {k: min(r[k] for r in rows) if isinstance(rows[0][k], float) else rows[0][k] for k in rows[0]}
            for lib, rows in results.items()}
    ref, ours = best["reference"], best["ours"]
    same = ref["tokens"] == ours["tokens"]
    print(f"Qwen-VL {args.size}: {ref['prompt_tokens']} prompt tokens (one image), {args.new_tokens} new tokens, "
          f"{args.threads} thread(s), best of {args.rounds} rounds x {args.repeats}; greedy tokens identical: {same}")
    print(f"{'':24}{'original':>12}{'vlmodel':>12}{'orig/ours':>10}")
    for key, label in (("forward_cpu_s", "forward (CPU s)"), ("decode_cpu_s_per_token", "decode (CPU s/token)"),
                       ("generate_wall_s", "generate (wall s)"), ("peak_rss_mb", "peak RSS (MB)"),
                       ("load_peak_rss_mb", "  while loading (MB)"), ("run_peak_rss_mb", "  while running (MB)")):
        print(f"{label:24}{ref[key]:12.4f}{ours[key]:12.4f}{ref[key] / ours[key]:9.2f}x")
    extra = {lib: r["run_peak_rss_mb"] - r["loaded_rss_mb"] for lib, r in best.items()}
    print(f"{'run peak - loaded (MB)':24}{extra['reference']:12.1f}{extra['ours']:12.1f}")
    print(f"{'anonymous RSS added (MB)':24}{ref['run_anon_growth_mb']:12.1f}{ours['run_anon_growth_mb']:12.1f}")
    print(json.dumps({"size": args.size, "threads": args.threads, "reference": ref, "ours": ours}))


if __name__ == "__main__":
    main()
