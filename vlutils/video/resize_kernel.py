"""Compiled kernels for :mod:`vlutils.video.resize_fast` (numba; imported only when used).

They repeat, operation for operation, what torch's float32 antialiased resize does for each
output value: ``acc = x[0] * w[0]`` and then, tap by tap, ``acc += x[j] * w[j]`` either as a
rounded multiply and a rounded add or as one fused multiply-add. Which taps torch's compiled
loop fuses is not in its source (it is the compiler's choice), so it comes in as a table
(``fused[K, j]``: window size, tap) measured against torch itself by ``resize_fast``.

Layouts: a frame is ``(H, W*3)`` uint8 (HWC rows); the horizontal pass writes ``(H, W_out*3)``
float32 rows and the vertical pass reads them, so both inner loops run over contiguous
memory (gathers in the horizontal one).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def fma32(typingctx, a, b, c):
    """Single-rounding ``a * b + c`` in float32 (LLVM's fma: one instruction where the CPU has it)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@njit(nogil=True, cache=True)
def horizontal_one(rows, idx, w, fused, out):
    """One output value per row of ``rows`` (N, n) float32: taps ``idx``/``w`` with the given
    fused steps (the horizontal pass's arithmetic, for calibration)."""
    for r in range(rows.shape[0]):
        acc = rows[r, idx[0]] * w[0]
        for j in range(1, idx.shape[0]):
            if fused[j]:
                acc = fma32(rows[r, idx[j]], w[j], acc)
            else:
                acc = acc + rows[r, idx[j]] * w[j]
        out[r] = acc


@njit(nogil=True, cache=True, inline="always")
def weighted_rows(rows, base, k, weights, fused, acc, n):
    """``acc[:n] = rows[base] * weights[0] + ... + rows[base + k - 1] * weights[k - 1]``, step by
    step in float32 as torch does; ``fused[j]``: step j is one fused multiply-add. Whole rows
    at a time, so the inner loops run over contiguous memory (SIMD)."""
    src = rows[base]
    w = weights[0]
    for q in range(n):
        acc[q] = np.float32(src[q]) * w
    for j in range(1, k):
        src = rows[base + j]
        w = weights[j]
        if fused[j]:
            for q in range(n):
                acc[q] = fma32(np.float32(src[q]), w, acc[q])
        else:
            for q in range(n):
                acc[q] = acc[q] + np.float32(src[q]) * w


@njit(nogil=True, cache=True)
def resize_frame(frame, xt, strip_t, strip, acc, xmin, xsize, xw, xfused, ymin, ysize, yw, yfused, strip_width,
                 raw, out):
    """Resize one frame ``frame`` (H, W*3) uint8 HWC into ``out`` (3, H', W') planes.

    Horizontal pass on the transposed frame ``xt`` (W, H*3) uint8 (small enough for the cache), so that each output
    column is a sum of whole rows (contiguous, SIMD); then, ``strip_width`` output columns at
    a time, the pass's rows ``strip_t`` (S, H*3) are transposed into ``strip`` (H, S*3) and the
    vertical pass sums whole rows of that. ``*min``/``*size``/``*w``: taps per output (an
    unchanged axis has one tap of weight 1, which leaves values as they are, as torch does);
    ``*fused[K, j]``: whether step j of a K-tap sum is one fused multiply-add. ``raw``: write
    the float32 sums (verification) instead of clamped, rounded values."""
    height, width3 = frame.shape
    width = width3 // 3
    # transpose: xt[x, r*3 + c] = frame[r, x*3 + c], 32 columns at a time
    for x0 in range(0, width, 32):
        x1 = min(x0 + 32, width)
        for r in range(height):
            src = frame[r]
            for x in range(x0, x1):
                dst = xt[x]
                dst[r * 3] = src[x * 3]
                dst[r * 3 + 1] = src[x * 3 + 1]
                dst[r * 3 + 2] = src[x * 3 + 2]
    out_h = out.shape[1]
    out_w = out.shape[2]
    n = height * 3
    lo = np.float32(0.0)
    hi = np.float32(255.0)
    for i0 in range(0, out_w, strip_width):
        i1 = min(i0 + strip_width, out_w)
        for i in range(i0, i1):
            k = xsize[i]
            weighted_rows(xt, xmin[i], k, xw[i], xfused[k], strip_t[i - i0], n)
        s = i1 - i0
        for r in range(height):
            dst = strip[r]
            for ii in range(s):
                src = strip_t[ii]
                for c in range(3):
                    dst[ii * 3 + c] = src[r * 3 + c]
        m = s * 3
        for r in range(out_h):
            k = ysize[r]
            weighted_rows(strip, ymin[r], k, yw[r], yfused[k], acc, m)
            for c in range(3):
                dst = out[c, r]
                if raw:
                    for ii in range(s):
                        dst[i0 + ii] = acc[ii * 3 + c]
                else:
                    for ii in range(s):
                        dst[i0 + ii] = np.rint(min(max(acc[ii * 3 + c], lo), hi))


@njit(nogil=True, cache=True)
def vertical_rows(h, ymin, ksize, vw, vfused, acc, out):
    """Resample the rows of ``h`` (Hin, Q) float32 along y into ``out`` (Hout, Q) float32;
    ``vfused`` is indexed by (window size, tap). ``acc`` is a (Q,) float32 scratch row."""
    q_len = h.shape[1]
    for r in range(out.shape[0]):
        k = ksize[r]
        weighted_rows(h, ymin[r], k, vw[r], vfused[k], acc, q_len)
        row = out[r]
        for q in range(q_len):
            row[q] = acc[q]
