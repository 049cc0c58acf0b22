"""Training samples for Qwen2-VL-family models: assistant-only labels, packing, batching.

- :func:`build_sample`: one conversation -> input ids, labels, M-RoPE positions, vision tensors, sizes
  (``sample.py``; labels rule in ``labels.py``; ``truncation="shrink"`` in ``shrink.py``);
- :func:`collate`: samples -> one packed row with ``cu_seqlens``, or right-padded rows (``collate.py``);
- :func:`pack`: two-budget bin packing (``packing.py``);
- :class:`ConversationDataset` and :class:`BudgetBatchSampler` for a ``DataLoader`` (``dataset.py``,
  ``sampler.py``): budget batches for one process or every rank of a data-parallel job, mixture
  weights (``mixture.py``), rank balancing (``plan.py``), exact and elastic resume (``resume.py``);
- :class:`SizeTable`: ``dataset.sizes`` of both datasets (``sizes.py``);
- :func:`num_label_tokens`, :func:`global_num_label_tokens`: the ``num_items_in_batch`` of a global
  batch for the loss across micro-batches and ranks (``distributed.py``);
- :class:`VLTrainerMixin`, :func:`trainer_class`, :func:`index_dataset`, :class:`IndexCollator`: transformers'
  ``Trainer`` and TRL's ``SFTTrainer`` with budget batch samplers and packed rows (``hf_trainer.py``).
"""

from .collate import Batch, collate, text_positions, to_transformers
from .dataset import ConversationDataset, Skipped, read_skip_log
from .distributed import global_num_label_tokens, num_label_tokens
from .hf_trainer import EpochDataLoader, IndexCollator, VLTrainerMixin, index_dataset, trainer_class
from .labels import IGNORE_INDEX
from .packing import Bins, lower_bound, pack
from .sample import build_sample
from .plan import CostModel
from .resume import ResumableLoader, sampler_state
from .sampler import BudgetBatchSampler
from .sizes import SizeTable

__all__ = [
    "IGNORE_INDEX", "Batch", "Bins", "BudgetBatchSampler", "ConversationDataset", "CostModel", "EpochDataLoader",
    "IndexCollator", "ResumableLoader", "SizeTable", "Skipped", "VLTrainerMixin", "build_sample", "collate",
    "global_num_label_tokens", "index_dataset", "lower_bound", "num_label_tokens", "pack", "read_skip_log",
    "sampler_state", "text_positions", "to_transformers", "trainer_class",
]
