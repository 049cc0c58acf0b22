"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints and inputs for the vlmodel tests and bench.

Weights are random with ``initializer_range`` 0.2 so that wrong wiring (swapped M-RoPE
sections, a wrong window order...) moves the logits far beyond the tolerance.  The
vocabulary is small and the special token ids are moved inside it, which also checks
that the model reads them from the config.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

IMAGE, VIDEO, START, END = 500, 501, 502, 503
VOCAB = 512
EOS = 7


def hf_config(family: str, *, tie: bool = False, size: str = "tiny", init: float = 0.2):
    """A transformers config for a tiny (or ~100M-parameter, ``size="base"``) model."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    if size == "tiny":
        text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        vis2 = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
        vis25 = dict(depth=4, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2,
                     fullatt_block_indexes=[1, 3], window_size=112)
    else:  # ~100M parameters
        text = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
                    num_attention_heads=8, num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]})
        vis2 = dict(depth=12, embed_dim=384, hidden_size=512, num_heads=6, mlp_ratio=4)
        vis25 = dict(depth=12, hidden_size=384, intermediate_size=1024, out_hidden_size=512, num_heads=6,
                     fullatt_block_indexes=[3, 7, 11], window_size=112)
    text.update(initializer_range=init, tie_word_embeddings=tie, rms_norm_eps=1e-6)
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
    if family == "qwen2_vl":
        cfg = Qwen2VLConfig(text_config=text, vision_config=dict(vis2, initializer_range=init), **ids)
    else:
        cfg = Qwen2_5_VLConfig(text_config=dict(text), vision_config=dict(vis25, initializer_range=init,
                                                                          tokens_per_second=2), **ids)
    cfg.tie_word_embeddings = tie
    cfg.eos_token_id = EOS
    return cfg


def hf_model(family: str, *, seed: int = 0, tie: bool = False, size: str = "tiny", init: float = 0.2):
    """A randomly initialised transformers model (float32, SDPA, eval mode)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    model = cls._from_config(hf_config(family, tie=tie, size=size, init=init), attn_implementation="sdpa")
    return model.eval()


def save_hub_layout(model, path: str) -> None:
    """Write ``model`` as the released hub checkpoints are laid out.

    Flat config (text fields at the top level, ``rope_scaling`` type "mrope", vision
    ``in_chans``), original tensor names, no ``lm_head.weight`` when tied.
    """
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    full = model.config.to_dict()
    text = full.pop("text_config")
    flat = {k: v for k, v in text.items() if k not in ("architectures", "model_type", "layer_types", "dtype")}
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": text["rope_scaling"]["mrope_section"]}
    vision = dict(full["vision_config"])
    vision["in_chans"] = vision.pop("in_channels")
    tie = bool(text.get("tie_word_embeddings"))
    flat.update(
        architectures=[type(model).__name__], model_type=full["model_type"], vision_config=vision,
        tie_word_embeddings=tie, torch_dtype="float32", eos_token_id=EOS,
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
    )
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(flat, fh, indent=2)
    state = {}
    for name, tensor in model.state_dict().items():
        name = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        if tie and name == "lm_head.weight":
            continue
        state[name] = tensor.contiguous().clone()
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def save_v5_sharded(model, path: str, shards: int = 3) -> None:
    """Write ``model`` with transformers 5.x names (``model.language_model.*``, ``model.visual.*``),
    a nested config using ``rope_parameters``, sharded with ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    cfg = model.config.to_dict()
    text = cfg["text_config"]
    scaling = text.pop("rope_scaling")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta"),
                               "mrope_section": scaling["mrope_section"]}
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    names = sorted(model.state_dict())
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: model.state_dict()[n].contiguous().clone() for n in names[i::shards]}
        save_file(part, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)


def images(sizes: list[tuple[int, int]], seed: int = 0):
    """Random RGB images through transformers' own Qwen2-VL image processor."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    rng = np.random.default_rng(seed)
    pics = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    proc = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=448 * 448)
    out = proc(images=pics, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def video_patches(grids: list[tuple[int, int, int]], seed: int = 0, patch_dim: int = 3 * 2 * 14 * 14):
    """Random patch rows for videos of the given (t, h, w) patch grids (values like normalised pixels)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, patch_dim, generator=g), torch.tensor(grids, dtype=torch.long)


def prompt(parts: list, seed: int = 0, merge: int = 2) -> torch.Tensor:
    """Token ids for a prompt: ints are runs of random text tokens; ("image"|"video", (t, h, w))
    become <start> + one placeholder per merged token + <end>."""
    g = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for part in parts:
        if isinstance(part, int):
            ids += torch.randint(10, IMAGE - 10, (part,), generator=g).tolist()
        else:
            kind, (t, h, w) = part
            ids += [START] + [IMAGE if kind == "image" else VIDEO] * (t * h * w // merge**2) + [END]
    return torch.tensor([ids])


def left_pad(rows: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (1, L_i) rows into a left-padded batch and its attention mask."""
    n = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - r.shape[1]:] = r[0]
        mask[i, n - r.shape[1]:] = 1
    return ids, mask
