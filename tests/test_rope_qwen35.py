"""get_rope_index for Qwen3.5, Qwen3.5-MoE and Qwen3-VL-MoE against transformers' own.

Qwen3.5 exists only in transformers 5.x; its get_rope_index is Qwen3-VL's (videos split into
one ``t = 1`` block per temporal patch) with the documented 5.x departures (README, "Position
ids are the original ones"): padding gets id 0 instead of 1, deltas count only the real tokens,
and the text after an image block with ``t > 1`` (never produced by the processors) restarts
at ``start + max(h', w')``. Everything else must be equal, on random batches.
"""

from __future__ import annotations

import pytest
import torch

from vlutils.rope import get_rope_index

from _refs import reference_rope
from _rope_cases import call_vlutils, random_cases


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    new = random_cases(31, "qwen3_5", 70) + random_cases(32, "qwen3_5_moe", 25) + random_cases(33, "qwen3_vl_moe", 25)
    out = reference_rope({"tf523": new}, tmp_path_factory.mktemp("rope35"))
    assert out["tf523"][0] == "5.23.0"
    return list(zip(new, out["tf523"][1]))


def _multi_frame_image(case: dict) -> bool:
    grid = case["image_grid_thw"]
    return grid is not None and grid.numel() > 0 and bool((grid[:, 0] > 1).any())


def test_qwen3_5_matches_transformers_523(refs):
    seen = {"video": 0, "padding": 0, "qwen3_5_moe": 0, "qwen3_vl_moe": 0, "multi_frame_image": 0}
    for i, (case, ref) in enumerate(refs):
        label = f"case {i} ({case['model_type']})"
        assert not isinstance(ref, dict), f"{label}: reference failed: {ref}"
        pos, deltas = call_vlutils(get_rope_index, case)
        mask = case["attention_mask"]
        mask = torch.ones_like(case["input_ids"]) if mask is None else mask
        real = mask.bool()
        if _multi_frame_image(case):  # the 5.x departure: ids differ after such a block
            seen["multi_frame_image"] += not torch.equal(pos[:, real], ref[0][:, real])
            continue
        assert torch.equal(pos[:, real], ref[0][:, real]), f"{label}: position ids of real tokens differ"
        assert bool((pos[:, ~real] == 1).all()) and bool((ref[0][:, ~real] == 0).all()), f"{label}: padding ids"
        padding = mask.shape[1] - mask.sum(1, keepdim=True)
        if case["image_grid_thw"] is None and case["video_grid_thw"] is None:
            # 4.x text-only deltas count padding's id 1 in the max (kept as is, see test_rope.py)
            padding -= ((mask.sum(1, keepdim=True) == 1) & (padding > 0)).long()
        assert torch.equal(ref[1].long(), deltas + padding), f"{label}: deltas {deltas.tolist()} vs {ref[1].tolist()}"
        seen["video"] += case["video_grid_thw"] is not None
        seen["padding"] += bool((~real).any())
        seen[case["model_type"]] = seen.get(case["model_type"], 0) + 1
    assert seen.pop("multi_frame_image") >= 2 and all(n >= 15 for n in seen.values()), seen


def test_qwen3_5_and_moe_types_equal_qwen3_vl():
    """Same ids as Qwen3-VL (tested against 4.57 in test_rope.py) for every Qwen3-family type."""
    for i, case in enumerate(random_cases(35, "qwen3_5", 30)):
        as_vl = call_vlutils(get_rope_index, dict(case, model_type="qwen3_vl"))
        ours = call_vlutils(get_rope_index, dict(case, model_type=("qwen3_5", "qwen3_5_moe", "qwen3_vl_moe")[i % 3]))
        assert torch.equal(ours[0], as_vl[0]) and torch.equal(ours[1], as_vl[1])
