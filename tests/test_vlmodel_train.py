"""vlmodel trains: the loss equals transformers', gradients reach the vision tower, and a
short overfit run drives the loss down."""

from __future__ import annotations

import pytest
import torch

import vlmodel

from _tiny_checkpoints import hf_model, images, prompt


def _sample(seed=0):
    pv, grid = images([(112, 168)], seed=seed)
    ids = prompt([3, ("image", tuple(int(x) for x in grid[0])), 12], seed=seed)
    labels = ids.clone()
    labels[:, : ids.shape[1] - 12] = -100  # learn the answer only
    return ids, labels, pv, grid


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_loss_and_gradients_match_transformers(family, tmp_path):
    hf = hf_model(family, seed=11)
    hf.save_pretrained(tmp_path)
    ours = vlmodel.from_pretrained(tmp_path, dtype=torch.float32)
    ids, labels, pv, grid = _sample()
    args = (ids, grid, None) if family == "qwen2_vl" else (ids, grid, None, None)
    pos, _ = hf.model.get_rope_index(*args)
    ref = hf(input_ids=ids, pixel_values=pv, image_grid_thw=grid, labels=labels).loss
    got = ours(ids, pixel_values=pv, image_grid_thw=grid, position_ids=pos, labels=labels).loss
    assert abs(got.item() - ref.item()) <= 1e-4 * abs(ref.item())
    ref.backward()
    got.backward()
    pairs = [
        (ours.visual.patch_embed.proj.weight, hf.model.visual.patch_embed.proj.weight),
        (ours.visual.blocks[0].attn.qkv.weight, hf.model.visual.blocks[0].attn.qkv.weight),
        (ours.model.layers[0].self_attn.q_proj.bias, hf.model.language_model.layers[0].self_attn.q_proj.bias),
        (ours.lm_head.weight, hf.lm_head.weight),
    ]
    for mine, theirs in pairs:
        assert mine.grad is not None and mine.grad.abs().max() > 0
        scale = theirs.grad.abs().max()
        assert (mine.grad - theirs.grad).abs().max() <= 1e-3 * scale


def test_overfit_one_sample_loss_falls(tmp_path):
    torch.manual_seed(0)
    hf_model("qwen2_5_vl", seed=12, init=0.02).save_pretrained(tmp_path)
    model = vlmodel.from_pretrained(tmp_path, dtype=torch.float32).train()
    ids, labels, pv, grid = _sample(seed=1)
    pos = torch.arange(ids.shape[1]).expand(3, 1, -1)  # positions need not be M-RoPE to overfit
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(ids, pixel_values=pv, image_grid_thw=grid, position_ids=pos, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    assert losses[-1] < 0.5
