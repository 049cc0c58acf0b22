"""transformers 5.23 side of bench/bench_model.py (run with PYTHONPATH=.refs/tf523).

    python bench/ref5_worker.py create FAMILY SIZE DIR     # random checkpoint -> DIR, prints parameters
    python bench/ref5_worker.py serve DIR INPUTS THREADS CLOCK

``serve`` loads DIR with transformers (float32, SDPA) and answers one JSON command per stdin
line, timing itself so that process start-up and pipes are not counted:
``{"cmd": "forward"}`` -> ``{"seconds": s}``; ``{"cmd": "generate", "n": N}`` ->
``{"seconds": s, "tokens": [...]}``; ``{"cmd": "memory"}`` -> peak RSS and the peak minus the
RSS after importing transformers (MiB).
"""

from __future__ import annotations

import json
import sys
import time

import torch

CLASSES = {
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": ("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"),
    "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration"),
    "qwen3_5_moe": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration"),
}
IDS = dict(image_token_id=412, video_token_id=413, vision_start_token_id=409, vision_end_token_id=410)


def spec(family: str, size: str) -> tuple[dict, dict]:
    """(text_config, vision_config) kwargs: tiny (~1M) or base (~100M parameters)."""
    if family.startswith("qwen3_5"):
        return _hybrid_spec(family, size)
    if size == "tiny":
        text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16)
        section = [2, 3, 3]
        vision = dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=64,
                      num_position_embeddings=256, deepstack_visual_indexes=[1, 2])
        experts = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
    else:
        text = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=64)
        section = [12, 10, 10]
        vision = dict(depth=12, hidden_size=384, intermediate_size=1024, num_heads=6, out_hidden_size=512,
                      num_position_embeddings=2304, deepstack_visual_indexes=[3, 7, 11])
        experts = dict(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=192)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section,
                               "mrope_interleaved": True}
    if family.endswith("_moe"):
        text.update(experts, decoder_sparse_step=1)
    return text, vision


def _hybrid_spec(family: str, size: str) -> tuple[dict, dict]:
    """Qwen3.5 (-MoE): three Gated-DeltaNet layers per full-attention layer, rotary on a quarter of each head."""
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
    half = int(text["head_dim"] * 0.25) // 2
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.25,
                                 "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
                                 "mrope_interleaved": True},
                initializer_range=0.02, full_attention_interval=4)
    if family.endswith("_moe"):
        text.pop("intermediate_size")
        text.update(moe)
    vision.update(patch_size=16, num_position_embeddings=2304, initializer_range=0.02)
    return text, vision


def create(family: str, size: str, path: str) -> None:
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[family])
    text, vision = spec(family, size)
    config = config_cls(text_config=text, vision_config=vision, **IDS)
    torch.manual_seed(0)
    model = model_cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.save_pretrained(path)
    print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))


def _mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024


def serve(path: str, inputs: str, threads: str, clock: str) -> None:
    if int(threads):
        torch.set_num_threads(int(threads))
    timer = time.process_time if clock == "cpu" else time.perf_counter
    from transformers import AutoModelForImageTextToText

    base = _mib("VmRSS")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    inp = torch.load(inputs)
    for line in sys.stdin:
        cmd = json.loads(line)
        t0 = timer()
        out = {}
        with torch.inference_mode():
            if cmd["cmd"] == "forward":
                model(**inp)
            elif cmd["cmd"] == "generate":
                new = model.generate(**inp, do_sample=False, max_new_tokens=cmd["n"], min_new_tokens=cmd["n"],
                                     pad_token_id=0)
                out["tokens"] = new[0, inp["input_ids"].shape[1]:].tolist()
            else:
                out = {"rss_mib": _mib("VmHWM"), "added_mib": _mib("VmHWM") - base}
        out.setdefault("seconds", timer() - t0)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    {"create": create, "serve": serve}[sys.argv[1]](*sys.argv[2:])
