"""Generate ``fixtures/tiny-qwen2-vl/``: a tiny random Qwen2-VL checkpoint for the docs' examples.

    .venv/bin/python scripts/make_docs_fixtures.py

Written by transformers' own ``save_pretrained`` (the hub layout a real checkpoint has:
``config.json``, ``model.safetensors``, ``generation_config.json``) plus a ``tokenizer.json``
(a small byte-level BPE with the Qwen special tokens at ids inside the 512-token vocabulary).
The weights are random: answers are gibberish, but every step a real checkpoint goes through
(loading, vision tower, M-RoPE, cached decoding, training loss) runs in well under a second,
so the README's and the docs' examples can run in the test suite. Deterministic (seeded).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "fixtures" / "tiny-qwen2-vl"
sys.path.insert(0, str(ROOT))

from tests._tiny_checkpoints import EOS, hf_model  # noqa: E402
from tests._tiny_tokenizer import SMALL_SPECIAL, tiny_qwen_tokenizer  # noqa: E402


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model = hf_model("qwen2_vl", seed=0, tie=True)
    model.generation_config.eos_token_id = [EOS, SMALL_SPECIAL["<|im_end|>"]]
    model.save_pretrained(OUT, safe_serialization=True)
    tiny_qwen_tokenizer(SMALL_SPECIAL).save(str(OUT / "tokenizer.json"))
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {OUT.relative_to(ROOT)} ({params} parameters, torch {torch.__version__})")


if __name__ == "__main__":
    main()
