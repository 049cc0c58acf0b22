"""``load_tokenizer(path)``: the tokenizer of any supported generation, from its files.

* a ``qwen.tiktoken`` file, or a folder holding one (Qwen-VL / Qwen-VL-Chat):
  :class:`vlutils.tiktoken_qwen.QwenTiktokenTokenizer` (needs the ``tiktoken`` package);
* a ``tokenizer.json`` file, or a folder holding one (Qwen2-VL and later): a
  ``tokenizers.Tokenizer``.

Both work with ``build_inputs`` / ``build_sample``. A folder holding both is ambiguous only in
theory (no checkpoint ships both); ``tokenizer.json`` wins there, as transformers would pick it.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import TokenizerError

__all__ = ["load_tokenizer", "TIKTOKEN_FILE", "TOKENIZER_JSON"]

TIKTOKEN_FILE = "qwen.tiktoken"
TOKENIZER_JSON = "tokenizer.json"


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer stored at ``path`` (a file or a checkpoint folder); raises
    :class:`~vlutils.errors.TokenizerError` naming the path when there is none."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (TOKENIZER_JSON, TIKTOKEN_FILE):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return load_tokenizer(candidate)
        raise TokenizerError(f"{path}: no {TOKENIZER_JSON} or {TIKTOKEN_FILE} in this folder")
    if not os.path.isfile(path):
        raise TokenizerError(f"{path}: no such tokenizer file or folder")
    if path.endswith(".json"):
        return _tokenizer_json(path)
    from .tiktoken_qwen import QwenTiktokenTokenizer

    return QwenTiktokenTokenizer.from_file(path)


def _tokenizer_json(path: str) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TokenizerError(f"{path}: reading tokenizer.json needs the tokenizers package") from None
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({exc})") from None
