"""The first-generation Qwen / Qwen-VL tokenizer: the ``qwen.tiktoken`` BPE run by ``tiktoken``.

Equal, id for id, to the ``QWenTokenizer`` of the Qwen-VL-Chat remote code
(``tokenization_qwen.py``), without transformers:

* text is NFC-normalised, then split by the same regular expression and BPE-encoded;
* the special tokens follow the ``len(ranks)`` BPE ranks in this order: ``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``, ``<|extra_0|>`` .. ``<|extra_204|>``, then the Qwen-VL tags
  ``<ref> </ref> <box> </box> <quad> </quad> <img> </img> <imgpad>``;
* special-token text in the input becomes the special token (``allowed_special="all"``, the
  original's default); ``allowed_special`` narrows that, other special text is plain text;
* an image span ``<img>REF</img>`` becomes ``<img>``, the UTF-8 bytes of REF *as ids* (byte
  ``b`` -> id ``b``), ``<imgpad>`` up to 256 positions, ``</img>``: 258 ids, whose 256 middle
  positions the model overwrites with the image's 256 Resampler outputs.

The ``tiktoken`` package is an optional dependency (``pip install "qwenvl-kit[qwen_vl]"``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import unicodedata
from typing import Collection, Iterable, Sequence

from .errors import TokenizerError

__all__ = [
    "PAT_STR", "ENDOFTEXT", "IM_START", "IM_END", "EXTRAS", "SPECIAL_TOKENS", "VL_TAGS", "IMG_TOKEN_SPAN",
    "QwenTiktokenTokenizer", "read_tiktoken_ranks", "parse_tiktoken_ranks", "write_tiktoken_ranks",
]

logger = logging.getLogger(__name__)

# The pre-tokenisation pattern of tokenization_qwen.py (tiktoken's cl100k one with \p{N} single digits).
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
EXTRAS = tuple(f"<|extra_{i}|>" for i in range(205))
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, *EXTRAS)
# Qwen-VL's tags, in the id order of the original (image_start_id = 151857 with the real vocabulary).
VL_TAGS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
IMG_TOKEN_SPAN = 256  # positions between <img> and </img>: one per Resampler query


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """A ``qwen.tiktoken`` file (one ``base64(token) rank`` per line) as ``{token bytes: rank}``.

    The ranks must be ``0..n-1`` (the special tokens' ids follow them)."""
    try:
        with open(path, "rb") as handle:
            contents = handle.read()
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read the tiktoken vocabulary ({exc.strerror or exc})") from None
    return parse_tiktoken_ranks(contents, str(path))


def parse_tiktoken_ranks(contents: bytes, name: str = "qwen.tiktoken") -> dict[bytes, int]:
    """The ``{token bytes: rank}`` of a vocabulary file's contents (``name`` labels errors)."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(contents.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("expected 'base64-token rank'")
            ranks[base64.b64decode(fields[0], validate=True)] = int(fields[1])
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"{name}, line {number}: not a tiktoken vocabulary line ({exc})") from None
    if not ranks:
        raise TokenizerError(f"{name}: empty tiktoken vocabulary")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{name}: ranks must be 0..{len(ranks) - 1} without gaps or repeats")
    return ranks


def write_tiktoken_ranks(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
    """Write ``{token bytes: rank}`` in the ``qwen.tiktoken`` format (ascending ranks)."""
    with open(path, "w", encoding="utf-8") as handle:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            handle.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")


class QwenTiktokenTokenizer:
    """Qwen-VL's tokenizer (see the module docstring). Build it with :meth:`from_file`.

    Besides ``encode``/``decode`` it exposes the ids the rest of vlutils and vlmodel need:
    ``eod_id`` (``<|endoftext|>``, also the padding id), ``im_start_id``, ``im_end_id``,
    ``img_start_id`` (the model's ``visual.image_start_id``), ``img_end_id``, ``img_pad_id``,
    ``ref_start_id``, ``ref_end_id``, ``box_start_id``, ``box_end_id``.
    """

    def __init__(self, ranks: dict[bytes, int], name: str = "Qwen"):
        try:
            import tiktoken
        except ImportError:
            raise TokenizerError(
                'the Qwen-VL tokenizer needs the tiktoken package: pip install "qwenvl-kit[qwen_vl]"'
            ) from None
        self.name = name
        self.mergeable_ranks = dict(ranks)
        start = len(self.mergeable_ranks)
        self.special_tokens = {token: start + i for i, token in enumerate(SPECIAL_TOKENS + VL_TAGS)}
        self._encoding = tiktoken.Encoding(
            name, pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )
        ids = self.special_tokens
        self.eod_id, self.im_start_id, self.im_end_id = ids[ENDOFTEXT], ids[IM_START], ids[IM_END]
        self.ref_start_id, self.ref_end_id = ids["<ref>"], ids["</ref>"]
        self.box_start_id, self.box_end_id = ids["<box>"], ids["</box>"]
        self.quad_start_id, self.quad_end_id = ids["<quad>"], ids["</quad>"]
        self.img_start_id, self.img_end_id, self.img_pad_id = ids["<img>"], ids["</img>"], ids["<imgpad>"]
        self._specials_by_id = {v: k for k, v in self.special_tokens.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "QwenTiktokenTokenizer":
        """Load a ``qwen.tiktoken`` vocabulary file."""
        return cls(read_tiktoken_ranks(path), name=os.path.basename(str(path)))

    @classmethod
    def from_bytes(cls, contents: bytes, name: str = "qwen.tiktoken") -> "QwenTiktokenTokenizer":
        """From a ``qwen.tiktoken`` file's contents (read from s3:// or shipped to workers)."""
        return cls(parse_tiktoken_ranks(contents, name), name=os.path.basename(name))

    # --- sizes and lookups ----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """BPE ranks + special tokens (151851 + 9 = 151860 with the real vocabulary)."""
        return self._encoding.n_vocab

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_token_id(self) -> int:
        """``<|endoftext|>``: the pad id of Qwen-VL-Chat's generation config."""
        return self.eod_id

    def token_to_id(self, token: str) -> int | None:
        """The id of a special token (or a single-token text), None when there is none."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        return self.mergeable_ranks.get(token.encode("utf-8"))

    def id_to_token(self, index: int) -> str | bytes | None:
        """A special token's text, or a BPE token's bytes; None for an unknown id."""
        if index in self._specials_by_id:
            return self._specials_by_id[index]
        try:
            return self._encoding.decode_single_token_bytes(index)
        except KeyError:
            return None

    # --- encoding -------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: str | Collection[str] = "all") -> list[int]:
        """Ids as ``QWenTokenizer.encode(text, allowed_special=...)`` gives them.

        ``allowed_special``: "all" (the original's default) or the special tokens whose text
        becomes the token; any other special-token text is encoded as plain text. With
        ``<img>`` allowed, each ``<img>REF</img>`` becomes the 258-id image span.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"text to encode must be a str, got {type(text).__name__}")
        allowed = "all" if allowed_special == "all" else set(allowed_special)
        ids = self._encoding.encode(unicodedata.normalize("NFC", text), allowed_special=allowed, disallowed_special=())
        return self._expand_image_spans(ids, text)

    def _expand_image_spans(self, ids: list[int], text: str) -> list[int]:
        """Replace the ids between each ``<img>`` and its ``</img>`` by the reference's bytes + pads."""
        out: list[int] = []
        i = 0
        while True:
            start = _find(ids, self.img_start_id, i)
            if start < 0:
                out.extend(ids[i:])
                return out
            end = _find(ids, self.img_end_id, start)
            if end < 0:
                raise TokenizerError(f"unclosed <img> tag in {_short(text)}")
            out.extend(ids[i:start])
            inner = ids[start + 1:end]
            if any(t in self._specials_by_id for t in inner):
                raise TokenizerError(f"a special token inside <img>...</img> in {_short(text)}")
            reference = b"".join(self._encoding.decode_single_token_bytes(t) for t in inner)
            if len(reference) > IMG_TOKEN_SPAN:
                raise TokenizerError(
                    f"the image reference inside <img>...</img> is {len(reference)} bytes, over {IMG_TOKEN_SPAN}: "
                    f"{_short(reference.decode('utf-8', 'replace'))}"
                )
            out.append(self.img_start_id)
            out.extend(reference)  # byte b is id b, as the original's decoder lookup makes it
            out.extend([self.img_pad_id] * (IMG_TOKEN_SPAN - len(reference)))
            out.append(self.img_end_id)
            i = end + 1

    # --- decoding -------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False, errors: str = "replace") -> str:
        """Text of ``ids`` as ``QWenTokenizer.decode`` gives it: each image span becomes
        ``<img>REF</img>`` again; ``skip_special_tokens`` drops every special token."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        out: list[int] = []
        i = 0
        while True:
            start = _find(ids, self.img_start_id, i)
            end = _find(ids, self.img_end_id, start) if start >= 0 else -1
            if start < 0 or end < 0:
                out.extend(ids[i:])
                break
            out.extend(ids[i:start])
            inner = ids[start + 1:end]
            if self.img_pad_id in inner:
                inner = inner[:inner.index(self.img_pad_id)]
            try:
                reference = bytes(inner).decode("utf-8")
            except (ValueError, UnicodeDecodeError) as exc:
                raise TokenizerError(f"an image span does not hold a UTF-8 reference ({exc})") from None
            out.extend([self.img_start_id, *self._encoding.encode(reference, disallowed_special=()), self.img_end_id])
            i = end + 1
        if skip_special_tokens:
            out = [t for t in out if t < self.eod_id]
        try:
            return self._encoding.decode(out, errors=errors)
        except KeyError as exc:
            raise TokenizerError(f"unknown token id {exc.args[0]} (vocabulary of {self.vocab_size})") from None

    def image_references(self, ids: Sequence[int]) -> list[str]:
        """The reference string of every image span in ``ids``, in order, read back as the
        original model reads them (the bytes before the first ``<imgpad>``)."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        found, i = [], 0
        while (start := _find(ids, self.img_start_id, i)) >= 0:
            end = _find(ids, self.img_end_id, start)
            if end < 0:
                raise TokenizerError("an <img> id without its </img>")
            inner = ids[start + 1:end]
            if self.img_pad_id in inner:
                inner = inner[:inner.index(self.img_pad_id)]
            found.append(bytes(inner).decode("utf-8", "replace"))
            i = end + 1
        return found

    def __repr__(self) -> str:
        return f"QwenTiktokenTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def _find(ids: Sequence[int], target: int, start: int) -> int:
    for i in range(start, len(ids)):
        if ids[i] == target:
            return i
    return -1


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
