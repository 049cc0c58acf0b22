"""vlmodel: one compact Qwen-VL / Qwen2-VL / Qwen2.5-VL / Qwen3-VL(-MoE) / Qwen3.5(-MoE) in plain PyTorch.

A family is a set of configuration fields, not a class: every difference between the
checkpoints (attention biases, q/k norm, rotary layout, window attention, DeepStack,
layer types, MoE shape) is a field read from ``config.json``.

Read in this order:

1. ``config``: what a checkpoint describes, and the per-family defaults (:data:`FAMILIES`);
2. ``layers``, ``rotary``: norms, MLPs, M-RoPE (contiguous / interleaved / partial) and the ViT's 2-D RoPE;
3. ``vision_grid``, ``vision``: the ViT (patches, position table, windows, mergers, DeepStack);
4. ``attention``, ``moe``, ``decoder``: the token mixers (one per ``layer_types`` entry; the
   gated DeltaNet lives in ``deltanet``), the MoE MLP, and the decoder with its per-layer cache;
5. ``positions``, ``model``: M-RoPE ids and how vision and text meet (placeholders, DeepStack,
   packed rows, the loss);
6. ``weights``, ``loading``: checkpoint names per family, then files into the model;
7. ``generate``: prefill + cached decoding;
8. ``quant``: GPTQ / AWQ / compressed-tensors checkpoints, their linear layers kept packed;
9. ``qwen_vl_vision``, ``qwen_vl``: the first generation (Qwen-VL / Qwen-VL-Chat), whose ViT +
   Resampler and ``<img>`` spans differ from the rest; its decoder is the same ``TextModel``.

Loads original Hugging Face checkpoints and reproduces transformers' logits; no
transformers import at run time.
"""

from .attention import KVCache
from .config import FAMILIES, ConfigError, ModelConfig, TextConfig, VisionConfig
from .decoder import Cache
from .generate import generate, sample_next, stream
from .loading import CheckpointError, from_pretrained
from .model import Output, Qwen2VL, VLModel
from .qwen_vl import ImageSpanError, QwenVLModel

__all__ = [
    "FAMILIES",
    "ImageSpanError",
    "QwenVLModel",
    "Cache",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "Output",
    "Qwen2VL",
    "TextConfig",
    "VLModel",
    "VisionConfig",
    "from_pretrained",
    "generate",
    "sample_next",
    "stream",
]
