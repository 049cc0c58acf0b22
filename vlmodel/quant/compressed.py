"""compressed-tensors ``pack-quantized`` checkpoints, as llm-compressor writes them
(``quant_method: "compressed-tensors"``; integer weights only, e.g. W4A16).

Per quantized linear (``out`` x ``in``, ``bits`` in {4, 8}, ``groups = in / group_size``,
or one group for the ``channel`` strategy)::

    weight_packed      int32 (out, ceil(in * bits / 32))  signed codes + 2**(bits-1), packed along the input axis
    weight_scale       float (out, groups)
    weight_zero_point  int32 (ceil(out * bits / 32), groups)  asymmetric only; signed, packed along the output axis
    weight_shape       int   (2,)                           [out, in]
    weight_g_idx       int32 (in,)                          optional (act-order "group")

    weight[o, i] = (signed_code[o, i] - signed_zero[o, g]) * scale[o, g]

Codes and zero points are stored with the same offset (``2**(bits-1)``), so the unsigned
stored values give the same difference; symmetric schemes have zero points of 0 (stored 8).
Which scheme a layer uses comes from ``config_groups`` (its ``targets``: a class name
such as ``Linear``, a layer name, or ``re:`` + a regular expression).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..config import ConfigError
from .base import check_group_index, expect_dtype, expect_shape, group_count, require
from .linear import UnpackedWeight
from .packing import unpack_int32

BITS = (4, 8)
STRATEGIES = ("group", "channel")


@dataclass(frozen=True)
class Scheme:
    targets: tuple[str, ...]
    bits: int
    strategy: str
    group_size: int
    symmetric: bool


def _scheme(name: str, group: dict) -> Scheme:
    where = f"quantization_config (compressed-tensors) config_groups.{name}"
    fmt = group.get("format")
    if fmt not in (None, "pack-quantized"):
        raise ConfigError(f"{where}: format {fmt!r} is not supported (only 'pack-quantized')")
    weights = group.get("weights") or {}
    if group.get("input_activations") or group.get("output_activations"):
        raise ConfigError(f"{where}: activation quantization is not supported (weight-only schemes such as W4A16)")
    if weights.get("type", "int") != "int":
        raise ConfigError(f"{where}: weights type {weights.get('type')!r} is not supported (only 'int')")
    bits = weights.get("num_bits")
    if bits not in BITS:
        raise ConfigError(f"{where}: num_bits={bits!r} is not allowed; vlmodel reads {BITS}")
    strategy = weights.get("strategy")
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}: strategy {strategy!r} is not supported {STRATEGIES}")
    size = int(weights.get("group_size") or 0) if strategy == "group" else -1
    if strategy == "group" and size <= 0:
        raise ConfigError(f"{where}: the group strategy needs a positive group_size")
    return Scheme(tuple(group.get("targets") or ()), bits, strategy, size, bool(weights.get("symmetric", True)))


def _spellings(name: str) -> tuple[str, ...]:
    """A layer's checkpoint name and its transformers 5.x in-memory name."""
    if name.startswith("model."):
        return name, "model.language_model." + name[len("model."):]
    if name.startswith("visual."):
        return name, "model." + name
    return (name,)


def _matches(target: str, names: tuple[str, ...]) -> bool:
    if target == "Linear":
        return True
    if target.startswith("re:"):
        return any(re.match(target[3:], n) for n in names)
    return any(n == target or n.endswith("." + target) for n in names)


@dataclass
class CompressedTensors:
    schemes: tuple[Scheme, ...]
    method: str = "compressed-tensors"
    marker: str = "weight_packed"
    suffixes: tuple[str, ...] = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape",
                                 "weight_g_idx", "bias")

    @classmethod
    def from_config(cls, raw: dict) -> "CompressedTensors":
        fmt = raw.get("format")
        if fmt not in (None, "pack-quantized", "mixed-precision"):
            raise ConfigError(f"quantization_config (compressed-tensors): format {fmt!r} is not supported "
                              "(only 'pack-quantized')")
        groups = raw.get("config_groups") or {}
        if not groups:
            raise ConfigError("quantization_config (compressed-tensors): no config_groups")
        return cls(schemes=tuple(_scheme(k, v) for k, v in groups.items()))

    def scheme_for(self, name: str) -> Scheme:
        """The scheme whose targets name this layer (checkpoint or transformers 5.x spelling)."""
        names = _spellings(name)
        found = [s for s in self.schemes if any(_matches(t, names) for t in s.targets)]
        if not found:
            raise ConfigError(f"{name}: quantized in the checkpoint but no config_groups entry targets it")
        return found[0]

    def unpack(self, name: str, tensors: dict[str, torch.Tensor], out_features: int,
               in_features: int) -> UnpackedWeight:
        scheme = self.scheme_for(name)
        bits = scheme.bits
        group = in_features if scheme.group_size == -1 else scheme.group_size
        groups = group_count(in_features, group)
        packed = require(name, tensors, "weight_packed")
        scale = require(name, tensors, "weight_scale")
        expect_dtype(name, "weight_packed", packed, (torch.int32,))
        expect_shape(name, "weight_packed", packed, (out_features, -(-in_features * bits // 32)),
                     f"{out_features} outputs, {in_features} inputs at {bits} bits")
        expect_shape(name, "weight_scale", scale, (out_features, groups),
                     f"{scheme.strategy} strategy: {groups} group(s) of {group}")
        if "weight_shape" in tensors:
            shape = tuple(int(v) for v in tensors["weight_shape"].reshape(-1).tolist())
            if shape != (out_features, in_features):
                raise ConfigError(f"{name}.weight_shape: {list(shape)} does not match the config: "
                                  f"expected {[out_features, in_features]}")
        offset = 1 << (bits - 1)
        codes = _unpack_padded(packed, bits, 1, in_features)
        if scheme.symmetric:
            zeros = torch.full((out_features, groups), offset, dtype=torch.int32)
        else:
            zp = require(name, tensors, "weight_zero_point", " (asymmetric scheme)")
            expect_dtype(name, "weight_zero_point", zp, (torch.int32,))
            expect_shape(name, "weight_zero_point", zp, (-(-out_features * bits // 32), groups),
                         f"packed along {out_features} outputs at {bits} bits, {groups} group(s)")
            zeros = _unpack_padded(zp, bits, 0, out_features)
        index = None
        if "weight_g_idx" in tensors:
            index = check_group_index(name, tensors["weight_g_idx"], in_features, groups, "weight_g_idx")
        bias = tensors.get("bias")
        if bias is not None:
            expect_shape(name, "bias", bias, (out_features,), "one per output")
        return UnpackedWeight(codes=codes.contiguous(), scales=scale.contiguous(), zeros=zeros.contiguous(),
                              bits=bits, group_size=group, group_index=index, bias=bias)


def _unpack_padded(packed: torch.Tensor, bits: int, dim: int, length: int) -> torch.Tensor:
    """Unpack along ``dim`` and drop the zero codes that fill the last word."""
    return unpack_int32(packed, bits, dim).narrow(dim, 0, length)
