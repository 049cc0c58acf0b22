"""A faster frame resize that gives exactly torch's float32 bicubic + antialias result.

Why: the reference resizes every sampled frame with torch's antialiased interpolate, whose
CPU kernel is scalar code (~10 ms for one 854x480 frame). For a 10-minute video at fps=2
that was a third of our CPU time. The numba kernels in :mod:`resize_kernel` do the same
arithmetic with SIMD, about 3-4x faster.

Exactness is measured, never assumed, and it is measured against the torch in this process
(:mod:`resize_taps`):

* the taps and weights of every output value are read out of torch itself (interpolating an
  identity matrix gives the float32 weights; a NaN identity gives each window, zero-weight
  taps included);
* which ``acc += x * w`` steps torch's compiled loop fuses into one FMA (a compiler choice;
  it differs between builds and CPUs) is found tap by tap, separately for the horizontal and
  the vertical pass, on inputs that isolate one step at a time;
* before a size pair is used, random frames are resized both ways and must agree in every
  float32 value before rounding.

Whatever does not pass (numba missing, a step that fits neither model, a mismatch) leaves
that size pair on torch's kernel, logged at debug level. Set ``VLUTILS_FAST_RESIZE=0`` to
turn the fast path off.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np
import torch

from .resize_taps import AxisPlan, axis_plan, fused_steps, torch_resize

logger = logging.getLogger(__name__)

MAX_TAPS = 64  # beyond (downscaling over ~16x) torch's kernel is used
_VERIFY_FRAMES = 2
_lock = threading.Lock()
_kernels: Any = None  # the resize_kernel module once imported, False if unavailable
_plans: dict[tuple[int, int, int, int], "FramePlan | None"] = {}
_pixels_before_warm = 0  # output pixels resized by torch before numba was loaded
_building: set[tuple[int, int, int, int]] = set()  # plans being built in the background


def _after_fork_in_child() -> None:
    """A build thread does not survive fork: forget it, and take a fresh lock."""
    global _lock
    _lock = threading.Lock()
    _building.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def enabled() -> bool:
    return os.environ.get("VLUTILS_FAST_RESIZE", "1").lower() not in ("0", "false", "no", "off")


def _fused_table(fused: dict[int, np.ndarray], kmax: int) -> np.ndarray:
    """``table[K, j]``: whether step j of a K-tap sum is fused (the kernels' layout)."""
    table = np.zeros((kmax + 1, kmax), np.bool_)
    for k, flags in fused.items():
        if k <= kmax:
            table[k, : len(flags)] = flags
    return table


def _load_kernels() -> Any:
    global _kernels
    if _kernels is None:
        try:
            from . import resize_kernel

            _kernels = resize_kernel
        except Exception as exc:  # numba missing or broken: torch's kernel stays
            logger.debug("fast resize unavailable: %s", exc)
            _kernels = False
    return _kernels


def _identity(n: int) -> AxisPlan:
    """An unchanged axis: torch skips its pass; one tap of weight 1 leaves values as they are."""
    return AxisPlan(n, n, np.arange(n, dtype=np.int64), np.ones(n, np.int64), np.ones((n, 1), np.float32))


class FramePlan:
    """Everything needed to resize frames of one (source, target) size with the kernels."""

    STRIP = 32  # output columns per strip: the strip's rows stay in the CPU's cache

    def __init__(self, kern: Any, src_hw: tuple[int, int], dst_hw: tuple[int, int]):
        self.kern = kern
        (self.src_h, self.src_w), (self.dst_h, self.dst_w) = src_hw, dst_hw
        self.local = threading.local()
        tables = []
        for name, n_in, n_out in (("h", self.src_w, self.dst_w), ("v", self.src_h, self.dst_h)):
            if n_in == n_out:
                plan, fused = _identity(n_in), {1: np.zeros(1, np.bool_)}
            else:
                plan = axis_plan(n_in, n_out)
                if plan.weights.shape[1] > MAX_TAPS:
                    raise ValueError(f"{plan.weights.shape[1]} taps (over {MAX_TAPS})")
                fused = fused_steps(name, plan.size, kern)
            kmax = plan.weights.shape[1]
            tables += [plan.start.astype(np.uint64), plan.size.astype(np.uint64), plan.weights,
                       _fused_table(fused, kmax)]
        self.tables = tuple(tables)

    def _scratch(self) -> tuple[np.ndarray, ...]:
        buffers = getattr(self.local, "buffers", None)
        if buffers is None:  # per thread: decoders resize in parallel
            n = self.src_h * 3
            buffers = (
                np.empty((self.src_w, n), np.uint8),
                np.empty((self.STRIP, n), np.float32),
                np.empty((self.src_h, self.STRIP * 3), np.float32),
                np.empty(self.STRIP * 3, np.float32),
            )
            self.local.buffers = buffers
        return buffers

    def _run(self, frame: np.ndarray, out: np.ndarray, raw: bool) -> None:
        if frame.strides[1:] == (3, 1):  # HWC rows, maybe padded (decoders align rows): no copy
            src = np.lib.stride_tricks.as_strided(frame, (self.src_h, self.src_w * 3), (frame.strides[0], 1))
        else:
            src = np.ascontiguousarray(frame).reshape(self.src_h, self.src_w * 3)
        self.kern.resize_frame(src, *self._scratch(), *self.tables, self.STRIP, raw, out)

    def resize_into(self, frame: np.ndarray, out: torch.Tensor) -> None:
        """Resize one (H, W, 3) uint8 frame into ``out`` (3, dst_h, dst_w; float32 or uint8),
        clamped and rounded like torchvision."""
        self._run(frame, out.numpy(), False)

    def verify(self) -> bool:
        """Random frames, both ways, every float32 value equal before rounding."""
        rng = np.random.default_rng(self.src_h * 7919 + self.dst_w)
        raw = np.empty((3, self.dst_h, self.dst_w), np.float32)
        for n in range(_VERIFY_FRAMES):
            if n == 0:
                frame = rng.integers(0, 256, (self.src_h, self.src_w, 3), dtype=np.uint8)
            else:  # smooth content with hard edges, as real frames have
                yy, xx = np.mgrid[0 : self.src_h, 0 : self.src_w]
                frame = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, ((xx // 7 + yy // 5) % 2) * 255], -1)
                frame = frame.astype(np.uint8)
            chw = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
            expected = torch_resize(chw, self.dst_h, self.dst_w)[0]
            self._run(frame, raw, True)
            if not np.array_equal(raw, expected.numpy()):
                return False
        return True


def frame_plan(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> FramePlan | None:
    """The verified plan for this size pair, or None (use torch). Built once per process."""
    key = (*src_hw, *dst_hw)
    if key in _plans:
        return _plans[key]
    if not enabled() or src_hw == dst_hw:
        return None
    with _lock:
        if key in _plans:
            return _plans[key]
        plan = None
        kern = _load_kernels()
        if kern:
            try:
                candidate = FramePlan(kern, src_hw, dst_hw)
                if candidate.verify():
                    plan = candidate
                else:
                    logger.debug("fast resize %s -> %s differs from torch; using torch", src_hw, dst_hw)
            except Exception as exc:
                logger.debug("fast resize %s -> %s not usable: %s", src_hw, dst_hw, exc)
        _plans[key] = plan
        return plan


def ready(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> FramePlan | None:
    """The plan if it is built already (never blocks)."""
    return _plans.get((*src_hw, *dst_hw))


# Output pixels (frames x height x width) from which building a plan pays off: loading numba
# and its compiled kernels costs ~0.7 CPU s once per process, a new size pair ~0.1 s, and the
# kernels save ~30 ns per output pixel against torch's (measured on the bench machine).
COLD_START_PIXELS = 48_000_000
NEW_SIZE_PIXELS = 4_000_000


def prepare_in_background(src_hw: tuple[int, int], dst_hw: tuple[int, int], frames: int) -> None:
    """Build the plan in a daemon thread once it pays off; frames use torch until :func:`ready`
    returns it. Before numba is loaded, the output pixels of all calls so far count (a worker
    that resizes many short clips warms up too)."""
    global _pixels_before_warm
    key = (*src_hw, *dst_hw)
    if key in _plans or key in _building or not enabled() or src_hw == dst_hw or _kernels is False:
        return
    pixels = frames * dst_hw[0] * dst_hw[1]
    if _kernels:
        if pixels < NEW_SIZE_PIXELS:
            return
    else:
        _pixels_before_warm += pixels
        if _pixels_before_warm < COLD_START_PIXELS:
            return
    _building.add(key)
    threading.Thread(target=_build, args=(src_hw, dst_hw), name="vlutils-resize-plan", daemon=True).start()


def _build(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
    """Thread target: one torch thread (OpenMP's setting is per thread), next to the decoders."""
    if "OpenMP" in torch.__config__.parallel_info():
        torch.set_num_threads(1)
    try:
        frame_plan(src_hw, dst_hw)
    finally:
        _building.discard((*src_hw, *dst_hw))


def compile_kernels() -> bool:
    """Compile every kernel specialization the pipeline uses into numba's cache, now.

    The first use after installing otherwise compiles them (about 4 s) in a background thread
    of the first long call, where numba's compiler competes for the GIL with the decoders. Run
    ``python -m vlutils.video.precompile`` once after installing (``scripts/install.sh``
    does; in a container image, at build time). Returns False when numba is unavailable."""
    kern = _load_kernels()
    if not kern:
        return False
    plan = frame_plan((12, 20), (8, 28))
    if plan is None:
        return False
    frame = np.zeros((12, 24, 3), np.uint8)
    for rows in (np.ascontiguousarray(frame[:, :20]), frame[:, :20]):  # packed and padded decoder rows
        for dtype in (torch.float32, torch.uint8):
            plan.resize_into(rows, torch.empty((3, 8, 28), dtype=dtype))
    return True

