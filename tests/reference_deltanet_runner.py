"""Run transformers 5.23's own Qwen3.5 gated-DeltaNet layer on random cases (used in a subprocess).

Usage: ``PYTHONPATH=.refs/tf523 python tests/reference_deltanet_runner.py CASES OUT``

CASES is a ``torch.save``d list of dicts: ``dims`` (hidden, k_heads, v_heads, k_dim, v_dim,
kernel), ``seed``, ``batch``, ``prompt`` (prefill length), ``steps`` (decode steps after
it) and optionally ``mask`` (B, prompt) with zeros on the left for padding. For each case
the layer gets random weights (``A_log``/``dt_bias`` random too) and random inputs, and
OUT receives its state dict, the inputs and: the prefill output without a cache
(``full``), then the same prompt with a cache followed by ``steps`` one-token steps
(``prefill``, ``decode``).
"""

from __future__ import annotations

import sys

import torch


def run_case(case: dict) -> dict:
    from transformers import DynamicCache
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    hidden, kh, vh, kd, vd, kernel = case["dims"]
    cfg = Qwen3_5TextConfig(
        hidden_size=hidden, linear_num_key_heads=kh, linear_num_value_heads=vh, linear_key_head_dim=kd,
        linear_value_head_dim=vd, linear_conv_kernel_dim=kernel, num_hidden_layers=1,
        layer_types=["linear_attention"], num_attention_heads=2, num_key_value_heads=1, head_dim=8, vocab_size=32,
    )
    torch.manual_seed(case["seed"])
    layer = Qwen3_5GatedDeltaNet(cfg, 0).eval()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name == "A_log":
                p.copy_(torch.empty_like(p).uniform_(0.01, 4).log())
            elif name == "dt_bias":
                p.copy_(torch.randn_like(p))
            elif name == "norm.weight":
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.3)
    b, n, steps = case["batch"], case["prompt"], case["steps"]
    x = torch.randn(b, n + steps, hidden)
    mask = case.get("mask")
    full_mask = None if mask is None else torch.cat([mask, torch.ones(b, steps, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        full = layer(x[:, :n], attention_mask=mask)
        cache = DynamicCache(config=cfg)
        prefill = layer(x[:, :n], cache_params=cache, attention_mask=mask)
        decode = [layer(x[:, n + i : n + i + 1], cache_params=cache) for i in range(steps)]
    return {
        "state_dict": {k: v.clone() for k, v in layer.state_dict().items()},
        "x": x, "mask": full_mask, "full": full, "prefill": prefill,
        "decode": torch.cat(decode, dim=1) if decode else x[:, :0],
    }


def main() -> None:
    import transformers

    cases = torch.load(sys.argv[1], weights_only=False)
    torch.save({"version": transformers.__version__, "results": [run_case(c) for c in cases]}, sys.argv[2])


if __name__ == "__main__":
    main()
