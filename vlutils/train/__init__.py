"""Training samples for Qwen2-VL-family models: assistant-only labels, packing, batching.

``build_sample`` (one conversation -> input ids, labels, positions, vision tensors, sizes).
"""

from .labels import IGNORE_INDEX
from .sample import build_sample

__all__ = ["IGNORE_INDEX", "build_sample"]
