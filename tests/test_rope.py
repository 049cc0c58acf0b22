"""vlutils.rope against transformers' own get_rope_index, run from the reference versions.

4.51.3 (``.refs/tf451``) is the original Qwen2-VL / Qwen2.5-VL semantics, 4.57 (the venv)
the Qwen3-VL one; 5.23 (``.refs/tf523``) and 4.57's Qwen2.5-VL are the documented departures.
"""

from __future__ import annotations

import random

import pytest
import torch

from vlutils.errors import InvalidOptionError, VisionInputError
from vlutils.rope import decode_position_ids, get_rope_index

from _refs import reference_rope
from _rope_cases import IMAGE_PAD, PAD, VIDEO_PAD, VISION_END, VISION_START, call_vlutils, random_case, random_cases

N_CASES = 160  # per model family (480 batches in all); each case is a batch of 1-4 rows


def _assert_same(case: dict, ref, mine, label: str) -> None:
    assert not isinstance(ref, dict), f"{label}: the reference failed on a well-formed case: {ref}"
    pos, deltas = mine
    ref_pos, ref_deltas = ref
    assert pos.dtype == torch.int64 and deltas.dtype == torch.int64, label
    assert pos.shape == ref_pos.shape and deltas.shape == ref_deltas.shape, label
    assert torch.equal(pos, ref_pos.long()), f"{label}: position ids differ at {torch.nonzero(pos != ref_pos)[:5].tolist()}"
    assert torch.equal(deltas, ref_deltas.long()), f"{label}: deltas {deltas.flatten()} vs {ref_deltas.flatten()}"


def _departure_case() -> dict:
    """One Qwen2.5-VL video of LLM grid (8, 1, 1), 0.5 s per temporal patch, text after it."""
    ids = torch.tensor([[5, VISION_START] + [VIDEO_PAD] * 8 + [VISION_END, 9]])
    return dict(
        model_type="qwen2_5_vl", input_ids=ids, attention_mask=None, image_grid_thw=None,
        video_grid_thw=torch.tensor([[8, 2, 2]]), second_per_grid_ts=torch.tensor([0.5]),
        spatial_merge_size=2, tokens_per_second=2, image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD,
        vision_start_token_id=VISION_START,
    )


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """All reference results, from one subprocess per transformers version run side by side:
    4.51 for Qwen2-VL / Qwen2.5-VL, 4.57 (venv) for Qwen3-VL, 5.23 for the departures."""
    qwen2 = random_cases(1, "qwen2_vl", N_CASES) + random_cases(2, "qwen2_5_vl", N_CASES)
    qwen3 = random_cases(3, "qwen3_vl", N_CASES)
    rng = random.Random(11)
    agreement = [random_case(rng, "qwen2_vl", unpadded=True, long_videos=i % 2 == 0) for i in range(60)]
    agreement = [c for c in agreement if c["image_grid_thw"] is not None or c["video_grid_thw"] is not None]
    jobs = {"tf451": qwen2 + [_departure_case()], "venv": qwen3 + [_departure_case()], "tf523": agreement + [_departure_case()]}
    out = reference_rope(jobs, tmp_path_factory.mktemp("rope"))
    assert out["tf451"][0] == "4.51.3" and out["venv"][0].startswith("4.57") and out["tf523"][0] == "5.23.0"
    return {
        "original": list(zip(qwen2, out["tf451"][1])) + list(zip(qwen3, out["venv"][1])),
        "departure": {ref: out[ref][1][-1] for ref in jobs},
        "agreement": list(zip(agreement, out["tf523"][1])),
    }


