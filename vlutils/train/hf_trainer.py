"""vlutils batches in transformers' ``Trainer`` and TRL's ``SFTTrainer``.

What goes wrong without this module (each tried as a new user would):

- ``Trainer`` builds its DataLoader from ``per_device_train_batch_size``; a budget batch sampler
  (batches of varying size within token/patch budgets) needs a hand-written subclass, and
  accelerate would split the sampler's batches across ranks a second time;
- ``SFTTrainer`` only takes a ``datasets.Dataset``, prepares (tokenizes) it unless told not to,
  and, like ``Trainer``, drops every column the model's ``forward`` does not name unless
  ``remove_unused_columns=False``: ``pixel_values`` / ``position_ids`` vanish silently and the
  failure surfaces later, far from its cause;
- a packed row (``collate(packed=True)``: ``cu_seqlens``) given straight to a transformers model
  is accepted silently, ``cu_seqlens`` ignored: its samples attend to each other;
- with packed rows (no ``attention_mask``) TRL counts ``position_ids.size(1)`` tokens: 1 per step.

The pieces:

- :func:`index_dataset` (a ``datasets.Dataset`` of ``{"index": i}`` rows) and :class:`IndexCollator`
  (rows -> ``dataset[i]`` -> :func:`~vlutils.train.collate`, packed rows converted with
  :func:`~vlutils.train.to_transformers` for transformers models) make any map-style dataset
  (``PreparedDataset``, ``ConversationDataset``, a list) usable by ``SFTTrainer``;
- :class:`VLTrainerMixin`, put before ``Trainer`` / ``SFTTrainer`` in a class's bases (or use
  :func:`trainer_class`): ``train_batch_sampler=`` (e.g. ``BudgetBatchSampler``, already
  per-rank: not split again; ``set_epoch`` is called every epoch), refuses rows when
  ``remove_unused_columns`` would strip them, refuses a packed batch for a model that does not
  take ``cu_seqlens`` (pointing to ``to_transformers``), fixes TRL's token count for packed rows,
  and lets vlmodel (whose ``Output`` is not a transformers ``ModelOutput``) train with
  ``num_items_in_batch``.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from ..errors import InvalidOptionError
from .collate import collate, to_transformers

__all__ = ["EpochDataLoader", "IndexCollator", "VLTrainerMixin", "index_dataset", "trainer_class"]

PACKED_TO_TRANSFORMERS = (
    "a packed batch (cu_seqlens) was given to {model}, whose forward has no cu_seqlens: transformers would "
    "ignore it and let the packed samples attend to each other. Pass the batch through "
    "vlutils.train.to_transformers(batch) (IndexCollator(..., packed=True) does), or collate with packed=False."
)


def index_dataset(length: int):
    """A ``datasets.Dataset`` with one column, ``index`` = 0..length-1: what ``SFTTrainer`` insists on,
    standing in for a map-style dataset that :class:`IndexCollator` reads."""
    import datasets

    return datasets.Dataset.from_dict({"index": list(range(length))})


class IndexCollator:
    """``data_collator`` turning rows into one model batch.

    A row is ``{"index": i}`` (from :func:`index_dataset`; the sample is ``dataset[i]``) or a
    ``build_sample`` dict. ``packed``: one packed row per batch; for a transformers model
    (``for_transformers=True``, the default) converted with :func:`to_transformers` (4-row
    positions, ``use_cache=False``); vlmodel takes the packed batch as it is
    (``for_transformers=False``). Picklable, so DataLoader workers (fork or spawn) can run it.
    """

    def __init__(self, dataset: Any = None, *, packed: bool = False, for_transformers: bool = True,
                 pad_token_id: int = 0, pad_to_multiple_of: int | None = None):
        self.dataset, self.packed, self.for_transformers = dataset, packed, for_transformers
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, rows: Sequence[Any]) -> dict:
        samples = [self._sample(row) for row in rows]
        batch = collate(samples, packed=self.packed, pad_token_id=self.pad_token_id,
                        pad_to_multiple_of=self.pad_to_multiple_of)
        if self.packed and self.for_transformers:
            return to_transformers(batch)
        return batch

    def _sample(self, row: Any) -> Any:
        if isinstance(row, dict) and set(row) == {"index"}:
            if self.dataset is None:
                raise InvalidOptionError("IndexCollator got index rows but no dataset to read them from")
            return self.dataset[int(row["index"])]
        if isinstance(row, dict) and not row:
            raise InvalidOptionError("IndexCollator got an empty row: the trainer removed its columns; set "
                                     "remove_unused_columns=False in TrainingArguments / SFTConfig")
        return row


class EpochDataLoader(DataLoader):
    """A DataLoader over a ``batch_sampler`` whose ``set_epoch`` reaches the sampler (``Trainer`` calls
    ``set_epoch`` on its loader every epoch; a plain DataLoader has none, so a shuffling sampler
    would repeat one order every epoch)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


