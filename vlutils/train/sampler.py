"""``BudgetBatchSampler``: batches of dataset indices within a text-token and a vision-patch budget,
for one process or for every rank of a data-parallel job, with mixture weights and exact,
elastic resume.

Each epoch is planned whole (deterministic for ``seed`` and the epoch, identical on every rank):
the mixture rule picks and orders the samples (:mod:`vlutils.train.mixture`), the packing core
packs them into budget batches and groups the batches into steps of ``world_size``
cost-balanced batches (:mod:`vlutils.train.plan`); rank ``r`` yields column ``r``. Every rank
yields the same number of batches, and over all ranks each selected sample appears once.

Resume: ``state_dict()`` is ``(seed, epoch, world size, steps consumed, earlier world sizes)``
plus a fingerprint of the inputs, a few numbers. ``load_state_dict`` makes the next ``iter()``
continue after the consumed steps; with another world size, the batches not yet consumed are
grouped again for the new world size (elastic resume), so every selected sample is still used
exactly once over the epoch.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import InvalidOptionError, SampleTooLongError
from . import mixture
from .plan import Batches, CostModel, auto_window, fit_world_size, group_steps, pack_epoch, rebalance
from .sizes import SizeTable

__all__ = ["BudgetBatchSampler", "EpochPlan", "STATE_FORMAT"]

logger = logging.getLogger(__name__)

STATE_FORMAT = "vlutils.BudgetBatchSampler/1"


@dataclass
class EpochPlan:
    """One epoch's plan as one rank sees it: its batches (CSR), and figures for the whole job."""

    batches: Batches  # this rank's batches, in step order
    num_steps: int  # batches per rank this epoch (from the start of the current world size's part)
    num_samples: int  # samples selected this epoch (the mixture's total)
    dropped: np.ndarray  # sample indices left out this epoch (remainder rule), empty by default
    step_costs: np.ndarray  # (num_steps, world_size) cost of every rank's batch at every step


def _distributed_default(rank: int | None, world_size: int | None) -> tuple[int, int]:
    import torch.distributed as dist

    ready = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if ready else 1
    if rank is None:
        rank = dist.get_rank() if ready else 0
    return rank, world_size


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidOptionError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


class BudgetBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices within ``max_tokens`` (and ``max_patches``) each.

    ``sizes``: ``(num_tokens, num_patches)`` per index (``dataset.sizes``: a
    :class:`~vlutils.train.SizeTable`, an ``(N, 2)`` array, or a list with None for an index to
    leave out). A sample over a budget raises ``SampleTooLongError`` naming its index.

    ``rank``/``world_size``: default from ``torch.distributed`` when initialised, else 0 and 1.
    ``sources``: the source number of each index (``PreparedDataset.sources``; names work too);
    ``weights``: per-source weights (a sequence by source number, or a mapping from number or
    name), read as ``weights_mode`` ``"multiplier"`` (``round(w * n)`` samples of a source of
    ``n``) or ``"proportion"`` (shares of an epoch of ``epoch_size`` samples).
    ``drop_remainder``: False (default) splits the largest batches so the batch count is a
    multiple of ``world_size`` (every sample used once); True drops the last ``B % world_size``
    batches (``plan().dropped`` lists their samples). ``buffer_size``: the packing window in
    samples (default: about 32 batches' worth); ``min_fill``: batches filled less are packed again.
    ``cost_model``: how a batch's compute is estimated when balancing ranks (:class:`CostModel`).
    """

    def __init__(
        self,
        sizes: SizeTable | np.ndarray | Sequence[tuple[int, int] | None],
        max_tokens: int,
        max_patches: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        sources: Sequence | np.ndarray | None = None,
        weights: Sequence[float] | Mapping | None = None,
        weights_mode: str = "multiplier",
        epoch_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_remainder: bool = False,
        buffer_size: int | None = None,
        min_fill: float = 0.9,
        cost_model: CostModel | None = None,
    ):
        self.max_tokens = _check_int("max_tokens", max_tokens, 1)
        self.max_patches = None if max_patches is None else _check_int("max_patches", max_patches, 1)
        rank, world_size = _distributed_default(rank, world_size)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise InvalidOptionError(f"rank must lie in [0, world_size={self.world_size}), got {rank}")
        if buffer_size is not None:
            buffer_size = _check_int("buffer_size", buffer_size, 1)
        if not 0.0 <= min_fill <= 1.0:
            raise InvalidOptionError(f"min_fill must lie in [0, 1], got {min_fill!r}")
        if weights_mode not in mixture.WEIGHT_MODES:
            raise InvalidOptionError(f"weights_mode must be one of {mixture.WEIGHT_MODES}, got {weights_mode!r}")
        self.seed = _check_int("seed", seed, -(1 << 62))
        self.shuffle, self.drop_remainder, self.min_fill = bool(shuffle), bool(drop_remainder), float(min_fill)
        self.weights_mode, self.epoch_size = weights_mode, epoch_size
        self.cost_model = cost_model or CostModel()
        self._sizes, self._valid = _size_arrays(sizes)
        self._check_budgets()
        self._source, self.source_names = _source_numbers(sources, len(self._sizes))
        if weights is not None and not isinstance(weights, Mapping) and not isinstance(self.source_names[0], str):
            weights = list(weights)  # a weight per source number: sources without samples may have one
            self.source_names = list(range(max(len(self.source_names), len(weights))))
        self.weights = mixture.source_weights(weights, len(self.source_names), self.source_names)
        self._available = np.bincount(self._source[self._valid], minlength=len(self.source_names))
        self.counts = mixture.source_counts(self._available, self.weights, weights_mode, epoch_size)
        budget = np.array([self.max_tokens, self.max_patches or np.iinfo(np.int64).max // 4])
        self.buffer_size = buffer_size or auto_window(self._sizes[self._valid], budget)
        self._fingerprint = self._digest()
        self.epoch = 0
        self._history: list[tuple[int, int]] = []  # (world size, steps consumed) of earlier parts of the epoch
        self._position = 0  # steps consumed in the current part (what state_dict reports)
        self._start = 0  # where the next iter() starts
        self._plan_cache: tuple[tuple, EpochPlan] | None = None
        self._iterated: set[int] = set()

    # ---- epoch and plan -------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Plan ``epoch`` next (a new order when ``shuffle``), as DistributedSampler does; the same
        epoch again keeps a position restored by :meth:`load_state_dict`."""
        epoch = _check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.epoch, self._history, self._position, self._start = epoch, [], 0, 0

    def plan(self) -> EpochPlan:
        """This rank's plan of the current epoch (and part, after an elastic resume); cached."""
        key = (self.epoch, tuple(self._history))
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = None  # free the old plan before building the new one
            self._plan_cache = (key, self._build_plan())
        return self._plan_cache[1]

    def _build_plan(self) -> EpochPlan:
        valid = np.flatnonzero(self._valid)
        order = mixture.epoch_order(valid, self._source[valid], self.counts, seed=self.seed, epoch=self.epoch,
                                    shuffle=self.shuffle)
        batches = pack_epoch(order, self._sizes, self.max_tokens, self.max_patches, window=self.buffer_size,
                             min_fill=self.min_fill)
        del order
        costs = self.cost_model.sample_costs(self._sizes)
        # earlier parts of the epoch (elastic resume): their consumed steps are gone, the rest regroups
        for world_size, consumed in self._history:
            fitted, steps, dropped = self._fit_and_group(batches, costs, world_size)
            rest = _concat(fitted.take(steps[consumed:].ravel()), dropped)
            batches = rest.take(np.argsort(rest.keys, kind="stable"))
        batches, steps, dropped = self._fit_and_group(batches, costs, self.world_size)
        mine = batches.take(steps[:, self.rank])
        step_costs = batches.totals(costs)[steps]
        num_samples = int(self.counts.sum())
        logger.debug("epoch %d: %d samples -> %d batches, %d steps of %d ranks, %d samples dropped", self.epoch,
                     num_samples, len(batches), len(steps), self.world_size, len(dropped.items))
        return EpochPlan(mine, len(steps), num_samples, dropped.items, step_costs)

    def _fit_and_group(self, batches: Batches, costs: np.ndarray,
                       world_size: int) -> tuple[Batches, np.ndarray, Batches]:
        """(batches fitted to a multiple of ``world_size``, their steps x ranks ids, dropped batches)."""
        fitted, dropped = fit_world_size(batches, world_size, self.drop_remainder)
        steps = group_steps(fitted.totals(costs), fitted.keys, world_size)
        fitted = rebalance(fitted, steps, costs, self._sizes, self.max_tokens, self.max_patches)
        return fitted, steps, dropped

    # ---- iteration ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[int]]:
        self._position = self._start  # what state_dict() reports until the first batch
        return self._batches()

    def _batches(self) -> Iterator[list[int]]:
        # The restored position is taken when the first batch is drawn, not at iter(): a DataLoader
        # with workers calls iter() twice and uses the second iterator.
        plan = self.plan()
        start = min(self._start, plan.num_steps)
        self._start = 0  # a restored position applies to one pass
        self._position = start
        if self.epoch in self._iterated and start == 0 and self.shuffle:
            logger.warning("BudgetBatchSampler: epoch %d iterated again; call set_epoch(epoch) every epoch for a "
                           "new order", self.epoch)
        self._iterated.add(self.epoch)
        items, offsets = plan.batches.items, plan.batches.offsets
        for step in range(start, plan.num_steps):
            batch = items[offsets[step]:offsets[step + 1]].tolist()
            self._position = step + 1
            yield batch

    def __len__(self) -> int:
        """Batches the next ``iter()`` yields on this rank (the epoch's, or what is left of it
        after :meth:`load_state_dict`); the plan is cached per epoch."""
        return max(self.plan().num_steps - self._start, 0)

    # ---- state ----------------------------------------------------------------------------------

    @property
    def start_step(self) -> int:
        """The step the next ``iter()`` starts at (0, or a position restored by :meth:`load_state_dict`)."""
        return self._start

    def state_dict(self, step: int | None = None) -> dict:
        """Where the epoch stands: a small dict (no per-sample lists), the same on every rank.

        ``step``: the steps of the current epoch (part) consumed; default: the batches this
        sampler has handed out, which a prefetching ``DataLoader`` takes ahead of the training loop
        (torchdata's ``StatefulDataLoader`` and :class:`~vlutils.train.ResumableLoader` account for
        that; with a plain ``DataLoader`` pass the loop's count)."""
        step = self._position if step is None else _check_int("step", step, 0)
        return {"format": STATE_FORMAT, "seed": self.seed, "epoch": self.epoch, "world_size": self.world_size,
                "step": step, "history": [list(h) for h in self._history], "fingerprint": self._fingerprint}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state`` at the next ``iter()``: the batches after ``state["step"]``
        (on every rank). A state from another world size continues the same epoch: the batches
        not yet consumed are regrouped for this world size."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise InvalidOptionError(f"not a BudgetBatchSampler state (format {STATE_FORMAT!r} expected)")
        if state["fingerprint"] != self._fingerprint:
            raise InvalidOptionError("the state was saved by a sampler over other sizes, sources, weights or "
                                     "options (fingerprint differs); resume with the same dataset and settings")
        if state["seed"] != self.seed:
            raise InvalidOptionError(f"the state was saved with seed {state['seed']}, this sampler has {self.seed}")
        history = [(int(w), int(k)) for w, k in state["history"]]
        saved_world, step = int(state["world_size"]), int(state["step"])
        if saved_world != self.world_size:
            history.append((saved_world, step))
            step = 0
        self.epoch, self._history = int(state["epoch"]), history
        self._start = self._position = step

    def _digest(self) -> str:
        """What a plan depends on besides (seed, epoch, world sizes, steps): sizes, sources,
        weights and options (blake2b over the arrays; a few ms per million samples)."""
        h = hashlib.blake2b(digest_size=12)
        for array in (self._sizes, self._valid, self._source, self.weights, self.counts):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(repr((self.max_tokens, self.max_patches, self.shuffle, self.drop_remainder, self.buffer_size,
                       self.min_fill, self.cost_model, self.weights_mode)).encode())
        return h.hexdigest()

    def _check_budgets(self) -> None:
        for column, budget, what in ((0, self.max_tokens, "tokens"), (1, self.max_patches, "vision patches")):
            if budget is None:
                continue
            over = np.flatnonzero(self._valid & (self._sizes[:, column] > budget))
            if len(over):
                index = int(over[0])
                value = int(self._sizes[index, column])
                raise SampleTooLongError(f"{value} {what} > the batch budget of {budget}", position=f"sample {index}",
                                         length=value, max_length=budget)


def _concat(*parts: Batches) -> Batches:
    items = np.concatenate([p.items for p in parts])
    counts = np.concatenate([p.counts() for p in parts])
    keys = np.concatenate([p.keys for p in parts])
    return Batches(items, np.concatenate(([0], np.cumsum(counts))).astype(np.int64), keys)


def _size_arrays(sizes: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2)`` int64 sizes and the ``(N,)`` validity mask, from any accepted form."""
    if isinstance(sizes, SizeTable):
        array, valid = sizes.array, sizes.valid
    elif isinstance(sizes, np.ndarray):
        array, valid = sizes, None
    else:
        try:
            table = SizeTable.from_list(list(sizes))
        except (TypeError, ValueError):
            raise InvalidOptionError("sizes must be (num_tokens, num_patches) pairs of ints (or None)") from None
        array, valid = table.array, table.valid
    if array.ndim != 2 or array.shape[1] != 2 or not np.issubdtype(array.dtype, np.integer):
        raise InvalidOptionError(f"sizes must be an (N, 2) integer array, got shape {array.shape} {array.dtype}")
    array = np.asarray(array, dtype=np.int64)
    valid = np.ones(len(array), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    bad = np.flatnonzero(valid & (array < 0).any(1))
    if len(bad):
        raise InvalidOptionError(f"sizes must be non-negative (sample {int(bad[0])})")
    return array, valid


def _source_numbers(sources: Any, count: int) -> tuple[np.ndarray, list]:
    """(source number per index, name of each number); names are sorted when strings are given."""
    if sources is None or count == 0:
        return np.zeros(count, dtype=np.int64), [0]
    array = np.asarray(sources)
    if array.shape != (count,):
        raise InvalidOptionError(f"sources must give one source per sample ({count}), got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        if count and array.min() < 0:
            raise InvalidOptionError("source numbers must be >= 0")
        num = int(array.max()) + 1 if count else 1
        return array.astype(np.int64), list(range(num))
    names, numbers = np.unique(array.astype(str), return_inverse=True)
    return numbers.astype(np.int64), names.tolist()
