"""Resuming a ``DataLoader`` over a :class:`~vlutils.train.BudgetBatchSampler` mid-epoch.

The sampler's state is the whole story: the batch sampler runs in the main process, so the
worker count changes nothing in which batches come next. Two ways to keep it:

- torchdata's ``StatefulDataLoader``: its ``state_dict()`` holds the sampler's state at the
  last batch it yielded (it snapshots the sampler as each batch is dispatched). Its own
  ``load_state_dict`` refuses another ``num_workers``; :func:`sampler_state` pulls the sampler
  state out of it, and ``sampler.load_state_dict(sampler_state(saved))`` then makes a new loader
  with any worker count continue exactly.
- :class:`ResumableLoader` (no torchdata): a ``DataLoader`` wrapper that counts the batches the
  loop consumed, so its ``state_dict()`` is exact although the loader prefetches.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from torch.utils.data import DataLoader, Dataset

from ..errors import InvalidOptionError
from .sampler import STATE_FORMAT, BudgetBatchSampler

__all__ = ["ResumableLoader", "sampler_state"]


def sampler_state(state: Mapping) -> dict:
    """The :class:`BudgetBatchSampler` state in ``state``: a sampler state as is, or the one a
    torchdata ``StatefulDataLoader.state_dict()`` holds (any worker count), at the batches the
    loader had yielded."""
    if not isinstance(state, Mapping):
        raise InvalidOptionError(f"a sampler or StatefulDataLoader state must be a dict, got {type(state).__name__}")
    if state.get("format") == STATE_FORMAT:
        return dict(state)
    if "_snapshot" in state:  # num_workers > 0: the snapshot at a yielded batch, then a few more batches
        inner = state["_snapshot"]["_main_snapshot"].get("_index_sampler_state")
        extra = int(state.get("_steps_since_snapshot", 0))
    else:  # num_workers == 0: taken when asked, nothing prefetched
        inner, extra = state.get("_index_sampler_state"), 0
    if not isinstance(inner, Mapping) or inner.get("format") != STATE_FORMAT:
        raise InvalidOptionError("this loader state holds no BudgetBatchSampler state (was the loader built with "
                                 "batch_sampler=BudgetBatchSampler(...)?)")
    out = dict(inner)
    out["step"] = int(out["step"]) + extra
    return out


class ResumableLoader:
    """``DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)`` whose ``state_dict()`` is
    the sampler state at the last batch the loop received (prefetched batches do not count).

    ``state``: continue from a saved state (this loader's, a sampler's, or a torchdata
    ``StatefulDataLoader``'s from any worker count). Iterate it like the ``DataLoader``
    (``.loader``); call ``sampler.set_epoch`` before each epoch as usual.
    """

    def __init__(self, dataset: Dataset, sampler: BudgetBatchSampler, state: Mapping | None = None,
                 **loader_kwargs: Any):
        if "batch_sampler" in loader_kwargs or "batch_size" in loader_kwargs:
            raise InvalidOptionError("ResumableLoader sets batch_sampler itself; leave out batch_sampler/batch_size")
        self.sampler = sampler
        self.loader = DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)
        self._start, self._consumed = 0, 0
        if state is not None:
            self.load_state_dict(state)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self._start, self._consumed = self.sampler.start_step, 0
        for batch in self.loader:
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict:
        """The sampler state after the batches the loop has received."""
        return self.sampler.state_dict(step=self._start + self._consumed)

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.load_state_dict(sampler_state(state))
        self._start, self._consumed = self.sampler.start_step, 0
