"""Load a quantized checkpoint with transformers (5.23 + compressed-tensors) and record logits and greedy tokens.

Usage: ``PYTHONPATH=.refs/tf523 python tests/reference_quant_runner.py CHECKPOINT INPUTS OUT``

INPUTS is a ``torch.save``d dict of model inputs plus ``greedy`` (steps); OUT receives
``{"version", "logits", "tokens", "layer_types"}`` (the class of the first decoder q_proj
and of the first vision qkv, to show what transformers quantized).
"""

from __future__ import annotations

import sys

import torch


def main(checkpoint: str, inputs_path: str, out_path: str) -> None:
    import transformers

    model = transformers.AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    inp = torch.load(inputs_path, weights_only=False)
    steps = inp.pop("greedy")
    with torch.no_grad():
        logits = model(**inp).logits
        model.generation_config.eos_token_id = None
        tokens = model.generate(**inp, do_sample=False, max_new_tokens=steps, pad_token_id=0)
    inner = model.model
    types = [type(inner.language_model.layers[0].self_attn.q_proj).__name__,
             type(inner.visual.blocks[0].attn.qkv).__name__]
    torch.save({"version": transformers.__version__, "logits": logits,
                "tokens": tokens[:, inp["input_ids"].shape[1]:], "layer_types": types}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
