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
from .text import KVCache, TextModel, check_cu_seqlens
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

    def packed_rope_index(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | list[float] | None = None,
    ) -> torch.Tensor:
        """Positions (3, 1, L) of a packed row: every sample numbered from 0 on its own.

        The grids (in sample order) are handed to the sample whose placeholders they fill.
        A Python loop over samples, for positions only (cheap; the decoder runs once).
        """
        c = self.config
        unit = c.vision.spatial_merge_size**2
        grids = {"image": _rows(image_grid_thw), "video": _rows(video_grid_thw)}
        seconds = _rows(second_per_grid_ts)
        taken = {"image": 0, "video": 0}
        parts = []
        for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            ids = input_ids[:, a:b]
            mine: dict[str, tuple[int, int]] = {}  # kind -> [first, end) of its grids
            for kind, token in (("image", c.image_token_id), ("video", c.video_token_id)):
                first, want = taken[kind], int((ids == token).sum())
                while want > 0 and taken[kind] < len(grids[kind]):
                    want -= int(torch.as_tensor(grids[kind][taken[kind]]).prod()) // unit
                    taken[kind] += 1
                if want != 0:
                    raise ValueError(f"packed sample at [{a}, {b}): its {kind} placeholders do not match the {kind} grids")
                mine[kind] = (first, taken[kind])
            (i0, i1), (v0, v1) = mine["image"], mine["video"]
            image = torch.stack(grids["image"][i0:i1]) if i1 > i0 else None
            video = torch.stack(grids["video"][v0:v1]) if v1 > v0 else None
            secs = torch.stack([torch.as_tensor(x) for x in seconds[v0:v1]]) if seconds and v1 > v0 else None
            parts.append(self.rope_index(ids, image, video, None, secs)[0])
        return torch.cat(parts, dim=2)

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
        cu_seqlens: torch.Tensor | None = None,
    ) -> Output:
        """Logits for ``input_ids`` (B, L); the mean next-token loss when ``labels`` are given.

        Positions: ``position_ids`` (3, B, L) or (B, L) if given; otherwise, after a
        cached prefix, ``cache.length + i + rope_deltas``; otherwise from ``vlutils.rope``.
        ``attention_mask`` (B, past + L) marks real tokens with 1 (left padding).
        ``labels`` equal to -100 are ignored; labels are shifted inside, as in transformers.
        Right padding (training batches) works too: padding is masked, label it -100.

        Packed rows: ``input_ids`` (1, L) holding several samples back to back and
        ``cu_seqlens`` (int, ``[0, L1, L1+L2, ..., L]``).  Attention is block-diagonal,
        positions (3, 1, L) are each sample's own (given, or computed per sample), and the
        last token of a sample never predicts the first of the next, so the mean loss is
        the token-weighted mean of the per-sample losses.  Training/scoring only (no cache).
        """
        past = cache.length if cache is not None else 0
        if cu_seqlens is not None:
            if cache is not None:
                raise ValueError("cu_seqlens (packed rows) cannot be combined with a KV cache")
            if attention_mask is not None and not bool(attention_mask.all()):
                raise ValueError("a packed row (cu_seqlens) has no padding; drop attention_mask or make it all ones")
            cu_seqlens = check_cu_seqlens(cu_seqlens, input_ids.shape[0], input_ids.shape[1])
            attention_mask = None
            if position_ids is None:
                position_ids = self.packed_rope_index(
                    input_ids, cu_seqlens, image_grid_thw, video_grid_thw, second_per_grid_ts
                )
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
        hidden = self.model(embeds, position_ids.to(embeds.device), attention_mask, cache, cu_seqlens)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            # Token i predicts token i + 1; float32 cross-entropy over the kept labels.
            targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(logits.device)
            if cu_seqlens is not None:  # a sample's last token has no target (not the next sample's first)
                targets = targets.clone()
                targets[:, cu_seqlens[1:].to(logits.device) - 1] = -100
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return Output(logits=logits, loss=loss, rope_deltas=rope_deltas)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.config.text, batch, max_len, self.dtype, self.device)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """See :func:`vlmodel.generate.generate`."""
        from .generate import generate

        return generate(self, input_ids, **kwargs)


def _rows(x) -> list:
    """Rows of a grid tensor / entries of a list, or [] for None."""
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return list(x.unbind(0))
    return [torch.as_tensor(v) for v in x]
