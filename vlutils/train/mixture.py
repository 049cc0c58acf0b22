"""The mixture rule: which samples an epoch uses, how often, and in which order.

Counts per source (``weights_mode``):

- ``"multiplier"`` (default): a source of ``n`` samples with weight ``w`` contributes
  ``round(w * n)`` samples (Python's ``round``: halves go to the even number). ``w < 1`` draws a
  random subset; ``w > 1`` uses every sample ``c // n`` times (``c = round(w * n)``) plus a
  random subset of ``c % n`` samples once more.
- ``"proportion"``: the weights are the target shares of the epoch (normalised to sum 1); the
  epoch has ``epoch_size`` samples (default: all the valid samples once), source ``s`` gets
  ``floor(share_s * epoch_size)`` plus one for the sources with the largest fractional parts
  (ties: lower source number first) until the counts sum to ``epoch_size`` exactly.

Order: every occurrence gets a key ``(j + u) / m``: ``m`` occurrences of a sample this epoch,
``j`` = 0..m-1 its copy number, ``u`` uniform in [0, 1) (``shuffle``) or the sample's rank
within its source, ``(i + 0.5) / n`` (no shuffle); the epoch is the occurrences sorted by key.
So the copies of a repeated sample fall in different ``1/m`` parts of the epoch, and without
shuffle a single source keeps index order while several sources interleave in proportion.
Everything is drawn from ``numpy.random.default_rng((seed, epoch, purpose))``: deterministic for
``(seed, epoch)``, identical on every rank.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import InvalidOptionError

__all__ = ["WEIGHT_MODES", "source_counts", "epoch_order", "source_weights"]

WEIGHT_MODES = ("multiplier", "proportion")
_SUBSET, _ORDER = 1, 2  # rng purposes


def rng_for(seed: int, epoch: int, purpose: int) -> np.random.Generator:
    """The generator for one purpose of one epoch (non-negative entropy, as SeedSequence needs)."""
    return np.random.default_rng([int(seed) % (1 << 63), int(epoch) % (1 << 63), purpose])


def source_weights(weights: Sequence[float] | Mapping | None, num_sources: int,
                   names: Sequence | None = None) -> np.ndarray:
    """Weights as a float array indexed by source number (default 1.0 each).

    ``weights``: a sequence indexed by source number, or a mapping from source number (or
    source name, when ``names`` gives the name of each number) to weight; sources a mapping
    leaves out keep 1.0."""
    out = np.ones(num_sources, dtype=np.float64)
    if weights is None:
        return out
    if isinstance(weights, Mapping):
        lookup = {name: i for i, name in enumerate(names)} if names is not None else {}
        for key, value in weights.items():
            number = lookup.get(key, key)
            if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or not 0 <= number < num_sources:
                raise InvalidOptionError(f"weights: unknown source {key!r} (sources: "
                                         f"{list(names) if names is not None else list(range(num_sources))})")
            out[int(number)] = _weight(value, key)
        return out
    values = list(weights)
    if len(values) != num_sources:
        raise InvalidOptionError(f"weights: {len(values)} values for {num_sources} sources")
    return np.array([_weight(v, i) for i, v in enumerate(values)], dtype=np.float64)


def _weight(value, key) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise InvalidOptionError(f"weights: source {key!r} needs a finite weight >= 0, got {value!r}")
    return float(value)


def source_counts(available: np.ndarray, weights: np.ndarray, mode: str = "multiplier",
                  epoch_size: int | None = None) -> np.ndarray:
    """Samples each source contributes to one epoch (the rule in the module docstring)."""
    available = np.asarray(available, dtype=np.int64)
    if mode == "multiplier":
        if epoch_size is not None:
            raise InvalidOptionError("epoch_size applies to weights_mode='proportion' only")
        return np.rint(weights * available).astype(np.int64)
    if mode != "proportion":
        raise InvalidOptionError(f"weights_mode must be one of {WEIGHT_MODES}, got {mode!r}")
    total = int(available.sum()) if epoch_size is None else epoch_size
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 0:
        raise InvalidOptionError(f"epoch_size must be a non-negative int, got {epoch_size!r}")
    if weights.sum() <= 0:
        raise InvalidOptionError("weights_mode='proportion' needs at least one positive weight")
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short:
        by_fraction = np.lexsort((np.arange(len(exact)), -(exact - counts)))
        counts[by_fraction[:short]] += 1
    empty = np.flatnonzero((counts > 0) & (available == 0))
    if len(empty):
        raise InvalidOptionError(f"weights_mode='proportion': source {int(empty[0])} has a weight but no samples")
    return counts


def epoch_order(indices: np.ndarray, source: np.ndarray, counts: np.ndarray, *, seed: int, epoch: int,
                shuffle: bool) -> np.ndarray:
    """The epoch's sample indices in order (``counts[s]`` occurrences from source ``s``).

    ``indices``: the valid sample indices, increasing; ``source``: their source numbers."""
    num_sources = len(counts)
    n = np.bincount(source, minlength=num_sources).astype(np.int64)
    full = np.floor_divide(counts, n, out=np.zeros_like(counts), where=n > 0)
    extra = counts - full * n
    starts = np.concatenate(([0], np.cumsum(n)[:-1]))
    copies = full[source]
    partial = extra > 0
    if partial.any() or not shuffle:  # samples grouped by source (a radix sort on small ints)
        by_source = np.argsort(source.astype(np.int16 if num_sources < (1 << 15) else np.int64), kind="stable")
    if partial.any():  # a random subset of `extra` samples of such a source gets one more copy
        rng = rng_for(seed, epoch, _SUBSET)
        bonus = np.zeros(len(source), dtype=np.int64)
        for s in np.flatnonzero(partial).tolist():
            members = by_source[starts[s]:starts[s] + n[s]]
            bonus[members[rng.choice(int(n[s]), int(extra[s]), replace=False)]] = 1
        copies = copies + bonus
        del bonus
    if shuffle:
        u = rng_for(seed, epoch, _ORDER).random(int(copies.sum()))
    if (copies == 1).all():  # the common case, without the occurrence bookkeeping
        if shuffle:
            return indices[np.argsort(u, kind="stable")]
        if len(n) == 1:
            return indices.copy()
    # one entry per occurrence: the sample, its copy number j and its number of copies m;
    # key = (j + u) / m computed in place (10 M occurrences: a few arrays of 80 MB, no more)
    occurrence = np.repeat(np.arange(len(source), dtype=np.int64), copies)
    key = np.arange(len(occurrence), dtype=np.float64)
    key -= np.repeat(np.cumsum(copies) - copies, copies)  # j
    if not shuffle:  # u: the sample's rank within its source (by index)
        index_rank = np.empty(len(source), dtype=np.int64)
        index_rank[by_source] = np.arange(len(source)) - starts[source[by_source]]
        u = (index_rank + 0.5) / np.maximum(n[source], 1)
        key += u[occurrence]
    else:
        key += u
    del u
    key /= copies[occurrence]
    return indices[occurrence[np.argsort(key, kind="stable")]]
