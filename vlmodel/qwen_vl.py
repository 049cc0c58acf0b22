"""Qwen-VL / Qwen-VL-Chat (2023): the ViT + Resampler of ``qwen_vl_vision`` in front of a Qwen-7B decoder.

How the original places images: the prompt holds, per image, ``<img>`` then 256 ids (the
image's path or URL as UTF-8 bytes, padded with ``<imgpad>``) then ``</img>``.  The model
finds every ``<img>`` token and overwrites the 256 embeddings after it with the image's 256
Resampler vectors; the ids in between only carried the reference, which vlutils resolves and
passes here as ``pixel_values`` (one image per ``<img>``, in prompt order).

The decoder is vlmodel's own :class:`~vlmodel.decoder.TextModel` (config fields: biased q/k/v,
1-D RoPE, dynamic NTK and log-n scaling); positions are 1-D (no M-RoPE in this generation).
Everything else (``generate``, the cache, packed rows, the loss) works as for the other
families.  Module names: ``visual.*`` (the original's ``transformer.visual.*``), ``model.*``,
``lm_head``; ``vlmodel.weights`` maps the original checkpoint names.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .decoder import Cache
from .model import Output, VLModelBase
from .qwen_vl_chat import chat
from .qwen_vl_vision import QwenVLVisual


class ImageSpanError(ValueError):
    """``input_ids`` and ``pixel_values`` disagree about the images (count, or a malformed span)."""


class QwenVLModel(VLModelBase):
    """The ``qwen_vl`` family: same calling conventions as :class:`vlmodel.model.VLModel`."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, QwenVLVisual(config.vision))

    def image_starts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(row, index) of every ``<img>`` token, in prompt order (row by row), each checked to be
        closed by ``</img>`` exactly ``num_queries`` tokens later, as the original requires."""
        starts = (input_ids == self.config.vision_start_token_id).nonzero()
        span = self.config.vision.num_queries
        for row, index in starts.tolist():
            end = index + span + 1
            if end >= input_ids.shape[1] or int(input_ids[row, end]) != self.config.vision_end_token_id:
                raise ImageSpanError(
                    f"input_ids row {row}: <img> at {index} is not closed by </img> (id "
                    f"{self.config.vision_end_token_id}) {span + 1} tokens later; every image takes {span} positions"
                )
        return starts

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              strict: bool = True) -> torch.Tensor:
        """Token embeddings with the ``num_queries`` positions after each ``<img>`` replaced by the image.

        ``strict``: an ``<img>`` without pixel values is an error (off while decoding, where a
        sampled token may happen to be ``<img>``).
        """
        embeds = self.model.embed_tokens(input_ids)
        if not strict and pixel_values is None:
            return embeds
        starts = self.image_starts(input_ids)
        count = 0 if pixel_values is None else pixel_values.shape[0]
        if len(starts) != count:
            raise ImageSpanError(f"input_ids hold {len(starts)} <img> spans but {count} images were given")
        if not count:
            return embeds
        features = self.visual(pixel_values).to(embeds.dtype)  # (images, num_queries, D)
        span = self.config.vision.num_queries
        embeds = embeds.clone()
        for (row, index), feature in zip(starts.tolist(), features):
            embeds[row, index + 1: index + 1 + span] = feature
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: Cache | None = None,
        rope_deltas: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        cu_seqlens: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | list[float] | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        touch_vision: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Output:
        """Logits for ``input_ids`` (B, L) with ``pixel_values`` (images, 3, S, S) for its ``<img>`` spans.

        Positions are 1-D: ``position_ids`` (B, L) if given; else 0..L-1 (after left padding,
        counted over real tokens only); after a cached prefix, ``cache.length + i +
        rope_deltas`` (0 without padding).  ``labels``, ``cu_seqlens`` (packed rows, each
        sample from position 0) and ``logits_to_keep`` as in :meth:`vlmodel.model.VLModel.forward`.
        ``num_items_in_batch``, ``touch_vision`` and the peft arguments (``inputs_embeds``...) as there.
        The grid/video arguments exist for the shared generation loop and must stay ``None``.
        """
        self.check_peft_arguments(inputs_embeds, output_attentions, output_hidden_states)
        if any(x is not None for x in (image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts)):
            raise ValueError("qwen_vl takes images as pixel_values (images, 3, S, S) only: no grids, no videos")
        past = cache.length if cache is not None else 0
        self.check_logits_to_keep(labels, logits_to_keep)
        if cu_seqlens is not None:
            cu_seqlens = self.check_packed(input_ids, cu_seqlens, cache, attention_mask)
            attention_mask = None
            if position_ids is None:
                position_ids = packed_positions(cu_seqlens, input_ids.shape[1])[None]
        if position_ids is None:
            position_ids, rope_deltas = self.positions(input_ids, attention_mask, past, rope_deltas)
        if position_ids.ndim == 3:
            position_ids = position_ids[0]
        embeds = self.embed(input_ids, pixel_values, strict=past == 0)
        positions = position_ids.to(embeds.device).unsqueeze(0).expand(3, -1, -1)
        hidden = self.model(embeds, positions, attention_mask, cache, cu_seqlens)
        logits, loss = self.logits_and_loss(hidden, labels, logits_to_keep, cu_seqlens, num_items_in_batch,
                                            touch_vision and pixel_values is None)
        return Output(logits=logits, loss=loss, rope_deltas=rope_deltas)

    def vision_zero_loss(self) -> torch.Tensor:
        """0 x the vision tower's output on one dummy one-patch image: a scalar 0 whose backward reaches
        every vision parameter (DistributedDataParallel on a text-only batch), as VLModel's."""
        weight = self.visual.conv1.weight
        side = self.config.vision.patch_size
        pixels = torch.zeros(1, self.config.vision.in_channels, side, side, dtype=weight.dtype, device=weight.device)
        return self.visual(pixels).float().sum() * 0.0

    @staticmethod
    def positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, past: int,
                  rope_deltas: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D positions (B, L) and the per-row delta (B, 1) that continues them while decoding."""
        batch, length = input_ids.shape
        device = input_ids.device
        steps = torch.arange(past, past + length, device=device).expand(batch, -1)
        if past:
            deltas = rope_deltas if rope_deltas is not None else torch.zeros(batch, 1, dtype=torch.long, device=device)
            return steps + deltas.to(device), deltas
        if attention_mask is None or bool(attention_mask.all()):
            return steps, torch.zeros(batch, 1, dtype=torch.long, device=device)
        mask = attention_mask.to(device).long()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        return pos, pos[:, -1:] + 1 - length

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """The new tokens (B, T); see :func:`vlmodel.generate.generate` (``pixel_values`` for the images).

        ``position_ids`` (B, L) from ``vlutils.build_inputs`` may come without ``rope_deltas``:
        decoding then continues each row from its last position.
        """
        positions = kwargs.get("position_ids")
        if positions is not None and kwargs.get("rope_deltas") is None:
            positions = positions[0] if positions.ndim == 3 else positions
            kwargs["rope_deltas"] = positions[:, -1:] + 1 - positions.shape[1]
        return super().generate(input_ids, **kwargs)

    def chat(self, tokenizer, query: str, history: list | None = None, **kwargs) -> tuple[str, list]:
        """The original ``model.chat``: ``(response, history)``; see :func:`vlmodel.qwen_vl_chat.chat`."""
        return chat(self, tokenizer, query, history, **kwargs)


def packed_positions(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """Each packed sample's own positions 0..len-1, (length,)."""
    starts = torch.repeat_interleave(cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1], output_size=length)
    return torch.arange(length, device=cu_seqlens.device) - starts
