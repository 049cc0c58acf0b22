"""A linear layer whose weight stays packed (4 or 8 bits) and is dequantized inside the matmul.

Every format (``vlmodel.quant.gptq``, ``awq``, ``compressed``) unpacks its tensors to one
neutral description, :class:`UnpackedWeight`::

    weight[n, k] = (codes[n, k] - zeros[n, group(k)]) * scales[n, group(k)]

with unsigned integer ``codes``, integer ``zeros`` and float ``scales``.
:class:`QuantLinear` then stores it compactly, in one of three layouts:

* ``"cpu_int4"``: 4-bit codes in the layout of torch's own CPU kernel
  ``aten._weight_int4pack_mm_for_cpu``, which multiplies bfloat16 inputs with the packed
  weight directly (it takes ``(q - 8) * scale + offset`` per group; ``offset = (8 - zero) *
  scale`` is rebuilt from the compact scales and zeros on every call).  Its float32 and
  float16 paths are many times slower than unpacking the layer and calling ``F.linear``
  (measured: 1.4 ms vs 1.0 ms for one token, 136 ms vs 3 ms for 98 tokens, 1536 x 512), so
  other dtypes and devices dequantize per call, exactly;
* ``"nibbles"``: 4-bit codes, two per byte, dequantized per call (other devices, group sizes
  the kernel lacks, irregular act-order groups);
* ``"bytes"``: 8-bit codes, one per byte, dequantized per call.

Act-order checkpoints (GPTQ ``desc_act``) give each input column its own group through
``g_idx``; when every group still has ``group_size`` columns the columns are sorted by group
once at load (``perm``) and each input is permuted the same way, so the fast kernel applies.

Resident memory is the packed codes plus scales, zeros and bias: at 4 bits and group 32
about 0.30 of the bfloat16 layer (float16 scales); nothing full-precision is kept between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .packing import cpu_int4_layout_ok, pack_cpu_int4, pack_nibbles, unpack_cpu_int4, unpack_nibbles

KERNEL_GROUPS = (256, 128, 64, 32)  # group sizes torch's CPU int4 kernel accepts


@dataclass
class UnpackedWeight:
    """One layer's quantized weight, format-neutral (see the module docstring)."""

    codes: torch.Tensor  # (out, in) integers in [0, 2**bits)
    scales: torch.Tensor  # (out, groups) float, as stored
    zeros: torch.Tensor  # (out, groups) integers (may be 2**bits: GPTQ v1 stores zero - 1)
    bits: int
    group_size: int  # columns per group (the whole row for per-channel scales)
    group_index: torch.Tensor | None = None  # (in,) group of each column (act-order), None: k // group_size
    bias: torch.Tensor | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) float weight, computed in float32 (exact for fp16/bf16 scales) then cast."""
        groups = self.columns_group()
        w = (self.codes.float() - self.zeros.float()[:, groups]) * self.scales.float()[:, groups]
        return w.to(dtype)

    def columns_group(self) -> torch.Tensor:
        if self.group_index is not None:
            return self.group_index.long()
        return torch.arange(self.codes.shape[1], device=self.codes.device) // self.group_size


class QuantLinear(nn.Linear):
    """``y = x W^T + b`` with ``W`` kept packed; built from an :class:`UnpackedWeight`.

    A subclass of ``nn.Linear`` (without a float weight) so that code which looks for
    linear layers (peft's LoRA) finds it; ``qweight`` holds the packed codes.  Use
    :meth:`dequantize` (or ``vlmodel.quant.dequantize_model``) for a float weight.
    """

    def __init__(self, unpacked: UnpackedWeight, device: torch.device | str | None = None,
                 bias_dtype: torch.dtype | None = None, use_kernel: bool = True):
        nn.Module.__init__(self)
        device = torch.device(device if device is not None else "cpu")
        codes = unpacked.codes
        self.out_features, self.in_features = codes.shape
        self.bits = unpacked.bits
        self.group_size = unpacked.group_size
        group_index, perm = _sorted_groups(unpacked)
        if perm is not None:
            codes = codes[:, perm]
        self.kernel_group = _kernel_group(self.group_size) if group_index is None else 0
        self.layout = self._choose_layout(device, use_kernel)
        if self.layout == "cpu_int4":
            packed = pack_cpu_int4(codes)
        elif self.layout == "nibbles":
            packed = pack_nibbles(codes)
        else:
            packed = codes.to(torch.uint8)
        self.register_buffer("qweight", packed.to(device))
        self.register_buffer("scales", unpacked.scales.to(device).contiguous())
        zeros = unpacked.zeros
        if bool((zeros == zeros.reshape(-1)[0]).all()):  # symmetric: one zero point for all (broadcast)
            zeros = zeros.reshape(-1)[:1].reshape(1, 1)
        fits_byte = int(zeros.min()) >= 0 and int(zeros.max()) < 256  # v1 8-bit zeros reach 256
        zero_dtype = torch.uint8 if fits_byte else torch.int16
        self.register_buffer("qzeros", zeros.to(device=device, dtype=zero_dtype).contiguous())
        # column indexes are small: int16 when they fit (small layers' fixed costs count), widened per call
        index_dtype = torch.int16 if self.in_features <= 2**15 else torch.int32
        self.register_buffer("perm", None if perm is None else perm.to(device=device, dtype=index_dtype))
        self.register_buffer("g_idx", None if group_index is None else group_index.to(device=device, dtype=index_dtype))
        bias = unpacked.bias
        if bias is not None:  # the narrower of the stored and the requested dtype; cast per call
            narrower = bias_dtype is not None and bias_dtype.itemsize < bias.dtype.itemsize
            bias = bias.to(device=device, dtype=bias_dtype if narrower else bias.dtype)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def _choose_layout(self, device: torch.device, use_kernel: bool) -> str:
        if self.bits == 8:
            return "bytes"
        kernel = (use_kernel and device.type == "cpu" and self.kernel_group and self.out_features % 16 == 0
                  and self.in_features % self.group_size == 0 and cpu_int4_layout_ok())
        return "cpu_int4" if kernel else "nibbles"

    @property
    def weight(self) -> torch.Tensor:
        """The packed codes (``qweight``), not a float matrix.

        Code that inspects a linear layer's ``weight`` for its device or type (peft) finds
        the packed buffer here, as with other quantized layers; :meth:`dequantize` gives the
        values.  Writing into it (peft's ``merge``) fails: merge into
        ``vlmodel.quant.dequantize_model(model)`` instead.
        """
        return self.qweight

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, layout={self.layout}, bias={self.bias is not None}")

    def resident_bytes(self) -> int:
        """Bytes held by this layer (codes, scales, zeros, permutation, bias)."""
        return sum(t.nbytes for t in (*self.buffers(recurse=False), *self.parameters(recurse=False)))

    # ---- the matmul -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.perm is not None:
            rows = rows.index_select(1, self.perm.int())
        if self.layout == "cpu_int4" and rows.dtype == torch.bfloat16 and rows.device.type == "cpu":
            rows = rows.contiguous()
            if torch.is_grad_enabled() and rows.requires_grad:
                y = _Int4Matmul.apply(rows, self)
            else:  # inference: the op itself (an autograd.Function costs ~70 us a call)
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.qweight, self.kernel_group,
                                                               self._scales_and_offsets(rows.dtype))
        else:  # float32/float16 (the kernel's own paths for them are far slower), other devices, 8 bits
            y = F.linear(rows, self._sorted_weight(rows.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _scales_and_offsets(self, dtype: torch.dtype) -> torch.Tensor:
        """The kernel's (groups, out, 2) table: scale and ``(8 - zero) * scale`` per group."""
        scales = self.scales.to(dtype)
        offsets = (8 - self.qzeros.to(dtype)) * scales  # (1, 1) zeros broadcast
        table = torch.stack([scales, offsets], dim=-1)  # (out, groups, 2)
        repeat = self.group_size // self.kernel_group
        if repeat > 1:  # e.g. per-channel scales (one group of in_features columns) as 128-column groups
            table = table.repeat_interleave(repeat, dim=1)
        return table.transpose(0, 1).contiguous()

    def codes(self) -> torch.Tensor:
        """(out, in) integer codes in the stored (group-sorted) column order, as uint8."""
        if self.layout == "cpu_int4":
            return unpack_cpu_int4(self.qweight, self.out_features, self.in_features)
        if self.layout == "nibbles":
            return unpack_nibbles(self.qweight, self.in_features)
        return self.qweight

    def _sorted_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The float weight in the stored column order, built for one call."""
        codes = self.codes().to(dtype)
        if self.g_idx is None and self.in_features % self.group_size == 0:
            n_groups = self.scales.shape[1]
            grouped = codes.view(self.out_features, n_groups, -1)
            w = (grouped - self.qzeros.to(dtype).unsqueeze(-1)) * self.scales.to(dtype).unsqueeze(-1)
            return w.view(self.out_features, self.in_features)
        groups = self.g_idx.long() if self.g_idx is not None else \
            torch.arange(self.in_features, device=codes.device) // self.group_size
        zeros = self.qzeros.to(dtype).expand_as(self.scales)
        return (codes - zeros[:, groups]) * self.scales.to(dtype)[:, groups]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight in the checkpoint's column order (computed in float32, then cast)."""
        w = self._sorted_weight(torch.float32)
        if self.perm is not None:
            w = torch.empty_like(w).index_copy_(1, self.perm.long(), w)
        return w.to(dtype)

    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A plain ``nn.Linear`` holding the dequantized weight (and the bias)."""
        dtype = dtype or (self.bias.dtype if self.bias is not None else self.scales.dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.qweight.device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dequantize(dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


class _Int4Matmul(torch.autograd.Function):
    """torch's CPU int4 matmul, with the input gradient (``grad @ W``, W dequantized for the
    call) that it lacks: LoRA trains through a frozen packed layer."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, layer: "QuantLinear") -> torch.Tensor:
        ctx.layer = layer
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, layer.qweight, layer.kernel_group,
                                                          layer._scales_and_offsets(rows.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer._sorted_weight(grad.dtype), None


def _kernel_group(group_size: int) -> int:
    """The largest group size of the CPU kernel that divides ``group_size`` (0: none)."""
    return next((g for g in KERNEL_GROUPS if group_size % g == 0), 0)


def _sorted_groups(unpacked: UnpackedWeight) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(irregular group index or None, column permutation or None) for an act-order weight.

    Columns sorted by group give contiguous groups when each group has ``group_size``
    columns: then only the permutation is kept.  Otherwise the group index stays.
    """
    index = unpacked.group_index
    if index is None:
        return None, None
    index = index.long()
    natural = torch.arange(index.numel(), device=index.device) // unpacked.group_size
    if torch.equal(index, natural):
        return None, None
    perm = torch.argsort(index, stable=True)
    if torch.equal(index[perm], natural) and unpacked.codes.shape[1] % unpacked.group_size == 0:
        return None, perm
    return index, None
