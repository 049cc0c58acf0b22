"""The facts that make one model generation differ from another, as frozen dataclasses.

Nothing here imports torch, PIL or a video backend: the registry is read by light modules
(the grounding parser, the CLI, ``vlmodel.config``) as well as by the tensor builders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..constants import IMAGE_MAX_TOKEN_NUM, IMAGE_MIN_TOKEN_NUM, VIDEO_MAX_TOKEN_NUM, VIDEO_MIN_TOKEN_NUM

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "USES", "POSITION_STYLES", "VIDEO_TIMESTAMP_RULES", "PIPELINES", "VisionPreset", "ChatFormat",
    "GroundingStyle", "Family",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# What a family can be used for. "inputs": build_inputs, format_chat, patchify, get_rope_index,
# count_tokens and the CLI; "train": build_sample (and the training dataset); "prepare": the
# dataset preparation job (which must accept every family "train" accepts); "grounding":
# vlutils.grounding's parse / format / to_image / to_model.
USES = ("inputs", "train", "prepare", "grounding")

# How M-RoPE position ids treat a video (vlutils.rope):
# "mrope": temporal id = index of the temporal patch (Qwen2-VL);
# "mrope_timed": temporal id = index * second_per_grid_ts * tokens_per_second (Qwen2.5-VL);
# "mrope_per_frame": each temporal patch is its own block with t = 1, time lives in text timestamps (Qwen3-VL).
# "text": plain 1-D positions 0..L-1, no M-RoPE (Qwen-VL).
POSITION_STYLES = ("mrope", "mrope_timed", "mrope_per_frame", "text")

# Where a video's time goes: "none" (Qwen2-VL), "second_per_grid_ts" (a tensor fed to the
# position ids, Qwen2.5-VL), "text" ("<t seconds>" before each temporal patch, Qwen3-VL).
VIDEO_TIMESTAMP_RULES = ("none", "second_per_grid_ts", "text")

# How images become model inputs: "patches" (Qwen2-VL and later: smart_resize, patchify, one
# placeholder per merged patch; vlutils.inputs), "fixed_span" (Qwen-VL: a fixed-size image, a
# fixed <img> span of 256 positions, its own tokenizer and prompt; vlutils.inputs_qwen_vl).
PIPELINES = ("patches", "fixed_span")


@dataclass(frozen=True)
class VisionPreset:
    """The vision preprocessing constants of one model family."""

    patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    temporal_patch_size: int = 2
    merge_size: int = 2
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        """Image sides must be multiples of this (one merged LLM token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class ChatFormat:
    """How a family renders a conversation as text.

    ``format(messages, *, add_generation_prompt, system_prompt, add_vision_id, enable_thinking)``
    returns the prompt; ``format_with_spans(messages, *, system_prompt, add_vision_id)`` returns
    ``(text, [(message_index, start, end), ...])`` with each assistant reply's characters (for
    training labels). ``system_prompt`` reaches them already resolved (a string or None);
    ``default_system_prompt`` is what a caller who did not choose gets.
    """

    format: Callable[..., str]
    format_with_spans: Callable[..., tuple[str, list[tuple[int, int, int]]]]
    default_system_prompt: str | None = None


@dataclass(frozen=True)
class GroundingStyle:
    """How a generation writes boxes and points in its answers (vlutils.grounding).

    ``syntax``: "tags" (``<ref>a</ref><box>(x1,y1),(x2,y2)</box>`` with the family's own tag
    strings in ``tags``: ref open, ref close, box open, box close) or "json" (``bbox_2d`` /
    ``point_2d`` lists). ``scale``: 1000 for coordinates on a 0-1000 grid, None for absolute
    pixels of the resized image the model saw. ``max_value``: the largest integer written on
    the relative grid (999 where the paper says [0, 1000)).
    """

    syntax: str
    scale: int | None
    max_value: int | None
    tags: tuple[str, str, str, str] | None = None


@dataclass(frozen=True)
class Family:
    """Everything vlutils needs to know about one model generation (``model_type``).

    Fields that a generation does not have (no video, not trainable yet...) are None and its
    ``uses`` leaves out what needs them; :func:`vlutils.families.get_family` with ``use=``
    refuses it with a clear message.
    """

    model_type: str  # transformers' config.json model_type
    title: str  # how people write it: "Qwen2.5-VL"
    uses: frozenset[str]  # a subset of USES
    vision: VisionPreset | None = None
    chat: ChatFormat | None = None
    position_ids: str | None = None  # one of POSITION_STYLES
    video_timestamps: str | None = None  # one of VIDEO_TIMESTAMP_RULES
    grounding: GroundingStyle | None = None
    # A MoE variant whose inputs (template, preprocessing, position ids, grounding) are exactly
    # those of a dense family names it here; tools that keep one entry per input format use it.
    shares_inputs_with: str | None = None
    media: frozenset[str] = field(default=frozenset({"image", "video"}))  # content items it takes
    pipeline: str = "patches"  # one of PIPELINES
    notes: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.uses) - set(USES)
        if unknown:
            raise ValueError(f"family {self.model_type}: unknown uses {sorted(unknown)}; known: {USES}")
        if self.position_ids is not None and self.position_ids not in POSITION_STYLES:
            raise ValueError(f"family {self.model_type}: position_ids must be one of {POSITION_STYLES}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"family {self.model_type}: pipeline must be one of {PIPELINES}")
        if self.video_timestamps is not None and self.video_timestamps not in VIDEO_TIMESTAMP_RULES:
            raise ValueError(f"family {self.model_type}: video_timestamps must be one of {VIDEO_TIMESTAMP_RULES}")
        if "inputs" in self.uses and None in (self.vision, self.chat, self.position_ids, self.video_timestamps):
            raise ValueError(f"family {self.model_type}: 'inputs' needs vision, chat, position_ids and video_timestamps")
        if "train" in self.uses and not {"inputs", "prepare"} <= set(self.uses):
            raise ValueError(f"family {self.model_type}: 'train' needs 'inputs', and prepare accepts what train does")
        if "grounding" in self.uses and self.grounding is None:
            raise ValueError(f"family {self.model_type}: 'grounding' needs a GroundingStyle")

    @property
    def inputs_model_type(self) -> str:
        """The family whose inputs this one uses (itself unless a MoE variant shares a dense one's)."""
        return self.shares_inputs_with or self.model_type

    @property
    def _resizes(self) -> bool:
        """Whether images are smart-resized within pixel bounds (not a fixed size, as Qwen-VL's)."""
        return self.vision is not None and self.pipeline == "patches"

    @property
    def min_pixels(self) -> int | None:
        """Default smallest image area (qwen-vl-utils: ``IMAGE_MIN_TOKEN_NUM`` merged tokens)."""
        return IMAGE_MIN_TOKEN_NUM * self.vision.factor**2 if self._resizes else None

    @property
    def max_pixels(self) -> int | None:
        """Default largest image area (qwen-vl-utils: ``IMAGE_MAX_TOKEN_NUM`` merged tokens)."""
        return IMAGE_MAX_TOKEN_NUM * self.vision.factor**2 if self._resizes else None

    @property
    def video_min_pixels(self) -> int | None:
        """Default smallest area of one video frame (``VIDEO_MIN_TOKEN_NUM`` merged tokens)."""
        return VIDEO_MIN_TOKEN_NUM * self.vision.factor**2 if self._resizes else None

    @property
    def video_max_pixels(self) -> int | None:
        """Default largest area of one video frame (``VIDEO_MAX_TOKEN_NUM`` merged tokens; the total
        frame budget lowers it for long videos)."""
        return VIDEO_MAX_TOKEN_NUM * self.vision.factor**2 if self._resizes else None

    def describe(self) -> dict[str, Any]:
        """The facts as plain values (for tables and docs)."""
        v = self.vision
        return {
            "model_type": self.model_type, "title": self.title, "uses": sorted(self.uses, key=USES.index),
            "patch": v.patch_size if v else None, "merge": v.merge_size if v else None,
            "temporal_patch": v.temporal_patch_size if v else None,
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
            "chat": self.chat.format.__module__ + "." + self.chat.format.__name__ if self.chat else None,
            "default_system_prompt": self.chat.default_system_prompt if self.chat else None,
            "position_ids": self.position_ids, "video_timestamps": self.video_timestamps,
            "grounding": None if self.grounding is None else (
                f"{self.grounding.syntax}, " + (f"0-{self.grounding.max_value}" if self.grounding.scale else "pixels")),
            "shares_inputs_with": self.shares_inputs_with, "media": sorted(self.media), "pipeline": self.pipeline,
        }
