"""A batch sampler whose batches fit two budgets (text tokens and vision patches), streaming.

Indices are read in order (or shuffled per epoch), ``buffer_size`` at a time; each buffer is
packed with :func:`vlutils.train.pack`; well-filled bins are yielded, and the items of
under-filled bins (below ``min_fill`` of the binding budget) are carried into the next buffer,
where they get a second chance to be combined. The last buffer yields everything. Memory is
O(buffer_size) beyond the sizes themselves, so the sampler works on large datasets.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

from torch.utils.data import Sampler

from ..errors import InvalidOptionError, SampleTooLongError
from .packing import pack

__all__ = ["BudgetBatchSampler"]


class BudgetBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices within ``max_tokens`` (and ``max_patches``) each.

    ``sizes``: ``(num_tokens, num_patches)`` per index, None for an index to leave out (a
    sample dropped or skipped when sizes were computed). A sample over a budget raises
    ``SampleTooLongError`` naming it, as :func:`pack` does. Deterministic for a given
    ``seed`` and epoch (:meth:`set_epoch`).
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int] | None],
        max_tokens: int,
        max_patches: int | None = None,
        *,
        buffer_size: int = 4096,
        shuffle: bool = False,
        seed: int = 0,
        min_fill: float = 0.9,
    ):
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise InvalidOptionError(f"buffer_size must be a positive int, got {buffer_size!r}")
        if not 0.0 <= min_fill <= 1.0:
            raise InvalidOptionError(f"min_fill must lie in [0, 1], got {min_fill!r}")
        self.sizes = list(sizes)
        pack([s for s in self.sizes if s is not None][:0], max_tokens, max_patches)  # checks the budgets
        for index, size in enumerate(self.sizes):
            if size is None:
                continue
            for value, budget, what in ((size[0], max_tokens, "tokens"), (size[1], max_patches, "vision patches")):
                if budget is not None and value > budget:
                    raise SampleTooLongError(f"{value} {what} > the batch budget of {budget}", position=f"sample {index}",
                                             length=int(value), max_length=budget)
        self.max_tokens, self.max_patches = max_tokens, max_patches
        self.buffer_size, self.shuffle, self.seed, self.min_fill = buffer_size, shuffle, seed, min_fill
        self.epoch = 0
        self._length: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (when ``shuffle``), as DistributedSampler does."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = [i for i, size in enumerate(self.sizes) if size is not None]
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        carry: list[int] = []
        for start in range(0, len(order), self.buffer_size):
            buffer = carry + order[start:start + self.buffer_size]
            last = start + self.buffer_size >= len(order)
            bins = pack([self.sizes[i] for i in buffer], self.max_tokens, self.max_patches)
            carry = []
            for b in bins:
                batch = [buffer[j] for j in b]
                if not last and self._fill(batch) < self.min_fill and len(carry) < self.buffer_size // 2:
                    carry.extend(batch)
                else:
                    yield batch

    def __len__(self) -> int:
        """Batches in this epoch (computed by a dry run of the packing, cached per epoch)."""
        if self._length is None or self._length[0] != self.epoch:
            self._length = (self.epoch, sum(1 for _ in self))
        return self._length[1]

    def _fill(self, batch: list[int]) -> float:
        tokens = sum(self.sizes[i][0] for i in batch) / self.max_tokens
        if self.max_patches is None:
            return tokens
        return max(tokens, sum(self.sizes[i][1] for i in batch) / self.max_patches)
