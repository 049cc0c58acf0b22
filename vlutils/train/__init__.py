"""Training samples for Qwen2-VL-family models: assistant-only labels, packing, batching.

- :func:`build_sample`: one conversation -> input ids, labels, M-RoPE positions, vision tensors, sizes
  (``sample.py``; labels rule in ``labels.py``; ``truncation="shrink"`` in ``shrink.py``);
- :func:`collate`: samples -> one packed row with ``cu_seqlens``, or right-padded rows (``collate.py``);
- :func:`pack`: two-budget bin packing (``packing.py``);
- :class:`ConversationDataset` and :class:`BudgetBatchSampler` for a ``DataLoader`` (``dataset.py``,
  ``sampler.py``): budget batches for one process or every rank of a data-parallel job, mixture
  weights (``mixture.py``), rank balancing (``plan.py``), exact and elastic resume (``resume.py``);
- :class:`SizeTable`: ``dataset.sizes`` of both datasets (``sizes.py``).
"""

from .collate import Batch, collate, text_positions, to_transformers
from .dataset import ConversationDataset, Skipped, read_skip_log
from .labels import IGNORE_INDEX
from .packing import Bins, lower_bound, pack
from .sample import build_sample
from .plan import CostModel
from .resume import ResumableLoader, sampler_state
from .sampler import BudgetBatchSampler
from .sizes import SizeTable

__all__ = [
    "IGNORE_INDEX", "Batch", "Bins", "BudgetBatchSampler", "ConversationDataset", "CostModel", "ResumableLoader",
    "SizeTable", "Skipped", "build_sample", "collate", "lower_bound", "pack", "read_skip_log", "sampler_state",
    "text_positions", "to_transformers",
]
