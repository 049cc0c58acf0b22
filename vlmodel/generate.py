"""Autoregressive decoding with a KV cache: greedy or sampled, batched with left padding.

Prefill runs the whole prompt (with its images/videos) once and keeps each layer's
keys/values.  Every later step feeds one token per row.  Its M-RoPE position is its
sequence index plus the row's *rope delta* (returned by the prefill): vision tokens
use fewer positions than they occupy, so text after them runs ahead of/behind the
index, and all three axes continue together from there.

``model`` is a :class:`vlmodel.model.VLModel` (this module does not import it, so
that ``model`` can offer ``model.generate``).  The cache holds one state per layer (KV
cache or recurrent state), filled by the prefill and advanced by each step.

Left padding: padded rows carry 0 in ``attention_mask``; the mask grows by one real
token per step so padding is never attended.  A row stops at a stop token; after it
emits ``pad_token_id``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of (B, vocab) logits: greedy at temperature 0, else sample.

    Order as in transformers: temperature, then keep the ``top_k`` best, then the
    smallest set whose probability reaches ``top_p``.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token once the tokens before it already reach top_p (the best is always kept)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def stream(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    pixel_values_videos: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | list[float] | None = None,
    position_ids: torch.Tensor | None = None,
    rope_deltas: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
    pad_token_id: int = 0,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), step by step (finished rows yield ``pad_token_id``).

    ``position_ids``/``rope_deltas`` may be given for the prompt (both, or neither:
    then they come from ``vlutils.rope``).  ``stop_token_ids`` defaults to the
    config's ``eos_token_id``.
    """
    batch, prompt_len = input_ids.shape
    device = model.device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    if position_ids is not None and rope_deltas is None:
        raise ValueError("explicit position_ids need their rope_deltas to continue decoding")
    stops = torch.tensor(
        list(model.config.eos_token_id if stop_token_ids is None else stop_token_ids), dtype=torch.long, device=device
    )
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    temperature = temperature if do_sample else 0.0

    cache = model.new_cache(batch, prompt_len + max_new_tokens)
    out = model(
        input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        pixel_values_videos=pixel_values_videos,
        video_grid_thw=video_grid_thw,
        second_per_grid_ts=second_per_grid_ts,
        position_ids=position_ids,
        cache=cache,
        logits_to_keep=1,
    )
    deltas = out.rope_deltas if rope_deltas is None else rope_deltas
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = sample_next(out.logits[:, -1], temperature, top_k, top_p, generator)
        yield token.masked_fill(finished, pad_token_id)
        finished |= torch.isin(token, stops)
        if step == max_new_tokens - 1 or bool(finished.all()):
            return
        # Finished rows keep decoding their own (valid) tokens; their output is masked above.
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        out = model(token[:, None], attention_mask=attention_mask, cache=cache, rope_deltas=deltas)


def generate(model: Any, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """The new tokens (B, T) for a (left-padded) batch; T <= ``max_new_tokens``.

    Keyword arguments as in :func:`stream`.  Rows that stop early are filled with
    ``pad_token_id``.
    """
    steps = list(stream(model, input_ids, **kwargs))
    if not steps:
        return torch.empty(input_ids.shape[0], 0, dtype=torch.long, device=model.device)
    return torch.stack(steps, dim=1)
