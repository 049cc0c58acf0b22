"""``SizeTable``: the ``(num_tokens, num_patches)`` of every sample of a dataset, as ``dataset.sizes``.

Why a class: ``PreparedDataset.sizes`` and ``ConversationDataset.sizes`` are one spelling (a
property) and must stay cheap for 10 million samples. The table keeps one ``(N, 2)`` int64
array and a validity mask (a sample dropped or skipped when sizes were computed is "missing":
``table[i]`` is ``None``), converts to numpy without a copy (``np.asarray(table)``), and still
reads like the old list of tuples (``table[i] == (tokens, patches)``, ``list(table)``).
Calling it (``ds.sizes()``, the old method spelling) still works, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import numpy as np

__all__ = ["SizeTable"]


class SizeTable(Sequence):
    """Sizes of N samples: ``array`` ``(N, 2)`` int64 (tokens, patches), ``valid`` ``(N,)`` bool."""

    def __init__(self, array: np.ndarray, valid: np.ndarray | None = None):
        array = np.asarray(array, dtype=np.int64).reshape(-1, 2)
        self.array = array
        self.valid = np.ones(len(array), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        if self.valid.shape != (len(array),):
            raise ValueError(f"valid must have one flag per sample ({len(array)}), got shape {self.valid.shape}")
        self.array.setflags(write=False)
        self.valid.setflags(write=False)

    @classmethod
    def from_list(cls, sizes: Sequence[tuple[int, int] | None]) -> "SizeTable":
        """From a list of ``(tokens, patches)`` pairs, None for a missing sample."""
        valid = np.fromiter((s is not None for s in sizes), dtype=bool, count=len(sizes))
        array = np.zeros((len(sizes), 2), dtype=np.int64)
        if valid.any():
            array[valid] = np.asarray([s for s in sizes if s is not None], dtype=np.int64).reshape(-1, 2)
        return cls(array, valid)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):  # an int -> a tuple (or None); a slice -> a list
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not self.valid[index]:
            return None
        tokens, patches = self.array[index]
        return (int(tokens), int(patches))

    def __iter__(self) -> Iterator[tuple[int, int] | None]:
        valid = self.valid.tolist()
        for pair, ok in zip(self.array.tolist(), valid):
            yield tuple(pair) if ok else None

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def __eq__(self, other) -> bool:
        if isinstance(other, SizeTable):
            return bool(np.array_equal(self.array[self.valid], other.array[other.valid])
                        and np.array_equal(self.valid, other.valid))
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # mutable-looking container semantics, like list

    def __repr__(self) -> str:
        return f"SizeTable({len(self)} samples, {int((~self.valid).sum())} missing)"

    def __call__(self, num_workers: int = 0) -> list[tuple[int, int] | None]:
        """The old method spelling ``ds.sizes()``: deprecated, returns a plain list."""
        warnings.warn("dataset.sizes is a property now: use `ds.sizes` (no call); "
                      "ConversationDataset.compute_sizes(num_workers) computes them in workers",
                      DeprecationWarning, stacklevel=2)
        return list(self)
