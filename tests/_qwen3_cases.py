"""Qwen3-VL-family parity cases: tiny configs (several layouts) and inputs built by vlutils.

Inputs come from ``vlutils.build_inputs(model_type="qwen3_vl")`` with the tiny tokenizer
(random images; videos as frame tensors with fps metadata, so each temporal patch gets its
own vision block after its timestamp text).  The tokenizer's special ids (151643...) are
moved into a 512-token vocabulary (400 + offset), which also checks that the model reads
them from the config.
"""

from __future__ import annotations

import numpy as np
import torch

from _tiny_tokenizer import SPECIAL, tiny_qwen_tokenizer

VOCAB = 512
BASE = 151643


def remap(ids: torch.Tensor) -> torch.Tensor:
    return torch.where(ids >= BASE, ids - BASE + 400, ids)


TOKENS = {k: remap(torch.tensor(v)).item() for k, v in SPECIAL.items()}
IDS = dict(image_token_id=TOKENS["<|image_pad|>"], video_token_id=TOKENS["<|video_pad|>"],
           vision_start_token_id=TOKENS["<|vision_start|>"], vision_end_token_id=TOKENS["<|vision_end|>"])


def _text(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 4, 4],
                                 "mrope_interleaved": True})
    base.update(kw)
    return base


def _vision(**kw):
    base = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                num_position_embeddings=64, deepstack_visual_indexes=[0, 2], patch_size=16)
    base.update(kw)
    return base


def _rope(section, theta=10000.0):
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": section, "mrope_interleaved": True}


# Variants with unusual dimensions: head_dim != hidden/heads, odd mrope sections, a
# non-square position table, unsorted DeepStack indexes, MoE layouts.
MODELS = [
    dict(name="vl-base", family="qwen3_vl", text=_text(), vision=_vision(), top={}, tie=False, shard=None),
    dict(name="vl-odd-tied-sharded", family="qwen3_vl",
         text=_text(hidden_size=48, num_attention_heads=3, num_key_value_heads=1, head_dim=32, num_hidden_layers=2,
                    intermediate_size=80, rope_parameters=_rope([6, 5, 5], 5e5)),
         vision=_vision(depth=2, hidden_size=48, num_heads=3, intermediate_size=40, out_hidden_size=48,
                        num_position_embeddings=90, deepstack_visual_indexes=[1, 0]),
         top={"tie_word_embeddings": True}, tie=True, shard="150KB"),
    dict(name="moe-sparse-step1-mlp-only", family="qwen3_vl_moe",
         text=_text(head_dim=16, rope_parameters=_rope([2, 3, 3]), num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[1]),
         vision=_vision(deepstack_visual_indexes=[1]), top={"tie_word_embeddings": False}, tie=False, shard="200KB"),
    dict(name="moe-step2-tied", family="qwen3_vl_moe",
         text=_text(num_hidden_layers=4, intermediate_size=80, num_experts=6, num_experts_per_tok=3,
                    moe_intermediate_size=24, decoder_sparse_step=2, mlp_only_layers=[]),
         vision=_vision(deepstack_visual_indexes=[0, 1, 2]), top={"tie_word_embeddings": True}, tie=True, shard=None),
]


def _image(rng, h, w):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _video(rng, t, h, w, fps=30.0, step=15):
    frames = torch.from_numpy(rng.integers(0, 256, (t, 3, h, w), dtype=np.uint8))
    return frames, {"fps": fps, "frames_indices": list(range(0, t * step, step))}


def _inputs(convs, images=None, videos=None, greedy=0):
    from vlutils import build_inputs

    out = build_inputs(convs, tiny_qwen_tokenizer(), "qwen3_vl", images=images, videos=videos)
    ids = remap(out["input_ids"])
    mm = (ids == IDS["image_token_id"]).long() + 2 * (ids == IDS["video_token_id"]).long()
    batch = dict(input_ids=ids, attention_mask=out["attention_mask"], pixel_values=out["pixel_values"],
                 image_grid_thw=out["image_grid_thw"], pixel_values_videos=out["pixel_values_videos"],
                 video_grid_thw=out["video_grid_thw"], mm_token_type_ids=mm, greedy=greedy)
    return {k: v for k, v in batch.items() if v is not None}


def inputs() -> dict[str, dict]:
    """Named model inputs (tensors) shared by every variant."""
    rng = np.random.default_rng(0)
    user = lambda *items: [{"role": "user", "content": [*items, {"type": "text", "text": "Describe this image."}]}]  # noqa: E731
    img, vid = {"type": "image", "image": "x"}, {"type": "video", "video": "x"}
    cases = {
        "text": _inputs([[{"role": "user", "content": "The quick brown fox jumps over the lazy dog."}]]),
        "image": _inputs([user(img)], images=[_image(rng, 64, 96)], greedy=16),
        "images": _inputs([user(img, img, img)], images=[_image(rng, 96, 64), _image(rng, 128, 160),
                                                         _image(rng, 32, 224)]),
        "video": _inputs([user(vid, img)], images=[_image(rng, 64, 64)],
                         videos=[_video(rng, 4, 64, 96)], greedy=16),
        "videos": _inputs([user(vid, vid)], videos=[_video(rng, 6, 32, 64, fps=24.0, step=8),
                                                    _video(rng, 2, 96, 64)]),
        "batch": _inputs([user(img), user(img, vid)], images=[_image(rng, 64, 96), _image(rng, 96, 128)],
                         videos=[_video(rng, 4, 32, 32)], greedy=16),
    }
    train = dict(cases["video"], greedy=0)
    train["labels"] = train["input_ids"].masked_fill(torch.arange(train["input_ids"].shape[1]) < 30, -100)
    cases["train"] = train
    return cases


MEDIA = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def media(inp: dict) -> dict:
    """The vision tensors of one case, as keyword arguments for the model."""
    return {k: inp[k] for k in MEDIA if k in inp}


def assert_close(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None, rel: float = 1e-4) -> None:
    """Max |ours - ref| within ``rel`` of ref's largest magnitude (only where ``mask`` is set)."""
    if mask is not None:
        ours, ref = ours[mask.bool()], ref[mask.bool()]
    scale = ref.abs().max().item()
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= rel * scale, f"max |diff| {diff:.3g} > {rel} * {scale:.3g}"
