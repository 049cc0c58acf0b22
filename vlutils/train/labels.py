"""Assistant-only labels: map the formatter's reply character spans onto tokens.

The whole conversation text is tokenized once (so ids equal ``build_inputs``' exactly: BPE
may merge across the boundary of separately tokenized pieces), and each token's character
offsets say which reply, if any, it belongs to.

Rule: a token is trained on (label = its id) when its characters overlap a reply span
``[start, end)`` (the reply's content and its ``<|im_end|>``); every other token gets -100.
The newline after ``<|im_end|>`` is never part of a reply, and ``<|im_end|>`` is a special
token, so a reply always ends on a token boundary. A token can straddle only a reply's start,
when the reply begins with whitespace that the tokenizer merges with the ``\\n`` of the
``<|im_start|>assistant\\n`` header (for example a reply starting with ``"\\n"``): such a token
is labeled, since it carries reply characters and dropping it would cut the reply's label.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidOptionError

__all__ = ["IGNORE_INDEX", "encode_with_offsets", "labels_from_spans"]

IGNORE_INDEX = -100


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids of ``text`` as ``build_inputs`` computes them, and (N, 2) character offsets.

    Works with a ``tokenizers.Tokenizer`` (its ``Encoding.offsets``) and with fast
    transformers tokenizers (``return_offsets_mapping=True``).
    """
    encode = getattr(tokenizer, "encode", None)
    if encode is not None:
        encoding = encode(text)
        if hasattr(encoding, "offsets") and hasattr(encoding, "ids"):
            return list(encoding.ids), np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    if callable(tokenizer):
        try:
            out = tokenizer(text, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError) as exc:
            raise InvalidOptionError(
                f"labels need character offsets; {type(tokenizer).__name__} cannot give them ({exc}): "
                "use a tokenizers.Tokenizer or a fast transformers tokenizer"
            ) from None
        return [int(i) for i in out["input_ids"]], np.asarray(out["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    raise InvalidOptionError(
        f"labels need character offsets; {type(tokenizer).__name__} has none: "
        "use a tokenizers.Tokenizer or a fast transformers tokenizer"
    )


def labels_from_spans(ids: Sequence[int], offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Labels (1-D int64): the id on tokens overlapping a span, -100 elsewhere (see the module doc)."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    keep = np.zeros(len(ids), dtype=bool)
    for a, b in spans:
        overlap = (starts < b) & (ends > a)
        empty_inside = (starts == ends) & (starts >= a) & (starts < b)
        keep |= overlap | empty_inside
    labels = torch.tensor(list(ids), dtype=torch.long)
    labels[torch.from_numpy(~keep)] = IGNORE_INDEX
    return labels
