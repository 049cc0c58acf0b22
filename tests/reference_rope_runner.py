"""Run transformers' own ``get_rope_index`` on a file of cases (used in a subprocess).

Usage: ``PYTHONPATH=.refs/tf451 python tests/reference_rope_runner.py CASES OUT``

Whichever transformers is importable is used (4.51 from ``.refs/tf451``, 4.57 from the
venv, 5.x from ``.refs/tf523``). CASES is a ``torch.save``d list of dicts with
``model_type``, ``input_ids``, ``attention_mask``, ``image_grid_thw``, ``video_grid_thw``,
``second_per_grid_ts``, ``spatial_merge_size``, ``tokens_per_second`` and the three token
ids. OUT receives a list of ``(position_ids, deltas)`` or ``{"error": str}`` per case, plus
the transformers version, as ``{"version": str, "results": list}``.

The method is called unbound with a ``SimpleNamespace`` ``self`` holding just the config
attributes it reads, so no model is built.
"""

from __future__ import annotations

import functools
import sys
import types

import torch


def _reference_class(model_type: str, major_minor: tuple[int, int]):
    if model_type == "qwen2_vl":
        from transformers.models.qwen2_vl import modeling_qwen2_vl as m

        return m.Qwen2VLModel if major_minor >= (4, 52) else m.Qwen2VLForConditionalGeneration
    if model_type == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as m

        return m.Qwen2_5_VLModel if major_minor >= (4, 52) else m.Qwen2_5_VLForConditionalGeneration
    if model_type == "qwen3_vl":
        from transformers.models.qwen3_vl import modeling_qwen3_vl as m

        return m.Qwen3VLModel
    if model_type == "qwen3_vl_moe":
        from transformers.models.qwen3_vl_moe import modeling_qwen3_vl_moe as m

        return m.Qwen3VLMoeModel
    if model_type == "qwen3_5":
        from transformers.models.qwen3_5 import modeling_qwen3_5 as m

        return m.Qwen3_5Model
    if model_type == "qwen3_5_moe":
        from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as m

        return m.Qwen3_5MoeModel
    raise ValueError(model_type)


def _fake_self(cls, case: dict) -> types.SimpleNamespace:
    vision = types.SimpleNamespace(
        spatial_merge_size=case["spatial_merge_size"], tokens_per_second=case["tokens_per_second"]
    )
    config = types.SimpleNamespace(
        vision_config=vision,
        image_token_id=case["image_token_id"],
        video_token_id=case["video_token_id"],
        vision_start_token_id=case["vision_start_token_id"],
    )
    me = types.SimpleNamespace(config=config)
    if hasattr(cls, "get_vision_position_ids"):  # transformers 5.x helper used by get_rope_index
        me.get_vision_position_ids = functools.partial(cls.get_vision_position_ids, me)
    return me


def mm_token_type_ids(case: dict) -> torch.Tensor:
    """transformers 5.x's extra input: 1 for image pads, 2 for video pads, 0 otherwise."""
    ids = case["input_ids"]
    types_ = torch.zeros_like(ids, dtype=torch.int32)
    types_[ids == case["image_token_id"]] = 1
    types_[ids == case["video_token_id"]] = 2
    return types_


def run_case(case: dict, major_minor: tuple[int, int]):
    cls = _reference_class(case["model_type"], major_minor)
    me = _fake_self(cls, case)
    kwargs = dict(
        input_ids=case["input_ids"],
        image_grid_thw=case["image_grid_thw"],
        video_grid_thw=case["video_grid_thw"],
        attention_mask=case["attention_mask"],
    )
    if case["model_type"] == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = case["second_per_grid_ts"]
    if major_minor >= (5, 0):
        kwargs["mm_token_type_ids"] = mm_token_type_ids(case)
    if case["video_grid_thw"] is not None:  # Qwen3-VL writes into a copy, but be safe
        kwargs["video_grid_thw"] = case["video_grid_thw"].clone()
    pos, deltas = cls.get_rope_index(me, **kwargs)
    return pos.contiguous(), deltas


def main(cases_path: str, out_path: str) -> None:
    import transformers

    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    cases = torch.load(cases_path, weights_only=False)
    results = []
    for case in cases:
        try:
            results.append(run_case(case, major_minor))
        except Exception as exc:  # reported back; the test decides whether that is expected
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    torch.save({"version": transformers.__version__, "results": results}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
