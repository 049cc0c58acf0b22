"""Run collated training batches through transformers' own models (in a subprocess with the
reference transformers importable): per-sample, right-padded and packed (4-row positions).

Usage: python reference_train_runner.py CASES.pt OUT.pt
CASES: {family: {"checkpoint": dir or None (Qwen3-VL: a tiny model built here and written to
"save_to"), "samples": [...],
"padded": batch, "packed": batch with 4-row position_ids}}.
OUT: {"version": str, "results": {family: {"alone": [(loss, logits)], "padded": (loss, logits),
"packed": (loss, logits)}}}.
"""

from __future__ import annotations

import sys

import torch
import transformers

VISION = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def tiny_qwen3_vl(seed: int = 0):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, initializer_range=0.2, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  num_position_embeddings=256, deepstack_visual_indexes=[0], initializer_range=0.2)
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=500, video_token_id=501,
                        vision_start_token_id=502, vision_end_token_id=503)
    torch.manual_seed(seed)
    return Qwen3VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")


def load(family: str, checkpoint: str | None, save_to: str | None = None):
    if checkpoint is None:  # Qwen3-VL: built here, saved for vlmodel to load afterwards
        model = tiny_qwen3_vl().float().eval()
        if save_to:
            model.save_pretrained(save_to)
        return model
    cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
           "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[family]
    return cls.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="sdpa").eval()


def run(model, batch: dict) -> tuple[float, torch.Tensor]:
    keep = ("input_ids", "attention_mask", "labels", "position_ids", "use_cache", *VISION)
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k in keep and v is not None})
    return out.loss.item(), out.logits


def main(cases_path: str, out_path: str) -> None:
    cases = torch.load(cases_path, weights_only=False)
    results = {}
    for family, case in cases.items():
        model = load(family, case["checkpoint"], case.get("save_to"))
        alone = []
        for s in case["samples"]:
            batch = {"input_ids": s["input_ids"][None], "labels": s["labels"][None],
                     "position_ids": s["position_ids"][:, None], **{k: s[k] for k in VISION}}
            alone.append(run(model, batch))
        results[family] = {"alone": alone, "padded": run(model, case["padded"]), "packed": run(model, case["packed"])}
    torch.save({"version": transformers.__version__, "results": results}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
