"""Run transformers' own Qwen2-VL / Qwen2.5-VL processor on a file of cases (in a subprocess).

Usage: ``PYTHONPATH=.refs/tf451 python tests/reference_processor_runner.py CASES OUT``

CASES is a ``torch.save``d dict: ``tokenizer_json`` (a tokenizer.json string) and ``cases``,
each with ``model_type``, ``texts`` (formatted prompts, one pad per item), ``images`` (HWC
uint8 arrays, turned into PIL images here), ``videos`` ((T, C, H, W) tensors) and ``fps``.
OUT receives ``{"version": str, "results": [dict of tensors, ...]}``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch


def main(cases_path: str, out_path: str) -> None:
    import transformers
    from PIL import Image
    from transformers import Qwen2_5_VLProcessor, Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor

    data = torch.load(cases_path, weights_only=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(data["tokenizer_json"])
        tokenizer = Qwen2TokenizerFast(tokenizer_file=str(path), padding_side="left")
    # A pixel budget wide enough that the processor keeps the already resized media as is.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 100_000)
    processors = {
        "qwen2_vl": Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer),
        "qwen2_5_vl": Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer),
    }
    results = []
    for case in data["cases"]:
        kwargs = {}
        if case["model_type"] == "qwen2_5_vl" and case["videos"]:
            kwargs["fps"] = case["fps"]
        out = processors[case["model_type"]](
            text=case["texts"],
            images=[Image.fromarray(a) for a in case["images"]] or None,
            videos=case["videos"] or None,
            padding=True,
            return_tensors="pt",
            **kwargs,
        )
        results.append({k: v for k, v in out.items()})
    torch.save({"version": transformers.__version__, "results": results}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
