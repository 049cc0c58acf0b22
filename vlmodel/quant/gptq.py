"""GPTQ checkpoints as AutoGPTQ / GPTQModel write them (``quant_method: "gptq"``).

Per quantized linear (``out`` x ``in``, ``bits`` in {4, 8}, ``groups = in / group_size``,
one group when ``group_size`` is -1)::

    qweight  int32 (in * bits / 32, out)   codes packed along the input axis, low bits first
    qzeros   int32 (groups, out * bits / 32) zero points packed along the output axis
    scales   fp16  (groups, out)
    g_idx    int32 (in,)                    group of each input column (act-order: desc_act)
    bias     fp16  (out,)                   optional

    weight[o, i] = (code[i, o] - zero[g_idx[i], o]) * scales[g_idx[i], o]

The historical "v1" format (AutoGPTQ, GPTQModel's ``checkpoint_format: "gptq"``, the
released Qwen2-VL GPTQ models) stores each zero point minus one, so the stored value is
read plus one (a zero point of 0 therefore cannot be stored: it reads back as 2**bits);
GPTQModel's ``"gptq_v2"`` stores them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from .base import check_group_index, expect_dtype, expect_shape, group_count, require
from .linear import UnpackedWeight
from .packing import unpack_int32

BITS = (4, 8)


@dataclass
class GPTQ:
    bits: int
    group_size: int  # -1: one group per row
    desc_act: bool
    sym: bool
    zero_offset: int  # 1 for the v1 format, 0 for gptq_v2
    method: str = "gptq"
    marker: str = "qweight"
    suffixes: tuple[str, ...] = ("qweight", "qzeros", "scales", "g_idx", "bias")

    @classmethod
    def from_config(cls, raw: dict) -> "GPTQ":
        bits = raw.get("bits")
        if bits not in BITS:
            raise ConfigError(f"quantization_config (gptq): bits={bits!r} is not allowed; vlmodel reads {BITS}")
        group = int(raw.get("group_size", -1))
        if group != -1 and group <= 0:
            raise ConfigError(f"quantization_config (gptq): group_size={group} must be positive or -1")
        fmt = raw.get("checkpoint_format", raw.get("format", "gptq")) or "gptq"
        if fmt not in ("gptq", "gptq_v2"):
            raise ConfigError(f"quantization_config (gptq): checkpoint_format {fmt!r} is not 'gptq' or 'gptq_v2'")
        return cls(bits=bits, group_size=group, desc_act=bool(raw.get("desc_act", False)),
                   sym=bool(raw.get("sym", True)), zero_offset=1 if fmt == "gptq" else 0)

    def unpack(self, name: str, tensors: dict[str, torch.Tensor], out_features: int,
               in_features: int) -> UnpackedWeight:
        per_word = 32 // self.bits
        group = in_features if self.group_size == -1 else self.group_size
        groups = group_count(in_features, group)
        qweight = require(name, tensors, "qweight")
        qzeros = require(name, tensors, "qzeros")
        scales = require(name, tensors, "scales")
        for suffix in ("qweight", "qzeros"):
            expect_dtype(name, suffix, tensors[suffix], (torch.int32,))
        expect_shape(name, "qweight", qweight, (in_features // per_word, out_features),
                     f"{in_features} inputs at {self.bits} bits, {out_features} outputs")
        expect_shape(name, "qzeros", qzeros, (groups, out_features // per_word),
                     f"{groups} groups of {group}, {out_features} outputs at {self.bits} bits")
        expect_shape(name, "scales", scales, (groups, out_features), f"{groups} groups, {out_features} outputs")
        if "g_idx" in tensors:
            index = check_group_index(name, tensors["g_idx"], in_features, groups)
        elif self.desc_act:
            raise ConfigError(f"{name}.g_idx: missing from the checkpoint, but desc_act=true needs it "
                              "(act-order groups are not k // group_size)")
        else:
            index = None
        bias = tensors.get("bias")
        if bias is not None:
            expect_shape(name, "bias", bias, (out_features,), "one per output")
        codes = unpack_int32(qweight, self.bits, dim=0).t()  # (out, in)
        zeros = unpack_int32(qzeros, self.bits, dim=1).t() + self.zero_offset  # (out, groups)
        return UnpackedWeight(codes=codes.contiguous(), scales=scales.t().contiguous(), zeros=zeros.contiguous(),
                              bits=self.bits, group_size=group, group_index=index, bias=bias)
