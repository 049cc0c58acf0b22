"""Load a Hugging Face checkpoint directory of any supported family into :class:`VLModel`.

Accepted: ``model.safetensors`` or shards listed in ``model.safetensors.index.json``;
tensor names as in the released checkpoints (``visual.*``, ``model.*``, ``lm_head.*``)
or as transformers 5.x writes them (``model.visual.*``, ``model.language_model.*``),
mapped through the family's table in ``vlmodel.weights``; tied embeddings with no
``lm_head.weight`` in the file.  Any tensor left over, missing, or of the wrong shape is
an error that lists them all (by their checkpoint names).

Quantized checkpoints (a ``quantization_config`` in config.json: GPTQ, AWQ,
compressed-tensors) load their quantized linear layers packed, see ``vlmodel.quant``.
"""

from __future__ import annotations

import json
import logging
import os

import torch

from torch import nn

from vlutils.clitext import install_hint

from .config import ModelConfig
from .model import VLModel
from .quant import install as install_quantized
from .quant import read_format
from .qwen_vl import QwenVLModel
from .weights import canonical_name, checkpoint_name, fuse_experts, split_fused_qkv, unused

log = logging.getLogger(__name__)

_SHOW = 20  # names listed per error before "... and N more"


class CheckpointError(ValueError):
    """The checkpoint files cannot be read or do not fit the model described by config.json."""


def _listing(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:_SHOW])
    return shown + (f", ... and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def weight_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint directory, sharded or not."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as fh:
                weight_map = json.load(fh)["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"cannot read {index}: {exc}") from exc
        files = [os.path.join(path, f) for f in sorted(set(weight_map.values()))]
    else:
        files = [os.path.join(path, "model.safetensors")]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise CheckpointError(f"checkpoint {path}: weight files not found: {_listing(missing)}")
    return files


def read_state_dict(path: str, model_type: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, keyed by our module names (``vlmodel.weights``)."""
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"loading checkpoints needs the 'safetensors' package: {install_hint('model')}") from exc
    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        try:
            part = load_file(file)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {file}: {exc}") from exc
        for name, tensor in part.items():
            if not unused(name, model_type):
                tensors[canonical_name(name, model_type)] = tensor
    return tensors


def build_model(config: ModelConfig) -> nn.Module:
    """The model for ``config``: :class:`QwenVLModel` (ViT + Resampler, Qwen-VL) or :class:`VLModel`."""
    return QwenVLModel(config) if config.vision_kind == "resampler" else VLModel(config)


def from_pretrained(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> VLModel | QwenVLModel:
    """Build the model described by ``path/config.json`` and load its weights.

    ``dtype=None`` keeps the dtype stored in the files; ``device=None`` means CPU.
    The model is returned in eval mode.
    """
    path = os.fspath(path)
    config = ModelConfig.from_file(path)
    quant_format = read_format(config.quantization)
    tensors = read_state_dict(path, config.model_type)
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = build_model(config)
    try:
        tensors = split_fused_qkv(tensors)  # Qwen-VL's c_attn, float or quantized
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    target = torch.device(device) if device is not None else torch.device("cpu")
    quantized: list[str] = []
    if quant_format is not None:  # packed layers are built now, from their own tensors (popped from `tensors`)
        quantized = install_quantized(model, tensors, quant_format, device=target, dtype=dtype,
                                      display=lambda n: checkpoint_name(n, config.model_type))
    inside = tuple(name + "." for name in quantized)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(inside)}
    try:
        tensors = fuse_experts(tensors, {k: v.shape for k, v in expected.items()})
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    # checkpoint names, once each (Qwen-VL's q/k/v_proj all come from one c_attn)
    show = lambda names: sorted({checkpoint_name(n, config.model_type) for n in names})  # noqa: E731
    tied = config.text.tie_word_embeddings
    if tied:
        expected.pop("lm_head.weight")
        if tensors.pop("lm_head.weight", None) is not None:
            log.info("tied embeddings: ignoring lm_head.weight stored in %s", path)
    unknown = [k for k in tensors if k not in expected]
    missing = [k for k in expected if k not in tensors]
    if unknown or missing:
        parts = [f"checkpoint {path} does not match its config ({config.model_type})"]
        if missing:
            parts.append(f"missing {len(show(missing))} tensors: {_listing(show(missing))}")
        if unknown:
            parts.append(f"unknown {len(show(unknown))} tensors: {_listing(show(unknown))}")
        raise CheckpointError("; ".join(parts))
    wrong = [f"{checkpoint_name(k, config.model_type)} {tuple(tensors[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if tensors[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"checkpoint {path}: tensors of the wrong shape: {_listing(wrong)}")
    state = {k: t.to(device=target, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype) for k, t in tensors.items()}
    model.load_state_dict(state, strict=not tied and not quantized, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) > 1:
        raise CheckpointError(f"checkpoint {path} mixes dtypes {sorted(map(str, dtypes))}; pass dtype=")
    return model.eval()
