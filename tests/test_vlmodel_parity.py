"""vlmodel reproduces transformers' logits on the same checkpoint (tiny random weights).

Tolerance: float32 max |diff| <= 1e-4 * max |logit|; bfloat16 is stated below.
Positions: by default both models compute their own; where transformers 4.57 computes
different positions (fractional seconds per grid in Qwen2.5-VL videos) both get the same.
"""

from __future__ import annotations

import pytest
import torch

import vlmodel

from _tiny_checkpoints import hf_model, images, left_pad, prompt, video_patches

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]
# bfloat16: max |diff| <= 5% of max |logit|.  Observed: Qwen2.5-VL bit-identical to
# transformers, Qwen2-VL ~1.5% (the patch embedding is a matmul here, a Conv3d there);
# transformers' own bfloat16 is ~2.5-3% away from its float32.
BF16_TOL = 0.05


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(transformers model, vlmodel loaded from the transformers save_pretrained files)."""
    hf = hf_model(request.param, seed=1)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, vlmodel.from_pretrained(path, dtype=torch.float32)


def hf_positions(hf, ids, image_grid=None, video_grid=None, mask=None, seconds=None):
    if hf.config.model_type == "qwen2_vl":
        return hf.model.get_rope_index(ids, image_grid, video_grid, mask)
    return hf.model.get_rope_index(ids, image_grid, video_grid, seconds, mask)


def assert_logits_close(ours, ref, rel=1e-4, mask=None):
    if mask is not None:  # compare real (unpadded) tokens only
        ours, ref = ours[mask.bool()], ref[mask.bool()]
    scale = ref.abs().max().item()
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= rel * scale, f"max |diff| {diff:.3g} > {rel} * {scale:.3g}"


def run_both(hf, ours, ids, mask=None, explicit_positions=True, **media):
    kw = {k: v for k, v in media.items() if v is not None}
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, **kw).logits
        pos = None
        if explicit_positions:
            pos, _ = hf_positions(hf, ids, kw.get("image_grid_thw"), kw.get("video_grid_thw"), mask,
                                  kw.get("second_per_grid_ts"))
        got = ours(ids, attention_mask=mask, position_ids=pos, **kw).logits
    return got, ref


def _grid(g):
    return tuple(int(x) for x in g)


def test_text_only(pair):
    hf, ours = pair
    ids = prompt([40], seed=3)
    got, ref = run_both(hf, ours, ids)
    assert_logits_close(got, ref)


def test_one_image(pair):
    hf, ours = pair
    pv, grid = images([(224, 280)])
    ids = prompt([7, ("image", _grid(grid[0])), 9])
    got, ref = run_both(hf, ours, ids, pixel_values=pv, image_grid_thw=grid)
    assert_logits_close(got, ref)


def test_several_images_of_different_sizes(pair):
    hf, ours = pair
    pv, grid = images([(224, 280), (100, 150), (300, 120)], seed=2)
    ids = prompt([5, ("image", _grid(grid[0])), 3, ("image", _grid(grid[1])), 2,
                  ("image", _grid(grid[2])), 6], seed=2)
    got, ref = run_both(hf, ours, ids, pixel_values=pv, image_grid_thw=grid)
    assert_logits_close(got, ref)


@pytest.mark.parametrize("explicit", [True, False], ids=["hf-positions", "vlutils-positions"])
def test_video_and_image(pair, explicit):
    if not explicit:
        pytest.importorskip("vlutils.rope")
    hf, ours = pair
    pv, igrid = images([(112, 168)], seed=4)
    vv, vgrid = video_patches([(3, 12, 16)], seed=4)
    ids = prompt([4, ("video", (3, 12, 16)), 3, ("image", _grid(igrid[0])), 5], seed=4)
    extra = {"second_per_grid_ts": torch.tensor([1.0])} if hf.config.model_type == "qwen2_5_vl" else {}
    got, ref = run_both(hf, ours, ids, explicit_positions=explicit, pixel_values=pv, image_grid_thw=igrid,
                        pixel_values_videos=vv, video_grid_thw=vgrid, **extra)
    assert_logits_close(got, ref)


def test_two_videos_fractional_seconds_same_positions(pair):
    """0.5 s per grid: transformers 4.57 truncates to int, so both models get its positions."""
    hf, ours = pair
    vv, vgrid = video_patches([(2, 8, 8), (4, 16, 12)], seed=5)
    ids = prompt([3, ("video", (2, 8, 8)), 2, ("video", (4, 16, 12)), 4], seed=5)
    extra = {"second_per_grid_ts": torch.tensor([0.5, 2.0])} if hf.config.model_type == "qwen2_5_vl" else {}
    pos, _ = hf_positions(hf, ids, None, vgrid, None, extra.get("second_per_grid_ts"))
    with torch.no_grad():
        ref = hf(input_ids=ids, position_ids=pos, pixel_values_videos=vv, video_grid_thw=vgrid, **extra).logits
        got = ours(ids, position_ids=pos, pixel_values_videos=vv, video_grid_thw=vgrid, **extra).logits
    assert_logits_close(got, ref)


def test_left_padded_batch(pair):
    hf, ours = pair
    pv, grid = images([(224, 224), (112, 140)], seed=6)
    a = prompt([3, ("image", _grid(grid[0])), 4], seed=6)
    b = prompt([12, ("image", _grid(grid[1])), 2], seed=7)
    ids, mask = left_pad([a, b])
    got, ref = run_both(hf, ours, ids, mask, pixel_values=pv, image_grid_thw=grid)
    assert_logits_close(got, ref, mask=mask)


def test_positions_from_vlutils_rope(pair):
    """Without position_ids the model asks vlutils.rope; same logits as transformers."""
    pytest.importorskip("vlutils.rope")
    hf, ours = pair
    pv, grid = images([(224, 280), (100, 150), (140, 112)], seed=8)
    a = prompt([5, ("image", _grid(grid[0])), 3, ("image", _grid(grid[1])), 6], seed=8)
    b = prompt([2, ("image", _grid(grid[2])), 9], seed=9)
    for ids, mask in (left_pad([a, b]), (a[:, :], None)):
        n_images = 3 if ids.shape[0] == 2 else 2
        media = dict(pixel_values=pv[: int(grid[:n_images].prod(-1).sum())], image_grid_thw=grid[:n_images])
        got, ref = run_both(hf, ours, ids, mask, explicit_positions=False, **media)
        assert_logits_close(got, ref, mask=mask)
    text = prompt([30], seed=11)
    got, ref = run_both(hf, ours, text, explicit_positions=False)
    assert_logits_close(got, ref)


def test_bfloat16_within_stated_tolerance(pair, tmp_path):
    hf, _ = pair
    hf.save_pretrained(tmp_path)
    ours = vlmodel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    hf16 = type(hf).from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    assert ours.dtype == torch.bfloat16
    pv, grid = images([(224, 280)], seed=10)
    ids = prompt([7, ("image", _grid(grid[0])), 9], seed=10)
    got, ref = run_both(hf16, ours, ids, pixel_values=pv, image_grid_thw=grid)
    assert got.dtype == torch.bfloat16
    assert_logits_close(got, ref, rel=BF16_TOL)
    # and both stay close to the float32 answer
    with torch.no_grad():
        ref32 = hf(input_ids=ids, pixel_values=pv, image_grid_thw=grid).logits
    assert_logits_close(got, ref32, rel=BF16_TOL)


def test_wrong_placeholder_count_is_a_clear_error(pair):
    _, ours = pair
    pv, grid = images([(224, 280)])
    ids = prompt([3, ("image", (1, 8, 8)), 2])  # 16 placeholders, the image gives 80
    with pytest.raises(ValueError, match="placeholder"):
        ours(ids, pixel_values=pv, image_grid_thw=grid, position_ids=torch.zeros(3, 1, ids.shape[1], dtype=torch.long))
