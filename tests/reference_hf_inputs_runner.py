"""Run transformers' Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors on vlutils' fetched media
through ``vlutils.processor_inputs`` (in a subprocess, so any transformers version can be used).

Usage: ``PYTHONPATH=.refs/tf523 python tests/reference_hf_inputs_runner.py CASES OUT``

CASES is a ``torch.save``d dict: ``tokenizer_json`` and ``cases``, each with ``model_type``,
``texts`` (formatted prompts, one pad per item), ``media`` (an index into ``media``: ``images``,
HWC uint8 arrays of the fetched, already resized images, and ``videos``, uint8 tensors or
``(tensor, metadata)`` pairs) and ``video_kwargs``. The processors are built as a new user would: the version's default image and
video processors with the model's preset (patch size, mean/std), and a tokenizer from the JSON.
OUT receives ``{"version": str, "kwargs_keys": [...], "results": [dict, ...]}``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # vlutils from this checkout; transformers from PYTHONPATH first


def _tokenizer(tokenizer_json: str):
    import transformers

    cls = getattr(transformers, "Qwen2TokenizerFast", None) or transformers.Qwen2Tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(tokenizer_json)
        return cls(tokenizer_file=str(path), padding_side="left")


def _processors(tokenizer) -> dict:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    clip = Qwen2VLImageProcessor()  # Qwen2-VL defaults: patch 14, CLIP mean/std, 3136..12845056 pixels
    qwen3_image = Qwen2VLImageProcessor(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                        min_pixels=65536, max_pixels=16777216)  # Qwen3-VL's preprocessor config
    return {
        "qwen2_vl": Qwen2VLProcessor(image_processor=clip, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()),
        "qwen2_5_vl": Qwen2_5_VLProcessor(image_processor=clip, tokenizer=tokenizer,
                                          video_processor=Qwen2VLVideoProcessor()),
        "qwen3_vl": Qwen3VLProcessor(image_processor=qwen3_image, tokenizer=tokenizer,
                                     video_processor=Qwen3VLVideoProcessor()),
    }


_WRAPPED_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


def main(cases_path: str, out_path: str) -> None:
    import transformers
    from PIL import Image

    import vlutils

    data = torch.load(cases_path, weights_only=False)
    processors = _processors(_tokenizer(data["tokenizer_json"]))
    results, keys = [], []
    for case in data["cases"]:
        media = data["media"][case["media"]]
        images = [Image.fromarray(a) for a in media["images"]] or None
        # as process_vision_info returns them: float32 (shipped as uint8, the same whole values)
        videos = [(v[0].float(), v[1]) if isinstance(v, tuple) else v.float() for v in media["videos"]] or None
        kwargs = vlutils.processor_inputs(images, videos, case["video_kwargs"])
        keys.append(sorted(kwargs))
        processor = processors[case["model_type"]]
        texts = case["texts"]
        raw_ids = None
        if case["model_type"] == "qwen3_vl" and int(transformers.__version__.split(".")[0]) >= 5:
            # 5.x's Qwen3-VL processor wraps each frame in vision_start/end itself and replaces only
            # the bare video pad, so the chat template's <|vision_start|><|video_pad|><|vision_end|>
            # comes out nested. Kept (raw_input_ids) to check its timestamps; compared on the bare pad.
            raw_ids = processor(text=texts, padding=True, return_tensors="pt", **kwargs)["input_ids"]
            kwargs = vlutils.processor_inputs(images, videos, case["video_kwargs"])
            texts = [t.replace(_WRAPPED_VIDEO, "<|video_pad|>") for t in texts]
        out = processor(text=texts, padding=True, return_tensors="pt", **kwargs)
        result = {k: v for k, v in out.items() if k != "video_metadata"}
        if raw_ids is not None:
            result["raw_input_ids"] = raw_ids
        if "second_per_grid_ts" in result:
            result["second_per_grid_ts"] = torch.as_tensor(result["second_per_grid_ts"], dtype=torch.float64)
        results.append(result)
    torch.save({"version": transformers.__version__, "kwargs_keys": keys, "results": results}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