def _forward_takes(model: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


class VLTrainerMixin:
    """Mix into ``transformers.Trainer`` or ``trl.SFTTrainer`` (first in the bases); see the module doc.

    ``train_batch_sampler``: yields this rank's batches (lists of indices into ``train_dataset``);
    the training DataLoader uses it as it is (``per_device_train_batch_size`` is ignored).
    """

    def __init__(self, *args: Any, train_batch_sampler: Any = None, **kwargs: Any):
        self.train_batch_sampler = train_batch_sampler
        super().__init__(*args, **kwargs)
        if train_batch_sampler is not None and self.args.remove_unused_columns:
            raise InvalidOptionError("a train_batch_sampler needs remove_unused_columns=False in TrainingArguments / "
                                     "SFTConfig: the trainer would otherwise drop every column the model's forward "
                                     "does not name (pixel_values, position_ids, index) before collate sees them")

    def get_train_dataloader(self) -> DataLoader:
        if self.train_batch_sampler is None:
            return super().get_train_dataloader()
        from transformers.trainer_utils import seed_worker

        workers = self.args.dataloader_num_workers
        extra = {"prefetch_factor": self.args.dataloader_prefetch_factor} if workers > 0 else {}
        # Not accelerator.prepare()d: that would shard the sampler's per-rank batches across ranks again.
        # Trainer moves each batch to the device itself (_prepare_inputs).
        return EpochDataLoader(
            self.train_dataset, batch_sampler=self.train_batch_sampler, collate_fn=self.data_collator,
            num_workers=workers, pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=self.args.process_index), **extra)

    def compute_loss(self, model: torch.nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        unwrapped = self.accelerator.unwrap_model(model)
        if "cu_seqlens" in inputs and not _forward_takes(unwrapped, "cu_seqlens"):
            raise InvalidOptionError(PACKED_TO_TRANSFORMERS.format(model=type(unwrapped).__name__))
        if not _is_transformers_model(unwrapped):
            return self._vlmodel_loss(model, inputs, return_outputs, num_items_in_batch)
        tokens_before = getattr(self, "_total_train_tokens", None)
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if tokens_before is not None and model.training and "attention_mask" not in inputs:
            # TRL counted position_ids.size(1) tokens (1 for a packed row): count the row's tokens
            local = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens = tokens_before + int(self.accelerator.gather_for_metrics(local).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

    def _vlmodel_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """vlmodel: ``num_items_in_batch`` into its forward, loss from ``Output.loss``, scaled as Trainer does."""
        kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs, **kwargs)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages over ranks; the count covers all of them
        return (loss, outputs) if return_outputs else loss


def _is_transformers_model(model: torch.nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - the mixin is only used with transformers installed
        return False
    return isinstance(model, PreTrainedModel) or hasattr(model, "get_base_model")  # PEFT wrappers too


_CLASSES: dict[type, type] = {}


def trainer_class(base: type | None = None) -> type:
    """``VLTrainerMixin`` + ``base`` (default ``transformers.Trainer``; e.g. ``trl.SFTTrainer``), cached."""
    if base is None:
        from transformers import Trainer as base  # noqa: N813
    if base not in _CLASSES:
        _CLASSES[base] = type(f"VL{base.__name__}", (VLTrainerMixin, base), {"__module__": __name__})
    return _CLASSES[base]
