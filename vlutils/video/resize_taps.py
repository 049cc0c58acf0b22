"""Torch's antialiased bicubic taps, read out of torch, and which of its accumulation steps
torch's compiled loop fuses into one FMA, measured against it (for :mod:`resize_fast`).

torch sums each output value as ``acc = x0 * w0`` and then ``acc += xj * wj`` tap by tap in
float32. The taps and weights are in its source, but computed in float; which ``+=`` steps
the compiler turned into fused multiply-adds is not (it differs between builds and CPUs).
Both are taken from the torch in this process instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_CALIBRATION_ROWS = 240  # trials per (output, window size, tap) step
_fused: dict[str, dict[int, np.ndarray]] = {"h": {}, "v": {}}  # pass -> window size -> fused per tap


@dataclass
class AxisPlan:
    """Torch's taps for one axis: output i reads ``size[i]`` inputs from ``start[i]``."""

    n_in: int
    n_out: int
    start: np.ndarray  # (n_out,) int64
    size: np.ndarray  # (n_out,) int64
    weights: np.ndarray  # (n_out, max size) float32, 0 past each window


def torch_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
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
        weights[:, k0:k1] = torch_resize(eye[None, None], k1 - k0, n_out)[0, 0].T.numpy()
        eye[torch.arange(k1 - k0), torch.arange(k0, k1)] = float("nan")
        window[:, k0:k1] = np.isnan(torch_resize(eye[None, None], k1 - k0, n_out)[0, 0].T.numpy())
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
    result = torch_resize(torch.from_numpy(flat)[None, None], flat.shape[0], plan.n_out)[0, 0].numpy()
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
        expected.append(torch_resize(torch.from_numpy(x)[None, None], plan.n_out, cols)[0, 0].numpy()[r])
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


def _sample_plan(k: int) -> AxisPlan | None:
    """A small axis (few inputs) that has windows of ``k`` taps: calibrating there costs little,
    and which steps are fused depends on the window size, not on the axis (verify() checks)."""
    for n_in in range(max(2, k - 4), 4 * k + 16):  # windows of k taps first appear near n_in = k
        for n_out in range(2, 13):
            if n_out != n_in:
                plan = axis_plan(n_in, n_out)
                if (plan.size == k).any():
                    return plan
    return None


def fused_steps(name: str, sizes: np.ndarray, kern: Any) -> dict[int, np.ndarray]:
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
