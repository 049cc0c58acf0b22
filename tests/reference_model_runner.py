"""Build tiny random transformers models, save them, and record their logits and greedy tokens.

Usage: ``PYTHONPATH=.refs/tf523 python tests/reference_model_runner.py CASES OUT``
(or with the venv's transformers for 4.57).

CASES is a ``torch.save``d dict ``{"models": [...], "inputs": {...}}``.  Each model has a
``name``, ``family`` (a model type), ``text`` / ``vision`` / ``top`` config kwargs, ``seed``,
``dir`` (where ``save_pretrained`` writes it), ``shard`` (a max shard size or None), and the
names of the inputs to run.  Each input is a dict of tensors (``input_ids``,
``attention_mask``, pixels, grids, ``mm_token_type_ids``) plus ``greedy`` (steps or 0).
All parameters are re-drawn with std 0.2 (norm weights around 1) so that a wrong detail
moves the logits far beyond the tolerance.
OUT receives ``{"version": str, "results": {model name: {input name: {"logits", "tokens"}}}}``.
"""

from __future__ import annotations

import sys

import torch

CLASSES = {
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": ("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"),
    "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration"),
    "qwen3_5_moe": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration"),
}


def build(spec: dict):
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[spec["family"]])
    config = config_cls(text_config=dict(spec["text"]), vision_config=dict(spec["vision"]), **spec["top"])
    for key, value in spec["top"].items():
        setattr(config, key, value)
    torch.manual_seed(spec["seed"])
    model = model_cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight") and p.ndim == 1 and not bool((p == 0).all()):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # a norm scale (zero-centred ones start at 0)
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


# parameters whose gradients are recorded for inputs that carry labels
GRAD_KEYS = ("patch_embed.proj.weight", "pos_embed.weight", "deepstack_merger_list.0.linear_fc1.weight",
             "blocks.0.attn.qkv.weight", "layers.0.self_attn.q_norm.weight", "layers.0.self_attn.q_proj.weight",
             "experts.gate_up_proj", "mlp.gate.weight", "linear_attn.in_proj_qkv.weight", "linear_attn.A_log",
             "embed_tokens.weight", "lm_head.weight")


def run(model, inp: dict) -> dict:
    kw = {k: v for k, v in inp.items() if k not in ("greedy", "labels") and v is not None}
    out = {}
    if inp.get("labels") is not None:
        model.zero_grad()
        loss = model(**kw, labels=inp["labels"]).loss
        loss.backward()
        out["loss"] = loss.detach()
        out["grads"] = {n: p.grad.clone() for n, p in model.named_parameters()
                        if p.grad is not None and n.endswith(GRAD_KEYS)}
    with torch.no_grad():
        out["logits"] = model(**kw).logits
        if inp.get("greedy"):
            new = model.generate(**kw, do_sample=False, max_new_tokens=inp["greedy"], min_new_tokens=inp["greedy"],
                                 eos_token_id=None, pad_token_id=0)
            out["tokens"] = new[:, kw["input_ids"].shape[1]:]
    return out


def main(cases_path: str, out_path: str) -> None:
    import transformers

    data = torch.load(cases_path, weights_only=False)
    results = {}
    for spec in data["models"]:
        model = build(spec)
        if spec.get("tie"):
            model.tie_weights()
        kwargs = {"max_shard_size": spec["shard"]} if spec.get("shard") else {}
        model.save_pretrained(spec["dir"], **kwargs)
        results[spec["name"]] = {name: run(model, data["inputs"][name]) for name in spec["inputs"]}
    torch.save({"version": transformers.__version__, "results": results}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
