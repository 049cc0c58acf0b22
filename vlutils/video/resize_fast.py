"""A faster frame resize that gives exactly torch's float32 bicubic + antialias result.

Why: the reference resizes every sampled frame with torch's antialiased interpolate, whose
CPU kernel is scalar code (~10 ms for one 854x480 frame). For a 10-minute video at fps=2
that was a third of our CPU time. The numba kernels in :mod:`resize_kernel` do the same
arithmetic with SIMD, about 3-4x faster.

Exactness is measured, never assumed, and it is measured against the torch in this process:

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_CALIBRATION_ROWS = 240  # trials per (output, window size, tap) step
MAX_TAPS = 64  # beyond (downscaling over ~16x) torch's kernel is used
_VERIFY_FRAMES = 2
_lock = threading.Lock()
_kernels: Any = None  # the resize_kernel module once imported, False if unavailable
_fused: dict[str, dict[int, np.ndarray]] = {"h": {}, "v": {}}  # pass -> window size -> fused per tap
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


@dataclass
class AxisPlan:
    """Torch's taps for one axis: output i reads ``size[i]`` inputs from ``start[i]``."""

    n_in: int
    n_out: int
    start: np.ndarray  # (n_out,) int64
    size: np.ndarray  # (n_out,) int64
    weights: np.ndarray  # (n_out, max size) float32, 0 past each window


def _torch_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(x, size=[height, width], mode="bicubic", align_corners=False, antialias=True)


def axis_plan(n_in: int, n_out: int) -> AxisPlan:
    """Read the taps of ``n_in -> n_out`` out of torch (horizontal and vertical share them).

    Row k of an identity matrix, resized along its length, holds input k's weight in every
    output (exact: 1 * w, plus zeros); with NaN instead of 1 it marks every window holding k,
    zero-weight taps included (NaN * 0 is NaN). Rows go in chunks to bound memory."""
    weights = np.empty((n_out, n_in), np.float32)
    window = np.empty((n_out, n_in), np.bool_)
    for k0 in range(0, n_in, 512):
        k1 = min(k0 + 512, n_in)
        eye = torch.zeros((k1 - k0, n_in), dtype=torch.float32)
        eye[torch.arange(k1 - k0), torch.arange(k0, k1)] = 1.0
        weights[:, k0:k1] = _torch_resize(eye[None, None], k1 - k0, n_out)[0, 0].T.numpy()
        eye[torch.arange(k1 - k0), torch.arange(k0, k1)] = float("nan")
        window[:, k0:k1] = np.isnan(_torch_resize(eye[None, None], k1 - k0, n_out)[0, 0].T.numpy())
    if not window.any(axis=1).all():
        raise ValueError("an output with no input taps")
    start = window.argmax(axis=1)
    size = window.sum(axis=1)
    last = n_in - 1 - window[:, ::-1].argmax(axis=1)
    if not np.array_equal(last - start + 1, size):
        raise ValueError("a window with holes")
    kmax = int(size.max())
    taps = np.zeros((n_out, kmax), np.float32)
    for j in range(kmax):
        col = np.minimum(start + j, n_in - 1)
        taps[:, j] = np.where(j < size, weights[np.arange(n_out), col], 0.0)
    outside = weights.copy()
    outside[window] = 0
    if outside.any():
        raise ValueError("a weight outside its window")
    return AxisPlan(n_in, n_out, start.astype(np.int64), size.astype(np.int64), taps)


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


def _trial_values(rng: np.random.Generator, b: int, trials: int, floats: bool) -> np.ndarray:
    """(trials, b + 1) inputs for step b: taps before b at mixed small scales and tap b at full
    scale, so that the running sum and the new product are often of similar size (there a
    fused and a plain step round differently)."""
    scale = np.array([1, 2, 4, 16, 64, 255], np.float32)[np.arange(trials) % 6][:, None]
    if floats:
        head = rng.uniform(-1, 1, (trials, b)).astype(np.float32) * scale
        last = rng.uniform(-40, 300, (trials, 1)).astype(np.float32)
    else:
        head = np.floor(rng.uniform(0, 1, (trials, b)) * (scale + 1)).astype(np.float32)
        last = rng.integers(0, 256, (trials, 1)).astype(np.float32)
    return np.concatenate([head, last], axis=1)


def _representatives(plan: AxisPlan, k: int) -> list[int]:
    """Up to 4 outputs with a window of ``k`` taps, spread over the axis (their weights differ)."""
    outputs = np.flatnonzero(plan.size == k)
    return sorted(set(int(outputs[int(p * (len(outputs) - 1))]) for p in (0.5, 0.25, 0.75, 0.0)))


def _decide(flags: np.ndarray, b: int, plain: np.ndarray, fused: np.ndarray, expected: np.ndarray) -> bool:
    """Set flags[b] from one step's trials; False when neither a plain nor a fused step fits."""
    plain_ok = np.array_equal(plain, expected)
    fused_ok = np.array_equal(fused, expected)
    if fused_ok and not plain_ok:
        flags[b] = True
    return plain_ok or fused_ok


