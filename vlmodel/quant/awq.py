"""AWQ checkpoints as AutoAWQ's GEMM kernels store them (``quant_method: "awq"``, ``version: "gemm"``).

Per quantized linear (``out`` x ``in``, 4 bits, ``groups = in / group_size``)::

    qweight  int32 (in, out / 8)      codes packed along the output axis
    qzeros   int32 (groups, out / 8)  zero points, packed the same way
    scales   fp16  (groups, out)
    bias     fp16  (out,)             optional

    weight[o, i] = (code[i, o] - zero[i // group_size, o]) * scales[i // group_size, o]

Inside each int32 word the 8 codes are not in column order: AutoAWQ puts column
``8c + ORDER[j]`` in bits ``4j .. 4j + 3`` with ``ORDER = (0, 2, 4, 6, 1, 3, 5, 7)`` (the
order its GEMM kernel dequantizes in), so word position ``j`` is read back into column
``8c + ORDER[j]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from .base import expect_dtype, expect_shape, group_count, require
from .linear import UnpackedWeight
from .packing import unpack_int32

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # column (within a word's 8) stored at word position j


def reorder_columns(codes: torch.Tensor) -> torch.Tensor:
    """(rows, out) codes in AWQ word order -> in column order."""
    rows, out = codes.shape
    in_word_order = codes.reshape(rows, out // 8, 8)
    ordered = torch.empty_like(in_word_order)
    ordered[:, :, list(ORDER)] = in_word_order
    return ordered.reshape(rows, out)


@dataclass
class AWQ:
    group_size: int
    bits: int = 4
    method: str = "awq"
    marker: str = "qweight"
    suffixes: tuple[str, ...] = ("qweight", "qzeros", "scales", "bias")

    @classmethod
    def from_config(cls, raw: dict) -> "AWQ":
        bits = raw.get("bits", raw.get("w_bit"))
        if bits != 4:
            raise ConfigError(f"quantization_config (awq): bits={bits!r} is not allowed; AWQ GEMM stores 4 bits")
        version = str(raw.get("version", "gemm")).lower()
        if version != "gemm":
            raise ConfigError(f"quantization_config (awq): version {version!r} is not supported (only 'gemm')")
        if not raw.get("zero_point", True):
            raise ConfigError("quantization_config (awq): zero_point=false is not supported (AutoAWQ GEMM uses zeros)")
        group = int(raw.get("group_size", raw.get("q_group_size", 128)))
        if group <= 0:
            raise ConfigError(f"quantization_config (awq): group_size={group} must be positive")
        return cls(group_size=group)

    def unpack(self, name: str, tensors: dict[str, torch.Tensor], out_features: int,
               in_features: int) -> UnpackedWeight:
        groups = group_count(in_features, self.group_size)
        qweight = require(name, tensors, "qweight")
        qzeros = require(name, tensors, "qzeros")
        scales = require(name, tensors, "scales")
        for suffix in ("qweight", "qzeros"):
            expect_dtype(name, suffix, tensors[suffix], (torch.int32,))
        expect_shape(name, "qweight", qweight, (in_features, out_features // 8),
                     f"{in_features} inputs, {out_features} outputs at 4 bits")
        expect_shape(name, "qzeros", qzeros, (groups, out_features // 8),
                     f"{groups} groups of {self.group_size}, {out_features} outputs at 4 bits")
        expect_shape(name, "scales", scales, (groups, out_features), f"{groups} groups, {out_features} outputs")
        bias = tensors.get("bias")
        if bias is not None:
            expect_shape(name, "bias", bias, (out_features,), "one per output")
        codes = reorder_columns(unpack_int32(qweight, 4, dim=1)).t()
        zeros = reorder_columns(unpack_int32(qzeros, 4, dim=1)).t()
        return UnpackedWeight(codes=codes.contiguous(), scales=scales.t().contiguous(), zeros=zeros.contiguous(),
                              bits=4, group_size=self.group_size, bias=bias)
