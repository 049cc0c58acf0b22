"""vlmodel: a compact reference Qwen2-VL / Qwen2.5-VL in plain PyTorch.

Read in this order: ``config`` (what a checkpoint describes), ``vision`` (the ViT),
``text`` (the Qwen2 decoder with M-RoPE), ``model`` (how the two meet), ``loading``,
``generate``.  Loads original Hugging Face checkpoints and reproduces transformers'
logits; no transformers import at run time.
"""

from .config import ConfigError, ModelConfig, TextConfig, VisionConfig
from .generate import generate, sample_next, stream
from .loading import CheckpointError, from_pretrained
from .model import Output, Qwen2VL
from .text import KVCache

__all__ = [
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "Output",
    "Qwen2VL",
    "TextConfig",
    "VisionConfig",
    "from_pretrained",
    "generate",
    "sample_next",
    "stream",
]
