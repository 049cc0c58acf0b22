"""Packed rows (several samples in one row, ``cu_seqlens``) and right-padded training batches.

A packed row must behave exactly like its samples run one by one: same logits (float32,
within 1e-4 of the largest logit), mean loss = token-weighted mean of the per-sample
losses, same gradients.  Right-padded batches give transformers' loss.
"""

from __future__ import annotations

import pytest
import torch

import vlmodel

from _tiny_checkpoints import hf_model, images, prompt, video_patches


def _grid(g):
    return tuple(int(x) for x in g)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def pair(request, tmp_path_factory):
    hf = hf_model(request.param, seed=21)
    path = tmp_path_factory.mktemp("packed_" + request.param)
    hf.save_pretrained(path)
    return hf, vlmodel.from_pretrained(path, dtype=torch.float32)


def _samples(model_type):
    """Three samples: image + text, text only, video + image; labels on their tails."""
    pv, ig = images([(112, 168), (140, 112)], seed=31)
    vv, vg = video_patches([(2, 8, 12)], seed=32)
    secs = torch.tensor([1.0]) if model_type == "qwen2_5_vl" else None
    samples = [
        dict(input_ids=prompt([3, ("image", _grid(ig[0])), 7], seed=1),
             pixel_values=pv[: int(ig[0].prod())], image_grid_thw=ig[:1]),
        dict(input_ids=prompt([11], seed=2)),
        dict(input_ids=prompt([2, ("video", (2, 8, 12)), 3, ("image", _grid(ig[1])), 6], seed=3),
             pixel_values=pv[int(ig[0].prod()):], image_grid_thw=ig[1:], pixel_values_videos=vv,
             video_grid_thw=vg, second_per_grid_ts=secs),
    ]
    for i, s in enumerate(samples):
        labels = s["input_ids"].clone()
        labels[:, : labels.shape[1] - 4 - i] = -100
        s["labels"] = labels
    return samples


def _pack(samples):
    cat = lambda key: (torch.cat([s[key] for s in samples if s.get(key) is not None])  # noqa: E731
                       if any(s.get(key) is not None for s in samples) else None)
    lengths = [s["input_ids"].shape[1] for s in samples]
    return dict(
        input_ids=torch.cat([s["input_ids"] for s in samples], dim=1),
        labels=torch.cat([s["labels"] for s in samples], dim=1),
        cu_seqlens=torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32),
        pixel_values=cat("pixel_values"), image_grid_thw=cat("image_grid_thw"),
        pixel_values_videos=cat("pixel_values_videos"), video_grid_thw=cat("video_grid_thw"),
        second_per_grid_ts=cat("second_per_grid_ts"),
    )


def _alone(model, s):
    return model(**{k: v for k, v in s.items() if v is not None})


@pytest.mark.parametrize("given_positions", [True, False], ids=["batch-positions", "computed-positions"])
def test_packed_logits_and_loss_equal_samples_alone(pair, given_positions):
    _, ours = pair
    samples = _samples(ours.config.model_type)
    batch = _pack(samples)
    if given_positions:  # what vlutils.train.collate hands over: each sample's own ids
        pos = [ours.rope_index(s["input_ids"], s.get("image_grid_thw"), s.get("video_grid_thw"), None,
                               s.get("second_per_grid_ts"))[0] for s in samples]
        batch["position_ids"] = torch.cat(pos, dim=2)
    with torch.no_grad():
        packed = ours(**{k: v for k, v in batch.items() if v is not None})
        alone = [_alone(ours, s) for s in samples]
    ref = torch.cat([o.logits for o in alone], dim=1)
    scale = ref.abs().max().item()
    assert (packed.logits - ref).abs().max().item() <= 1e-4 * scale
    counts = [int((s["labels"][:, 1:] != -100).sum()) for s in samples]
    expected = sum(o.loss.item() * n for o, n in zip(alone, counts)) / sum(counts)
    assert abs(packed.loss.item() - expected) <= 1e-5 * abs(expected)


def test_seams_are_not_targets(pair):
    """Labels on every token: the packed loss still skips the sample boundaries."""
    _, ours = pair
    samples = [dict(input_ids=prompt([n], seed=n)) for n in (5, 9, 4)]
    for s in samples:
        s["labels"] = s["input_ids"].clone()
    batch = _pack(samples)
    with torch.no_grad():
        packed = ours(**{k: v for k, v in batch.items() if v is not None}).loss
        alone = [_alone(ours, s).loss.item() for s in samples]
    counts = [s["input_ids"].shape[1] - 1 for s in samples]
    expected = sum(a * n for a, n in zip(alone, counts)) / sum(counts)
    assert abs(packed.item() - expected) <= 1e-5 * abs(expected)


def test_packed_gradients_match(pair):
    _, ours = pair
    samples = _samples(ours.config.model_type)
    counts = [int((s["labels"][:, 1:] != -100).sum()) for s in samples]
    params = [ours.visual.blocks[0].attn.qkv.weight, ours.model.layers[-1].self_attn.k_proj.weight,
              ours.model.embed_tokens.weight, ours.lm_head.weight]
    batch = _pack(samples)
    packed = torch.autograd.grad(ours(**{k: v for k, v in batch.items() if v is not None}).loss, params)
    total = sum(_alone(ours, s).loss * n for s, n in zip(samples, counts)) / sum(counts)
    alone = torch.autograd.grad(total, params)
    for got, ref in zip(packed, alone):
        assert ref.abs().max() > 0
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_right_padded_batch_loss_matches_transformers_and_packed(pair):
    hf, ours = pair
    samples = _samples(ours.config.model_type)
    n = max(s["input_ids"].shape[1] for s in samples)
    ids = torch.zeros(len(samples), n, dtype=torch.long)
    labels = torch.full((len(samples), n), -100)
    mask = torch.zeros(len(samples), n, dtype=torch.long)
    for i, s in enumerate(samples):
        m = s["input_ids"].shape[1]
        ids[i, :m], labels[i, :m], mask[i, :m] = s["input_ids"][0], s["labels"][0], 1
    media = {k: v for k, v in _pack(samples).items() if k not in ("input_ids", "labels", "cu_seqlens") and v is not None}
    with torch.no_grad():
        got = ours(ids, attention_mask=mask, labels=labels, **media)
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels, **media)
        packed = ours(**{k: v for k, v in _pack(samples).items() if v is not None})
    assert abs(got.loss.item() - ref.loss.item()) <= 1e-4 * abs(ref.loss.item())
    assert abs(got.loss.item() - packed.loss.item()) <= 1e-4 * abs(packed.loss.item())
    real = mask.bool()
    scale = ref.logits[real].abs().max()
    assert (got.logits[real] - ref.logits[real]).abs().max() <= 1e-4 * scale


def test_bad_cu_seqlens_are_clear_errors(pair):
    _, ours = pair
    ids = prompt([10], seed=4)
    for cu in ([0, 4], [0, 6, 4, 10], [1, 10]):
        with pytest.raises(ValueError, match="cu_seqlens"):
            ours(ids, cu_seqlens=torch.tensor(cu, dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens"):
        ours(torch.cat([ids, ids]), cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens"):
        ours(ids, cu_seqlens=torch.tensor([0.0, 10.0]))
