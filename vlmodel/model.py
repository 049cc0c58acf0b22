"""Qwen2-VL / Qwen2.5-VL: the vision tower's outputs replace placeholder tokens in the text.

The prompt holds one ``<|image_pad|>`` (or ``<|video_pad|>``) token per merged vision
token.  The model embeds the text, runs the vision tower on all images (and all
videos) at once, writes the vision vectors over the placeholder embeddings in order,
and runs the decoder with M-RoPE positions in which vision tokens get (t, h, w) grid
coordinates and text tokens continue after the largest one.

Attribute names match the original checkpoints: ``visual.*``, ``model.*``, ``lm_head.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .text import KVCache, TextModel
from .vision import VisionTransformer


@dataclass
class Output:
    logits: torch.Tensor  # (B, L, vocab), or (B, logits_to_keep, vocab)
    loss: torch.Tensor | None = None
    rope_deltas: torch.Tensor | None = None  # (B, 1): decode position = sequence index + delta


class Qwen2VL(nn.Module):
    """Both families: ``config.model_type`` selects the Qwen2-VL or Qwen2.5-VL vision tower."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.model = TextModel(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def rope_index(
        self,
        input_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | list[float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE positions (3, B, L) and rope deltas (B, 1), computed by ``vlutils.rope``."""
        try:
            from vlutils.rope import get_rope_index
        except ImportError as exc:
            raise ImportError(
                "computing M-RoPE positions needs vlutils.rope.get_rope_index; pass position_ids explicitly"
            ) from exc
        c = self.config
        return get_rope_index(
            input_ids,
            image_grid_thw,
            video_grid_thw,
            attention_mask,
            second_per_grid_ts,
            model_type=c.model_type,
            spatial_merge_size=c.vision.spatial_merge_size,
            tokens_per_second=c.vision.tokens_per_second,
            image_token_id=c.image_token_id,
            video_token_id=c.video_token_id,
            vision_start_token_id=c.vision_start_token_id,
        )

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        strict: bool = True,
    ) -> torch.Tensor:
        """Token embeddings with every image/video placeholder replaced by its vision vector.

        ``strict``: placeholders without pixel values are an error (a forgotten image);
        off while decoding, where a sampled token may happen to be a placeholder id.
        """
        embeds = self.model.embed_tokens(input_ids)
        media = (
            ("image", pixel_values, image_grid_thw, self.config.image_token_id),
            ("video", pixel_values_videos, video_grid_thw, self.config.video_token_id),
        )
        for kind, pixels, grid, token_id in media:
            slots = input_ids == token_id
            if pixels is None:
                if strict and slots.any():
                    raise ValueError(f"input_ids hold {kind} placeholder tokens but no {kind} pixel values were given")
                continue
            if grid is None:
                raise ValueError(f"{kind} pixel values need their {kind}_grid_thw")
            features = self.visual(pixels.to(self.visual.patch_embed.proj.weight.dtype), grid.to(pixels.device))
            if int(slots.sum()) != features.shape[0]:
                raise ValueError(
                    f"{int(slots.sum())} {kind} placeholder tokens in input_ids but the {kind}s "
                    f"give {features.shape[0]} vision tokens"
                )
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | list[float] | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rope_deltas: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> Output:
        """Logits for ``input_ids`` (B, L); the mean next-token loss when ``labels`` are given.

        Positions: ``position_ids`` (3, B, L) or (B, L) if given; otherwise, after a
        cached prefix, ``cache.length + i + rope_deltas``; otherwise from ``vlutils.rope``.
        ``attention_mask`` (B, past + L) marks real tokens with 1 (left padding).
        ``labels`` equal to -100 are ignored; labels are shifted inside, as in transformers.
        """
        past = cache.length if cache is not None else 0
        if labels is not None and logits_to_keep:
            raise ValueError("labels need the logits of every position; do not combine them with logits_to_keep")
        if position_ids is None and past and rope_deltas is None:
            raise ValueError("after a cached prefix, pass the prefill's rope_deltas (or explicit position_ids)")
        if position_ids is None:
            if past:
                steps = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)
                position_ids = (steps[None, :] + rope_deltas.to(input_ids.device)).unsqueeze(0).expand(3, -1, -1)
            else:
                position_ids, rope_deltas = self.rope_index(
                    input_ids, image_grid_thw, video_grid_thw, attention_mask, second_per_grid_ts
                )
        elif position_ids.ndim == 2:
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
        embeds = self.embed(
            input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, strict=past == 0
        )
        hidden = self.model(embeds, position_ids.to(embeds.device), attention_mask, cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            # Token i predicts token i + 1; float32 cross-entropy over the kept labels.
            targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(logits.device)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return Output(logits=logits, loss=loss, rope_deltas=rope_deltas)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.config.text, batch, max_len, self.dtype, self.device)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """See :func:`vlmodel.generate.generate`."""
        from .generate import generate

        return generate(self, input_ids, **kwargs)