def _calibrate_horizontal(plan: AxisPlan, k: int, kern: Any) -> np.ndarray | None:
    """Find, tap by tap, which steps torch fuses for a horizontal window of ``k`` taps.

    A trial row holds values on taps 0..b of one output's window and zeros elsewhere, so that
    output equals the sum after step b (adding 0 changes nothing, fused or not)."""
    rng = np.random.default_rng(k)
    reps = _representatives(plan, k)
    rows = np.zeros((len(reps), k - 1, _CALIBRATION_ROWS, plan.n_in), np.float32)
    for n, i in enumerate(reps):
        for b in range(1, k):
            rows[n, b - 1, :, plan.start[i] : plan.start[i] + b + 1] = _trial_values(rng, b, _CALIBRATION_ROWS, False)
    flat = rows.reshape(-1, plan.n_in)
    result = _torch_resize(torch.from_numpy(flat)[None, None], flat.shape[0], plan.n_out)[0, 0].numpy()
    result = result.reshape(len(reps), k - 1, _CALIBRATION_ROWS, plan.n_out)
    flags = np.zeros(k, np.bool_)
    for b in range(1, k):
        plain_all, fused_all, expected_all = [], [], []
        for n, i in enumerate(reps):
            one = AxisPlan(plan.n_in, 1, plan.start[i : i + 1], plan.size[i : i + 1], plan.weights[i : i + 1])
            trial = flags.copy()
            plain_all.append(_run_single_output(kern, one, trial, rows[n, b - 1]))
            trial[b] = True
            fused_all.append(_run_single_output(kern, one, trial, rows[n, b - 1]))
            expected_all.append(result[n, b - 1, :, i])
        if not _decide(flags, b, np.concatenate(plain_all), np.concatenate(fused_all), np.concatenate(expected_all)):
            return None
    return flags


def _run_single_output(kern: Any, one: AxisPlan, flags: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Our horizontal sum for one output with the given fused steps, on float32 rows."""
    k = int(one.size[0])
    idx = (one.start[0] + np.arange(k)).astype(np.uint64)
    out = np.empty(rows.shape[0], np.float32)
    kern.horizontal_one(rows, idx, one.weights[0, :k].copy(), flags[:k].copy(), out)
    return out


def _calibrate_vertical(plan: AxisPlan, k: int, kern: Any) -> np.ndarray | None:
    """As :func:`_calibrate_horizontal` for the vertical pass, on float inputs (the vertical
    pass reads the horizontal pass's float32 output)."""
    rng = np.random.default_rng(1000 + k)
    reps = _representatives(plan, k)
    cols = (k - 1) * _CALIBRATION_ROWS
    flags = np.zeros(k, np.bool_)
    inputs, expected = [], []
    for r in reps:
        x = np.zeros((plan.n_in, cols), np.float32)
        for b in range(1, k):
            block = slice((b - 1) * _CALIBRATION_ROWS, b * _CALIBRATION_ROWS)
            x[plan.start[r] : plan.start[r] + b + 1, block] = _trial_values(rng, b, _CALIBRATION_ROWS, True).T
        inputs.append(x)
        expected.append(_torch_resize(torch.from_numpy(x)[None, None], plan.n_out, cols)[0, 0].numpy()[r])
    acc = np.empty(cols, np.float32)
    out = np.empty((1, cols), np.float32)
    for b in range(1, k):
        block = slice((b - 1) * _CALIBRATION_ROWS, b * _CALIBRATION_ROWS)
        got: dict[bool, list[np.ndarray]] = {False: [], True: []}
        for n, r in enumerate(reps):
            for candidate in (False, True):
                table = np.zeros((k + 1, k), np.bool_)
                table[k] = flags
                table[k, b] = candidate
                kern.vertical_rows(inputs[n], plan.start[r : r + 1].astype(np.uint64),
                                   plan.size[r : r + 1].astype(np.uint64), plan.weights[r : r + 1], table, acc, out)
                got[candidate].append(out[0, block].copy())
        wanted = np.concatenate([e[block] for e in expected])
        if not _decide(flags, b, np.concatenate(got[False]), np.concatenate(got[True]), wanted):
            return None
    return flags


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
                fused = _fused_for(name, plan.size, kern)
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
            expected = _torch_resize(chw, self.dst_h, self.dst_w)[0]
            self._run(frame, raw, True)
            if not np.array_equal(raw, expected.numpy()):
                return False
        return True


def _sample_plan(k: int) -> AxisPlan | None:
    """A small axis (few inputs) that has windows of ``k`` taps: calibrating there costs little,
    and which steps are fused depends on the window size, not on the axis (verify() checks)."""
    for n_in in range(2, 4 * k + 16):
        for n_out in range(2, 13):
            if n_out != n_in:
                plan = axis_plan(n_in, n_out)
                if (plan.size == k).any():
                    return plan
    return None


def _fused_for(name: str, sizes: np.ndarray, kern: Any) -> dict[int, np.ndarray]:
    """Fused steps for every window size in ``sizes`` (measured once per process and pass)."""
    known = _fused[name]
    for k in sorted(set(int(s) for s in sizes)):
        if k not in known:
            sample = _sample_plan(k) if k > 1 else None
            if k == 1:
                flags: np.ndarray | None = np.zeros(1, np.bool_)
            elif sample is None:
                flags = None
            elif name == "h":
                flags = _calibrate_horizontal(sample, k, kern)
            else:
                flags = _calibrate_vertical(sample, k, kern)
            if flags is None:
                raise ValueError(f"{name} pass with {k} taps fits neither a plain nor a fused step")
            known[k] = flags
    return known


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
