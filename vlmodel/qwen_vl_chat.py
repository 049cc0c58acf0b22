"""``chat(...)`` for Qwen-VL-Chat: the original ``model.chat`` conversation loop on vlmodel.

Semantics kept from the original remote code (``modeling_qwen.py`` ``QWenLMHeadModel.chat``):

* the prompt is ``make_context(tokenizer, query, history, system, max_window_size)``: ChatML with
  the system prompt, the ``(query, response)`` pairs of ``history`` (oldest dropped first past
  ``max_window_size`` tokens) and the query; images are ``<img>REF</img>`` inside the query and
  history strings (``from_list_format`` writes them), loaded here through vlutils' sources;
* generation stops at ``<|im_end|>``, ``<|im_start|>`` or ``<|endoftext|>``;
* the response is the decoded text after the prompt up to the first ``<|im_end|>`` /
  ``<|im_start|>``, stripped; without one the last generated token is left out, as the
  original's ``decode_tokens`` does;
* ``history`` (a list, possibly the caller's) gets ``(query, response)`` appended when
  ``append_history``; ``(response, history)`` is returned.

Departure: decoding is greedy unless ``do_sample=True`` is passed (Qwen-VL-Chat's
generation_config samples with top_p 0.5; pass ``do_sample=True, top_p=0.5, top_k=None`` for that).
The prompt builder, tokenizer and image transform are vlutils' (``vlutils.chat_qwen_vl``,
``vlutils.tiktoken_qwen``, ``vlutils.image_qwen_vl``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

DEFAULT_SYSTEM = "You are a helpful assistant."


def chat(
    model: Any,
    tokenizer: Any,
    query: str,
    history: list[tuple[str, str]] | None = None,
    system: str = DEFAULT_SYSTEM,
    append_history: bool = True,
    max_window_size: int | None = None,
    max_new_tokens: int = 512,
    **generate_kwargs: Any,
) -> tuple[str, list[tuple[str, str]]]:
    """One turn with a Qwen-VL-Chat ``model`` (:class:`vlmodel.QwenVLModel`): ``(response, history)``.

    ``tokenizer``: the checkpoint's ``qwen.tiktoken`` (``vlutils.load_tokenizer``).
    ``generate_kwargs``: sampling options of :func:`vlmodel.generate.stream` (``do_sample``,
    ``temperature``, ``top_k``, ``top_p``, ``seed``).
    """
    from vlutils.chat_qwen_vl import MAX_WINDOW_SIZE, make_context
    from vlutils.image_qwen_vl import pixel_values

    if not isinstance(query, str):
        raise TypeError(f"query must be a str (use vlutils.chat_qwen_vl.from_list_format for images), got {type(query).__name__}")
    history = [] if history is None else history
    window = MAX_WINDOW_SIZE if max_window_size is None else max_window_size
    raw_text, context = make_context(tokenizer, query, history, system, window)
    images = [{"image": ref} for ref in tokenizer.image_references(context)]
    pixels = pixel_values(images, model.config.vision.image_size)
    stops = [tokenizer.im_end_id, tokenizer.im_start_id, *model.config.eos_token_id]
    new = model.generate(torch.tensor([context], device=model.device), pixel_values=pixels,
                         max_new_tokens=max_new_tokens, stop_token_ids=stops, pad_token_id=tokenizer.eod_id,
                         **generate_kwargs)
    response = decode_response(tokenizer, context + new[0].tolist(), len(raw_text), len(context))
    if append_history:
        history.append((query, response))
    return response, history


def decode_response(tokenizer: Any, tokens: Sequence[int], raw_text_len: int, context_len: int) -> str:
    """The original ``decode_tokens(..., chat_format="chatml")``: decode up to the first
    ``<|im_start|>``/``<|im_end|>`` after the prompt (without one: all but the last token), drop the
    prompt's ``raw_text_len`` characters, strip."""
    end = context_len
    for end in range(context_len, len(tokens)):
        if tokens[end] in (tokenizer.im_start_id, tokenizer.im_end_id):
            break
    return tokenizer.decode(list(tokens[:end]), errors="replace")[raw_text_len:].strip()
