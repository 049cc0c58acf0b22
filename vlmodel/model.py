"""The whole model: the vision tower's outputs replace placeholder tokens in the text.

The prompt holds one ``<|image_pad|>`` (or ``<|video_pad|>``) token per merged vision
token.  The model embeds the text, runs the vision tower on all images (and all videos)
at once, writes the vision vectors over the placeholder embeddings in order, and runs the
decoder with M-RoPE positions in which vision tokens get (t, h, w) grid coordinates.
With DeepStack (Qwen3-VL) the tower's extra features are added at the visual positions
after the first decoder layers (prefill only).

Attribute names are the original checkpoints' (``visual.*``, ``model.*``, ``lm_head.*``);
``vlmodel.weights`` maps every family's tensor names onto them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import check_cu_seqlens
from .config import ModelConfig
from .decoder import Cache, TextModel
from .generate import generate
from .positions import packed_rope_index, rope_index
from .vision import VisionTransformer


@dataclass
class Output:
    logits: torch.Tensor  # (B, L, vocab), or (B, logits_to_keep, vocab)
    loss: torch.Tensor | None = None
    rope_deltas: torch.Tensor | None = None  # (B, 1): decode position = sequence index + delta


class VLModelBase(nn.Module):
    """What every family's model shares (decoder, head, loss, generation), so each family class
    holds only its own vision tower, image placement and positions."""

    # transformers' Trainer passes num_items_in_batch (the global label count) to a forward that accepts it
    accepts_loss_kwargs = True

    def __init__(self, config: ModelConfig, visual: nn.Module):
        super().__init__()
        self.config = config
        self.visual = visual
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

    @staticmethod
    def check_peft_arguments(inputs_embeds, output_attentions, output_hidden_states) -> None:
        """Only the unset values of the arguments peft always passes are accepted."""
        if inputs_embeds is not None or output_attentions or output_hidden_states:
            raise ValueError("vlmodel takes input_ids (not inputs_embeds) and returns logits only "
                             "(no attentions or hidden states)")

    @staticmethod
    def check_packed(input_ids: torch.Tensor, cu_seqlens: torch.Tensor, cache: Cache | None,
                     attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``cu_seqlens`` checked against ``input_ids`` and moved to its device (packed rows: no cache, no padding)."""
        if cache is not None:
            raise ValueError("cu_seqlens (packed rows) cannot be combined with a cache")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("a packed row (cu_seqlens) has no padding; drop attention_mask or make it all ones")
        return check_cu_seqlens(cu_seqlens, input_ids.shape[0], input_ids.shape[1]).to(input_ids.device)

    @staticmethod
    def check_logits_to_keep(labels: torch.Tensor | None, logits_to_keep: int) -> None:
        """``labels`` need every position's logits."""
        if labels is not None and logits_to_keep:
            raise ValueError("labels need the logits of every position; do not combine them with logits_to_keep")

    def logits_and_loss(self, hidden: torch.Tensor, labels: torch.Tensor | None, logits_to_keep: int,
                        cu_seqlens: torch.Tensor | None, num_items_in_batch: int | torch.Tensor | None,
                        touch_vision: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (of the last ``logits_to_keep`` positions, or all) and the loss when ``labels`` are
        given, plus :meth:`vision_zero_loss` when ``touch_vision`` (the caller: only on a batch without vision)."""
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None if labels is None else next_token_loss(logits, labels, cu_seqlens, num_items_in_batch)
        if loss is not None and touch_vision:
            loss = loss + self.vision_zero_loss()
        return logits, loss

    def vision_zero_loss(self) -> torch.Tensor:
        """A scalar 0 whose backward reaches every vision parameter; each family runs its own tower."""
        raise NotImplementedError

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs) -> dict:
        """The forward arguments for one step (what peft's ``PeftModelForCausalLM`` looks up);
        vlmodel's own :meth:`generate` does not go through it."""
        return {"input_ids": input_ids, **kwargs}

    def new_cache(self, batch: int, max_len: int) -> Cache:
        """A decoding cache for ``batch`` rows of up to ``max_len`` tokens (one state per layer)."""
        return self.model.new_cache(batch, max_len, self.dtype, self.device)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """See :func:`vlmodel.generate.generate`."""
        return generate(self, input_ids, **kwargs)


class VLModel(VLModelBase):
    """Every family; what differs is in ``config`` (see ``vlmodel.config``)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, VisionTransformer(config.vision))

    def rope_index(self, input_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None,
                   second_per_grid_ts=None) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE positions (3, B, L) and rope deltas (B, 1), computed by ``vlutils.rope``."""
        return rope_index(self.config, input_ids, image_grid_thw, video_grid_thw, attention_mask, second_per_grid_ts)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        strict: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
        """Token embeddings with every image/video placeholder replaced by its vision vector,
        plus the visual positions (B, L) and the DeepStack features (one (V, D) per layer).

        ``strict``: placeholders without pixel values are an error (a forgotten image);
        off while decoding, where a sampled token may happen to be a placeholder id.
        """
        embeds = self.model.embed_tokens(input_ids)
        media = (
            ("image", pixel_values, image_grid_thw, self.config.image_token_id),
            ("video", pixel_values_videos, video_grid_thw, self.config.video_token_id),
        )
        visual_mask, stacked = None, None
        for kind, pixels, grid, token_id in media:
            slots = input_ids == token_id
            if pixels is None:
                if strict and slots.any():
                    raise ValueError(f"input_ids hold {kind} placeholder tokens but no {kind} pixel values were given")
                continue
            if grid is None:
                raise ValueError(f"{kind} pixel values need their {kind}_grid_thw")
            features, deepstack = self.visual(pixels.to(self.visual.patch_embed.proj.weight.dtype), grid)
            if int(slots.sum()) != features.shape[0]:
                raise ValueError(
                    f"{int(slots.sum())} {kind} placeholder tokens in input_ids but the {kind}s "
                    f"give {features.shape[0]} vision tokens"
                )
            where = slots.unsqueeze(-1)
            embeds = embeds.masked_scatter(where, features.to(embeds.dtype))
            if deepstack:  # scatter into the sequence so images and videos interleave in prompt order
                layers = [torch.zeros_like(embeds).masked_scatter(where, d.to(embeds.dtype)) for d in deepstack]
                stacked = layers if stacked is None else [a + b for a, b in zip(stacked, layers)]
                visual_mask = slots if visual_mask is None else visual_mask | slots
        if stacked is None:
            return embeds, None, None
        return embeds, visual_mask, [layer[visual_mask] for layer in stacked]

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
        cache: Cache | None = None,
        rope_deltas: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        cu_seqlens: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        touch_vision: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Output:
        """Logits for ``input_ids`` (B, L); the mean next-token loss when ``labels`` are given.

        ``num_items_in_batch`` (as in transformers' models): the loss is the *sum* of this call's
        token losses divided by that number, e.g. the count of label tokens of the whole global
        batch (every micro-batch on every rank), so that gradient accumulation and data
        parallelism give the gradient of one big batch's mean. Without it: this call's mean.

        ``touch_vision``: when the batch has no images and no videos, run the vision tower on one
        dummy image and add 0 x its output to the loss, so that every vision parameter still gets
        a (zero) gradient. DistributedDataParallel without ``find_unused_parameters`` needs this
        when one rank's batch is text-only; the loss and the gradients are unchanged.

        Positions: ``position_ids`` (3, B, L) or (B, L) if given; otherwise, after a
        cached prefix, ``cache.length + i + rope_deltas``; otherwise from ``vlutils.rope``.
        ``attention_mask`` (B, past + L) marks real tokens with 1 (left padding for
        generation; right padding works for training: label the padding -100).
        ``labels`` equal to -100 are ignored; labels are shifted inside, as in transformers.

        Packed rows: ``input_ids`` (1, L) holding several samples back to back and
        ``cu_seqlens`` (int, ``[0, L1, L1+L2, ..., L]``).  Attention is block-diagonal,
        positions (3, 1, L) are each sample's own (given, or computed per sample), and the
        last token of a sample never predicts the first of the next, so the mean loss is
        the token-weighted mean of the per-sample losses.  Training/scoring only (no cache).

        ``inputs_embeds``, ``output_attentions``, ``output_hidden_states`` and ``return_dict``
        exist because peft's ``PeftModelForCausalLM`` always passes them: only their unset
        values (None/False; any ``return_dict``) are accepted.
        """
        self.check_peft_arguments(inputs_embeds, output_attentions, output_hidden_states)
        past = cache.length if cache is not None else 0
        if cu_seqlens is not None:
            cu_seqlens = self.check_packed(input_ids, cu_seqlens, cache, attention_mask)
            attention_mask = None
            if position_ids is None:
                position_ids = packed_rope_index(
                    self.config, input_ids, cu_seqlens, image_grid_thw, video_grid_thw, second_per_grid_ts
                )
        self.check_logits_to_keep(labels, logits_to_keep)
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
        embeds, visual_mask, deepstack = self.embed(
            input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, strict=past == 0
        )
        hidden = self.model(embeds, position_ids.to(embeds.device), attention_mask, cache, cu_seqlens,
                            visual_mask, deepstack)
        touch_vision = touch_vision and pixel_values is None and pixel_values_videos is None
        logits, loss = self.logits_and_loss(hidden, labels, logits_to_keep, cu_seqlens, num_items_in_batch, touch_vision)
        return Output(logits=logits, loss=loss, rope_deltas=rope_deltas)

    def vision_zero_loss(self) -> torch.Tensor:
        """0 x the vision tower's output on one smallest dummy image (merge x merge patches of
        zeros): a scalar 0 whose backward reaches every vision parameter (with a zero gradient)."""
        cfg = self.config.vision
        merge = cfg.spatial_merge_size
        weight = self.visual.patch_embed.proj.weight
        pixels = torch.zeros(merge * merge, cfg.patch_dim, dtype=weight.dtype, device=weight.device)
        grid = torch.tensor([[1, merge, merge]], device=weight.device)
        features, deepstack = self.visual(pixels, grid)
        total = features.float().sum() + sum((d.float().sum() for d in deepstack or []), torch.zeros((), device=weight.device))
        return total * 0.0


def next_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean float32 cross-entropy of token i predicting label i + 1 (-100 ignored), or the sum
    divided by ``num_items_in_batch`` when it is given; 0 when no token has a label.

    In a packed row a sample's last token has no target (not the next sample's first).
    """
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(logits.device)
    if cu_seqlens is not None:
        targets = targets.clone()
        targets[:, cu_seqlens[1:].to(logits.device) - 1] = -100
    if num_items_in_batch is None:
        if not bool((targets != -100).any()):  # no label (a filler batch): 0, not 0/0, keeping the graph
            return logits.float().sum() * 0.0
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, torch.Tensor)):
        raise TypeError(f"num_items_in_batch must be an int or a tensor, got {type(num_items_in_batch).__name__}")
    if isinstance(num_items_in_batch, torch.Tensor):
        # a global count of 0 means no label anywhere: every sum is 0 too, so return 0, not 0/0
        num_items_in_batch = num_items_in_batch.to(logits.device).clamp(min=1)
    elif num_items_in_batch < 1:
        raise ValueError(f"num_items_in_batch must be >= 1 (the label tokens of the global batch), got {num_items_in_batch}")
    total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    return total / num_items_in_batch


Qwen2VL = VLModel  # the name of the first version
