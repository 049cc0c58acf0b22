"""Quantized checkpoints (GPTQ, AWQ, compressed-tensors ``pack-quantized``) with packed weights.

``vlmodel.from_pretrained`` calls :func:`read_format` on ``config.json``'s
``quantization_config`` and :func:`install` on the model it builds: every linear layer
whose checkpoint tensors carry the format's marker (``qweight`` for GPTQ and AWQ,
``weight_packed`` for compressed-tensors) becomes a :class:`QuantLinear`; everything else
(the vision tower, ``lm_head``, the config's ignore lists, whichever spelling they use)
loads as float from its ``weight`` as usual.  Which layers are quantized is read from the
tensors, not from the ignore lists, so any ``nn.Linear`` named in a checkpoint works.

Modules, one job each: ``packing`` (bits in int32 words and torch's CPU int4 layout),
``gptq`` / ``awq`` / ``compressed`` (one format each: config and tensors -> integer codes,
scales, zero points), ``linear`` (the packed layer and its matmul).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from ..config import ConfigError
from .awq import AWQ
from .base import Format
from .compressed import CompressedTensors
from .gptq import GPTQ
from .linear import QuantLinear, UnpackedWeight

__all__ = ["AWQ", "GPTQ", "CompressedTensors", "Format", "QuantLinear", "UnpackedWeight", "dequantize_model",
           "install", "quantized_layers", "read_format"]

log = logging.getLogger(__name__)

FORMATS: dict[str, Callable[[dict], Format]] = {
    "gptq": GPTQ.from_config,
    "awq": AWQ.from_config,
    "compressed-tensors": CompressedTensors.from_config,
}


def read_format(raw: dict | None) -> Format | None:
    """The format described by a ``quantization_config`` dict (None: a float checkpoint)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"config.json: quantization_config must be an object, got {type(raw).__name__}")
    method = raw.get("quant_method")
    if method not in FORMATS:
        raise ConfigError(f"config.json: quantization_config quant_method {method!r} is not supported; "
                          f"vlmodel reads {tuple(FORMATS)}")
    return FORMATS[method](raw)


def install(model: nn.Module, tensors: dict[str, torch.Tensor], fmt: Format, *,
            device: torch.device | str | None = None, dtype: torch.dtype | None = None,
            display: Callable[[str], str] = lambda name: name) -> list[str]:
    """Replace each linear layer quantized in ``tensors`` by a :class:`QuantLinear`.

    ``tensors`` are keyed by module names; the layers' tensors are removed from it.
    ``display`` turns a module name into its checkpoint spelling for messages.
    Returns the names of the replaced layers.
    """
    marker = "." + fmt.marker
    layers = sorted(name[: -len(marker)] for name in tensors if name.endswith(marker))
    for layer in layers:
        shown = display(layer)
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            raise ConfigError(f"{shown}.{fmt.marker}: the model has no layer {shown}") from None
        if not isinstance(module, nn.Linear) or isinstance(module, QuantLinear):
            raise ConfigError(f"{shown}.{fmt.marker}: {shown} is a {type(module).__name__}, not a linear layer")
        parts = {s: tensors.pop(f"{layer}.{s}") for s in fmt.suffixes if f"{layer}.{s}" in tensors}
        if "bias" in parts and module.bias is None:
            if bool(parts["bias"].any()):
                raise ConfigError(f"{shown}.bias: the config gives this layer no bias, but the checkpoint has "
                                  "a nonzero one")
            del parts["bias"]  # some exporters write zero biases for every quantized layer
        unpacked = fmt.unpack(shown, parts, module.out_features, module.in_features)
        if module.bias is not None and unpacked.bias is None:
            raise ConfigError(f"{shown}.bias: missing from the checkpoint")
        model.set_submodule(layer, QuantLinear(unpacked, device=device, bias_dtype=dtype))
    log.info("%d linear layers quantized (%s)", len(layers), fmt.method)
    return layers


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The model's packed layers by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every :class:`QuantLinear` (also inside peft wrappers) by a float ``nn.Linear``, in place.

    What LoRA merging needs: a float base to add ``B @ A`` to.  ``dtype`` defaults to the
    dtype of the model's float (unquantized) parameters.
    """
    layers = quantized_layers(model)
    if dtype is None:
        inside = tuple(name + "." for name in layers)
        dtype = next((p.dtype for n, p in model.named_parameters()
                      if p.is_floating_point() and not n.startswith(inside)), torch.float32)
    for name, layer in list(layers.items()):
        model.set_submodule(name, layer.to_linear(dtype))
    return model
