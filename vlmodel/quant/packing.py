"""Bit packing shared by the formats: integer codes in int32 words, low bits first.

Every format this package reads stores ``32 // bits`` codes per int32 word, the first
code in the lowest bits; they differ only in the axis that is packed (GPTQ ``qweight``
packs input rows, GPTQ/AWQ zeros and AWQ weights pack output columns, compressed-tensors
packs input columns) and in AWQ's column order inside a word (see ``vlmodel.quant.awq``).
"""

from __future__ import annotations

import torch


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Split each int32 word of ``packed`` into ``32 // bits`` unsigned codes along ``dim``.

    The result is int32 and ``32 // bits`` times longer along ``dim``; code ``i`` of a word
    is ``(word >> (i * bits)) & (2**bits - 1)`` (int32 arithmetic shift, then mask, so the
    sign bit of a word does not leak into its codes).
    """
    if packed.dtype != torch.int32:
        raise ValueError(f"packed codes must be int32, got {packed.dtype}")
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
    moved = packed.movedim(dim, -1)
    codes = (moved.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # (..., words, per_word)
    codes = codes.reshape(*moved.shape[:-1], moved.shape[-1] * per_word)
    return codes.movedim(-1, dim)


def pack_int32(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The inverse of :func:`unpack_int32` (codes in ``[0, 2**bits)``, length a multiple of ``32 // bits``)."""
    per_word = 32 // bits
    moved = codes.to(torch.int64).movedim(dim, -1)
    if moved.shape[-1] % per_word:
        raise ValueError(f"{moved.shape[-1]} codes do not fill whole int32 words of {per_word}")
    words = moved.reshape(*moved.shape[:-1], -1, per_word)
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=codes.device)
    packed = (words << shifts).sum(-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return packed.movedim(-1, dim).contiguous()


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in [0, 16) -> (N, ceil(K / 2)) uint8, even columns in the low nibble."""
    if codes.shape[1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, columns: int) -> torch.Tensor:
    """The inverse of :func:`pack_nibbles`: (N, ceil(K / 2)) uint8 -> (N, K) uint8."""
    both = torch.stack([packed & 15, packed >> 4], dim=-1)
    return both.reshape(packed.shape[0], -1)[:, :columns]


# torch's CPU int4 matmul (``aten._weight_int4pack_mm_for_cpu``) reads weights in its own
# layout, made by ``aten._convert_weight_to_int4pack_for_cpu``: rows in blocks of 64; in a
# full block, byte j of input column k holds rows j (low nibble) and j + 32 (high); a last
# partial block of r rows holds rows 2j and 2j + 1.  :func:`cpu_int4_layout_ok` checks this
# description against the running torch before the layout is used.
_CPU_BLOCK = 64


def unpack_cpu_int4(packed: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """Codes (rows, columns) uint8 from torch's CPU int4-pack layout (see above)."""
    flat = packed.reshape(-1)
    full = rows // _CPU_BLOCK
    parts = []
    if full:
        blocks = flat[: full * _CPU_BLOCK * columns // 2].reshape(full, columns, _CPU_BLOCK // 2)
        codes = torch.cat([blocks & 15, blocks >> 4], dim=-1)  # (full, K, 64)
        parts.append(codes.permute(0, 2, 1).reshape(full * _CPU_BLOCK, columns))
    rest = rows - full * _CPU_BLOCK
    if rest:
        tail = flat[full * _CPU_BLOCK * columns // 2:].reshape(columns, rest // 2)
        codes = torch.stack([tail & 15, tail >> 4], dim=-1).reshape(columns, rest)
        parts.append(codes.t())
    return torch.cat(parts).contiguous()


def pack_cpu_int4(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in [0, 16) -> torch's CPU int4-pack layout (N % 16 == 0, K even)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)


_LAYOUT_OK: bool | None = None


def cpu_int4_layout_ok() -> bool:
    """Whether this torch has the CPU int4 kernel and its layout is the one described above (checked once)."""
    global _LAYOUT_OK
    if _LAYOUT_OK is None:
        try:
            g = torch.Generator().manual_seed(0)
            ok = True
            for rows, columns in ((64, 32), (96, 64), (16, 32), (144, 96)):
                codes = torch.randint(0, 16, (rows, columns), generator=g, dtype=torch.int32)
                ok &= torch.equal(unpack_cpu_int4(pack_cpu_int4(codes), rows, columns).to(torch.int32), codes)
            _LAYOUT_OK = bool(ok)
        except (RuntimeError, AttributeError):  # an older torch without the op, or another layout size
            _LAYOUT_OK = False
    return _LAYOUT_OK
