"""Build tiny random Qwen3.5 / Qwen3.5-MoE models in transformers 5.23, save them, run them (in a subprocess).

Usage: ``PYTHONPATH=.refs/tf523 python tests/reference_qwen35_runner.py JOBS OUT``

JOBS is a ``torch.save``d list of dicts: ``family`` ("qwen3_5" | "qwen3_5_moe"), ``text`` and
``vision`` (config fields), ``ids`` (the four special token ids), ``seed``, ``path`` (where
``save_pretrained`` writes the checkpoint), ``shard`` (a max_shard_size or None), ``forward``
(a list of input dicts: input_ids, attention_mask, pixel_values, image_grid_thw,
pixel_values_videos, video_grid_thw) and ``generate`` (input dicts plus ``max_new_tokens``).
Every norm weight, A_log and dt_bias is randomised too, so that wrong wiring shows.
OUT receives per job the float32 logits of each forward and the greedy tokens of each
generation, and the transformers version.
"""

from __future__ import annotations

import sys

import torch

MEDIA = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def build(job: dict):
    import transformers

    if job["family"] == "qwen3_5":
        cfg_cls, model_cls = transformers.Qwen3_5Config, transformers.Qwen3_5ForConditionalGeneration
    else:
        cfg_cls, model_cls = transformers.Qwen3_5MoeConfig, transformers.Qwen3_5MoeForConditionalGeneration
    cfg = cfg_cls(text_config=dict(job["text"]), vision_config=dict(job["vision"]), **job["ids"],
                  tie_word_embeddings=job["text"].get("tie_word_embeddings", False))
    torch.manual_seed(job["seed"])
    model = model_cls._from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty_like(p).uniform_(0.05, 3).log())
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn_like(p))
            elif "norm" in name and name.endswith("weight") and "linear_attn.norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif "norm" in name and name.endswith("weight") and "visual" not in name:
                p.copy_(0.3 * torch.randn_like(p))  # zero-centred: the applied scale is 1 + w
    model.generation_config.eos_token_id = job["eos"]
    model.generation_config.pad_token_id = 0
    return model


def mm_token_type_ids(ids: torch.Tensor, job: dict) -> torch.Tensor:
    types = torch.zeros_like(ids, dtype=torch.int32)
    types[ids == job["ids"]["image_token_id"]] = 1
    types[ids == job["ids"]["video_token_id"]] = 2
    return types


def run(job: dict) -> dict:
    model = build(job)
    shard = {"max_shard_size": job["shard"]} if job.get("shard") else {}
    model.save_pretrained(job["path"], **shard)
    logits, tokens = [], []
    with torch.no_grad():
        for inputs in job["forward"]:
            kw = {k: v for k, v in inputs.items() if v is not None}
            out = model(**kw, mm_token_type_ids=mm_token_type_ids(inputs["input_ids"], job))
            logits.append(out.logits.float())
        for inputs in job["generate"]:
            kw = {k: v for k, v in inputs.items() if v is not None and k != "max_new_tokens"}
            out = model.generate(**kw, mm_token_type_ids=mm_token_type_ids(inputs["input_ids"], job),
                                 max_new_tokens=inputs["max_new_tokens"], do_sample=False)
            tokens.append(out[:, inputs["input_ids"].shape[1]:])
    return {"logits": logits, "tokens": tokens}


def main() -> None:
    import transformers

    jobs = torch.load(sys.argv[1], weights_only=False)
    torch.save({"version": transformers.__version__, "results": [run(j) for j in jobs]}, sys.argv[2])


if __name__ == "__main__":
    main()