def test_matches_original_transformers_on_random_batches(refs):
    seen = {"fractional_seconds": 0, "long_video": 0, "left_padding": 0, "mask_holes": 0, "text_only": 0}
    for i, (case, ref) in enumerate(refs["original"]):
        _assert_same(case, ref, call_vlutils(get_rope_index, case), f"case {i} ({case['model_type']})")
        s = case["second_per_grid_ts"]
        seen["fractional_seconds"] += s is not None and any(float(x) % 1 for x in s)
        vg = case["video_grid_thw"]
        seen["long_video"] += vg is not None and bool((vg[:, 0] > vg[:, 1:].max(1).values // 2).any())
        mask = case["attention_mask"]
        seen["left_padding"] += mask is not None and bool((mask[:, 0] == 0).any())
        seen["mask_holes"] += mask is not None and bool((mask[:, 1:] < mask[:, :-1]).any() & (mask[:, 0] == 0).any())
        seen["text_only"] += case["image_grid_thw"] is None and vg is None
    assert all(n >= 20 for n in seen.values()), seen  # the random cases cover what they should


def test_documented_example():
    """transformers' docstring example: 3 temporal patches of 2x2, 25 tokens/s, 2 s per patch ->
    temporal ids 0, 50, 100 and the text after the video starts at 101."""
    ids = torch.tensor([[VISION_START] + [VIDEO_PAD] * 12 + [7, 8]])
    pos, deltas = get_rope_index(
        ids, video_grid_thw=torch.tensor([[3, 4, 4]]), second_per_grid_ts=torch.tensor([2.0]),
        model_type="qwen2_5_vl", tokens_per_second=25,
    )
    assert pos[0, 0, 1:13].tolist() == [1] * 4 + [51] * 4 + [101] * 4
    assert pos[1, 0, 1:13].tolist() == [1, 1, 2, 2] * 3
    assert pos[2, 0, 1:13].tolist() == [1, 2, 1, 2] * 3
    assert pos[:, 0, 13].tolist() == [102] * 3 and pos[:, 0, 0].tolist() == [0] * 3
    assert deltas.tolist() == [[104 - 15]]


def test_fractional_seconds_are_not_truncated():
    """0.5 s per patch at 2 tokens/s is a step of exactly 1 (4.52-4.57 would make it 0)."""
    ids = torch.tensor([[VISION_START] + [VIDEO_PAD] * 4 + [VISION_END]])
    pos, _ = get_rope_index(ids, video_grid_thw=[[4, 2, 2]], second_per_grid_ts=[0.5], model_type="qwen2_5_vl")
    assert pos[0, 0, 1:5].tolist() == [1, 2, 3, 4]


def test_departures_of_later_transformers(refs):
    """4.57 truncates second_per_grid_ts to an int; 5.23 restarts text at start + max(h', w')."""
    case = _departure_case()
    ours = call_vlutils(get_rope_index, case)
    orig, v457, v523 = (refs["departure"][ref] for ref in ("tf451", "venv", "tf523"))
    _assert_same(case, orig, ours, "4.51")
    # Original: video temporal ids 2..9 (step 0.5 * 2 = 1), vision_end at 10.
    assert ours[0][0, 0, 2:10].tolist() == list(range(2, 10)) and ours[0][0, 0, 10] == 10
    # 4.57: int(0.5) = 0, so every frame shares temporal id 2 and the text resumes at 3.
    assert v457[0][0, 0, 2:10].tolist() == [2] * 8 and v457[0][0, 0, 10] == 3
    # 5.23: temporal ids as the original, but text resumes at start + max(h', w') = 2 + 1.
    assert v523[0][0, 0, 2:10].tolist() == list(range(2, 10)) and v523[0][0, 0, 10] == 3


def test_agrees_with_523_where_semantics_coincide(refs):
    """Without padding and with no video longer than it is wide, 5.23 computes the same ids
    for Qwen2-VL; with a longer video it differs (this pins down what the departure is)."""
    agree = differ = 0
    for case, ref in refs["agreement"]:
        vg, m = case["video_grid_thw"], case["spatial_merge_size"]
        long_video = vg is not None and bool((vg[:, 0] > vg[:, 1:].max(1).values // m).any())
        ours = call_vlutils(get_rope_index, case)
        if not long_video:
            _assert_same(case, ref, ours, "5.23 agreement")
            agree += 1
        elif not isinstance(ref, dict) and not torch.equal(ours[0], ref[0]):
            differ += 1
    assert agree >= 5 and differ >= 5, (agree, differ)


def test_decode_positions_continue_the_prompt():
    """Ids from decode_position_ids equal what get_rope_index gives the extended sequence."""
    rng = random.Random(5)
    for case in random_cases(21, "qwen2_5_vl", 40):
        mask = case["attention_mask"]
        if mask is not None and not bool(mask[:, -1].all()):
            continue  # decoding appends after the last column, i.e. left padding only
        no_vision = case["image_grid_thw"] is None and case["video_grid_thw"] is None
        if no_vision and mask is not None and int(mask.sum(1).min()) < 2:
            continue  # transformers' text-only deltas count padding's id 1 in the max (kept as is)
        pos, deltas = call_vlutils(get_rope_index, case)
        k = rng.randint(1, 5)
        new = torch.tensor([[rng.randrange(1000) for _ in range(k)] for _ in range(pos.shape[1])])
        longer = dict(case, input_ids=torch.cat([case["input_ids"], new], 1))
        if mask is not None:
            longer["attention_mask"] = torch.cat([mask, torch.ones_like(new)], 1)
        full, _ = call_vlutils(get_rope_index, longer)
        length = case["input_ids"].shape[1]
        assert torch.equal(decode_position_ids(deltas, length, k), full[:, :, length:])
        assert torch.equal(decode_position_ids(deltas.flatten(), torch.tensor([length]), 1), full[:, :, length : length + 1])


def test_padding_gets_one_and_text_only_matches_cumsum():
    ids = torch.tensor([[PAD, PAD, 1, 2, 3], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos, deltas = get_rope_index(ids, attention_mask=mask)
    assert pos[:, 0].tolist() == [[1, 1, 0, 1, 2]] * 3 and pos[:, 1].tolist() == [[0, 1, 2, 3, 4]] * 3
    assert deltas.tolist() == [[-2], [0]]
    pos, deltas = get_rope_index(ids)
    assert pos[:, 0].tolist() == [[0, 1, 2, 3, 4]] * 3 and deltas.tolist() == [[0], [0]]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(image_grid_thw=[[1, 4, 4], [1, 2, 2]]), "image_grid_thw has 2"),
        (dict(image_grid_thw=[[1, 4, 6]]), "do not match the grids"),
        (dict(image_grid_thw=[[1, 4, 10]]), "runs past the end"),
        (dict(image_grid_thw=[[1, 4]]), "shape (N, 3)"),
        (dict(image_grid_thw=[[1, 0, 4]]), "positive"),
        (dict(image_grid_thw=[[1, 4, 4]], model_type="qwen4"), "model_type"),
        (dict(image_grid_thw=[[1, 4, 4]], attention_mask=[[1, 1, 2, 1, 1, 1, 1, 1]]), "only 0 and 1"),
        (dict(image_grid_thw=[[1, 4, 4]], attention_mask=[[1, 1]]), "attention_mask must have the shape"),
        (dict(video_grid_thw=[[1, 4, 4]]), "image_grid_thw has 0 row"),
        (dict(image_grid_thw=[[1, 4, 4]], video_grid_thw=[[1, 4, 4]]), "0 video block"),
        (dict(image_grid_thw=[[1, 4, 4]], spatial_merge_size=0), "spatial_merge_size"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, words):
    ids = torch.tensor([[1, VISION_START] + [IMAGE_PAD] * 4 + [VISION_END, 2]])
    with pytest.raises(InvalidOptionError, match=words.replace("(", r"\(").replace(")", r"\)")):
        get_rope_index(ids, **kwargs)


def test_bad_seconds_and_ids():
    ids = torch.tensor([[VISION_START] + [VIDEO_PAD] * 4 + [VISION_END]])
    for bad in ([-1.0], [float("nan")], []):
        with pytest.raises(InvalidOptionError, match="second_per_grid_ts"):
            get_rope_index(ids, video_grid_thw=[[4, 2, 2]], second_per_grid_ts=bad, model_type="qwen2_5_vl")
    with pytest.raises(VisionInputError, match="input_ids"):
        get_rope_index(torch.zeros(3, dtype=torch.long))
    with pytest.raises(VisionInputError, match="input_ids"):
        get_rope_index(torch.zeros(1, 3))
    with pytest.raises(InvalidOptionError, match="has 1 image and 0 video pads"):
        get_rope_index(torch.tensor([[IMAGE_PAD, 1]]), image_grid_thw=torch.zeros(0, 3, dtype=torch.long))
