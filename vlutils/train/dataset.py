"""A ``torch.utils.data.Dataset`` of conversations that builds training samples in workers.

    ds = ConversationDataset("train.jsonl", tokenizer, "qwen2_5_vl", max_length=8192, truncation="shrink")
    sampler = BudgetBatchSampler(ds.sizes, max_tokens=16384, max_patches=65536)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)

Records: one conversation per JSONL line (or per list element), either a list of messages or
an object ``{"messages": [...], "id": ..., "num_tokens": ..., "num_patches": ...}``; the
optional sizes let :attr:`sizes` skip building every sample up front. The dataset holds only
the file path and line offsets, so it pickles cheaply to ``spawn`` workers.

Errors: by default a bad sample raises its typed error (a ``ValueError`` naming the
conversation) in the main process. With ``on_error="skip"`` it becomes a :class:`Skipped`
record instead: logged as a warning, appended to ``skip_log`` (JSONL, safe across worker
processes) when given, kept in ``dataset.skipped`` (per process), and passed on to ``collate``,
which leaves it out of the tensors and lists it in ``batch.skipped``. Nothing is skipped silently.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import Dataset

from ..errors import InvalidMessageError, InvalidOptionError
from .sample import build_sample
from .sizes import SizeTable

__all__ = ["ConversationDataset", "Skipped", "read_skip_log"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """A sample left out in skip mode, and why (the error's type and message)."""

    index: int
    sample_id: str
    error: str
    reason: str


class ConversationDataset(Dataset):
    """Conversations (a JSONL path or a list) -> ``build_sample`` dicts, one per index."""

    def __init__(
        self,
        source: str | os.PathLike | Sequence[Any],
        tokenizer: Any,
        model_type: str = "qwen2_vl",
        *,
        max_length: int | None = None,
        truncation: str = "error",
        on_error: str = "raise",
        skip_log: str | os.PathLike | None = None,
        **options: Any,
    ):
        if on_error not in ("raise", "skip"):
            raise InvalidOptionError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.tokenizer, self.model_type, self.options = tokenizer, model_type, options
        self.max_length, self.truncation, self.on_error = max_length, truncation, on_error
        self.skip_log = None if skip_log is None else str(skip_log)
        self.skipped: list[Skipped] = []
        self._sizes: SizeTable | None = None
        if isinstance(source, (str, os.PathLike)):
            self.path: str | None = str(source)
            self.records: list | None = None
            self.offsets = _line_offsets(self.path)
        else:
            self.path, self.records, self.offsets = None, list(source), None

    def __len__(self) -> int:
        return len(self.offsets) if self.records is None else len(self.records)

    def record(self, index: int) -> Any:
        """The raw record at ``index`` (a parsed JSONL line or the list element)."""
        if self.records is not None:
            return self.records[index]
        with open(self.path, "rb") as fh:
            fh.seek(self.offsets[index])
            line = fh.readline()
        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidMessageError(f"not valid JSON ({exc.msg})", position=self._name(index, None)) from None

    def __getitem__(self, index: int) -> dict | Skipped | None:
        """A sample, None when ``truncation="drop"`` dropped it, or a :class:`Skipped` in skip mode."""
        record = None
        try:
            record = self.record(index)
            messages, sample_id = _messages(record, self._name(index, None))
            return build_sample(messages, self.tokenizer, self.model_type, max_length=self.max_length,
                                truncation=self.truncation, sample_id=self._name(index, sample_id), **self.options)
        except ValueError as exc:  # every vlutils error is a ValueError
            if self.on_error == "raise":
                raise
            return self._skip(index, record, exc)

    @property
    def sizes(self) -> SizeTable:
        """``(num_tokens, num_patches)`` per index (a :class:`SizeTable`; ``sizes[i]`` is None for a
        dropped or skipped sample), computed once by :meth:`compute_sizes` in this process."""
        if self._sizes is None:
            self.compute_sizes()
        return self._sizes

    def compute_sizes(self, num_workers: int = 0) -> SizeTable:
        """Compute :attr:`sizes`: from the records when they carry both sizes, else by building
        the sample (in ``num_workers`` DataLoader workers when > 0); skips are recorded as in
        ``__getitem__``."""
        out: list[tuple[int, int] | None] = [None] * len(self)
        todo = []
        for index in range(len(self)):
            record = self.record(index)
            if isinstance(record, dict) and "num_tokens" in record and "num_patches" in record:
                out[index] = (int(record["num_tokens"]), int(record["num_patches"]))
            else:
                todo.append(index)
        if num_workers > 0 and todo:
            from torch.utils.data import DataLoader, Subset

            loader = DataLoader(Subset(self, todo), batch_size=None, num_workers=num_workers, collate_fn=_size_of)
            results = list(loader)
        else:
            results = [_size_of(self[index]) for index in todo]
        for index, result in zip(todo, results):
            if isinstance(result, Skipped):
                if num_workers > 0:
                    self.skipped.append(result)  # recorded in a worker: keep it here too
                continue
            out[index] = result
        self._sizes = SizeTable.from_list(out)
        return self._sizes

    def _name(self, index: int, sample_id: Any) -> str:
        where = f"{self.path}:{index + 1}" if self.path is not None else f"#{index}"
        return where if sample_id is None else f"{sample_id} ({where})"

    def _skip(self, index: int, record: Any, exc: Exception) -> Skipped:
        sample_id = record.get("id") if isinstance(record, dict) else None
        skipped = Skipped(index, self._name(index, sample_id), type(exc).__name__, str(exc))
        logger.warning("skipped %s: %s: %s", skipped.sample_id, skipped.error, skipped.reason)
        self.skipped.append(skipped)
        if self.skip_log is not None:
            line = (json.dumps(asdict(skipped), ensure_ascii=False) + "\n").encode()
            fd = os.open(self.skip_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write per record: appends from workers do not interleave
            finally:
                os.close(fd)
        return skipped


def _size_of(sample: Any) -> tuple[int, int] | Skipped | None:
    """What sizes() keeps of a built sample (module level: picklable for spawn workers)."""
    if isinstance(sample, dict):
        return (sample["num_tokens"], sample["num_patches"])
    return sample


def read_skip_log(path: str | os.PathLike) -> list[Skipped]:
    """The records a skip-mode dataset appended to ``skip_log``."""
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [Skipped(**json.loads(line)) for line in fh if line.strip()]


def _messages(record: Any, name: str) -> tuple[list, Any]:
    if isinstance(record, dict):
        messages = record.get("messages")
        sample_id = record.get("id")
    else:
        messages, sample_id = record, None
    if not isinstance(messages, list):
        raise InvalidMessageError("a record must be a list of messages or an object with 'messages'", position=name)
    return messages, sample_id


def _line_offsets(path: str) -> list[int]:
    """Byte offset of every non-blank line."""
    offsets, position = [], 0
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    offsets.append(position)
                position += len(line)
    except OSError as exc:
        raise InvalidOptionError(f"cannot read conversations: {exc.strerror}", path) from None
    return offsets
