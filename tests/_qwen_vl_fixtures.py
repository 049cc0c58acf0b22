"""The stored outputs of the original Qwen-VL-Chat input code (scripts/make_qwen_vl_input_fixtures.py)."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "qwen_vl_inputs"
VOCAB = FIXTURES / "tiny.tiktoken"
IMAGES = FIXTURES / "images"


@functools.lru_cache(maxsize=None)
def cases() -> dict:
    return json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def reference() -> dict:
    with gzip.open(FIXTURES / "reference.json.gz", "rt", encoding="utf-8") as handle:
        return json.load(handle)


@functools.lru_cache(maxsize=None)
def tokenizer():
    from vlutils.tiktoken_qwen import QwenTiktokenTokenizer

    return QwenTiktokenTokenizer.from_file(VOCAB)


def list_to_items(items: list[dict]) -> list[dict]:
    """A from_list_format list as vlutils content items."""
    out = []
    for item in items:
        if "image" in item:
            out.append({"type": "image", "image": item["image"]})
        elif "text" in item:
            out.append({"type": "text", "text": item["text"]})
        else:
            out.append({"type": "box", **item})
    return out
