"""Typed exceptions for every way a vision input can fail.

All of them derive from :class:`VisionInputError`, itself a ``ValueError`` so that
code written against qwen-vl-utils (which raised bare ``ValueError``) keeps working.
Each message names the offending input (shortened) and, when known, its position
in the conversation, e.g. ``conversation 0, message 1, item 2``.
"""

from __future__ import annotations

from typing import Any

_MAX_LABEL = 120


def describe_source(source: Any, limit: int = _MAX_LABEL) -> str:
    """A short, printable description of a source for error messages and logs."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, str):
        text = _without_credentials(source)
        if text.startswith("data:") and "," in text:
            head = text.split(",", 1)[0]
            text = f"{head},<{len(source) - len(head) - 1} chars>"
        elif len(text) > limit and not text.startswith(("http://", "https://", "file://", "/")):
            text = f"<string of {len(text)} chars>"
    else:
        cls = type(source).__name__
        shape = getattr(source, "shape", None) or getattr(source, "size", None)
        text = f"<{cls} {tuple(shape)}>" if shape is not None and not callable(shape) else f"<{cls}>"
    if len(text) > limit:
        half = (limit - 3) // 2
        text = text[:half] + "..." + text[-half:]
    return text


def _without_credentials(text: str) -> str:
    """``https://user:secret@host/x`` -> ``https://***@host/x``: errors end up in logs."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in ("http", "https") and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return text


class VisionInputError(ValueError):
    """Base class: a vision input (image, video, or the message holding it) is unusable."""

    def __init__(self, reason: str, source: Any = None, position: str | None = None):
        self.reason = reason
        self.source = source
        self.position = position
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.position:
            parts.append(self.position)
        if self.source is not None:
            parts.append(describe_source(self.source))
        prefix = ": ".join(parts)
        return f"{prefix}: {self.reason}" if prefix else self.reason

    def with_position(self, position: str) -> "VisionInputError":
        """Attach where in the conversation the failing item sits (keeps the type)."""
        if self.position is None:
            self.position = position
            self.args = (self._format(),)
        return self

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (_rebuild, (type(self), self.reason, self.source_label(), self.position, str(self)))

    def source_label(self) -> str | None:
        return None if self.source is None else describe_source(self.source)


def _rebuild(cls, reason, source, position, message=None):
    exc = cls(reason, source, position)
    if message is not None:
        exc.args = (message,)  # the label was already shortened: keep the original text
    return exc


class InvalidMessageError(VisionInputError):
    """The conversation structure is malformed (missing/ill-typed fields, unknown content)."""


class InvalidOptionError(VisionInputError):
    """An option such as min_pixels, fps or nframes is of the wrong type or out of range."""


class UnsupportedSourceError(VisionInputError):
    """The source is of a kind or scheme that cannot be read."""


class SourceNotFoundError(VisionInputError):
    """A local path does not exist, is a directory, or cannot be read."""


class FetchError(VisionInputError):
    """Downloading a URL failed (connection, HTTP status, redirects)."""


class FetchTimeoutError(FetchError):
    """A network operation exceeded its time limit."""


class SizeLimitError(VisionInputError):
    """Too many bytes, pixels or frames: the input exceeds a configured cap."""


class DecodeError(VisionInputError):
    """The bytes are not a decodable image/video (corrupt, truncated, wrong format, empty)."""


class DecodeTimeoutError(DecodeError):
    """Decoding exceeded its time limit (a hanging backend was stopped)."""


class BackendUnavailableError(VisionInputError):
    """The requested video backend is unknown or cannot be loaded here."""


class UnsafeSourceError(VisionInputError):
    """Refused by the safe-mode policy (scheme, path outside allowed roots, private address)."""


class InvalidRecordError(InvalidMessageError):
    """A dataset record cannot become a conversation (malformed JSON, unknown roles, or
    ``<image>``/``<video>`` tags that disagree with the record's media lists)."""


class InvalidSpecError(ValueError):
    """A dataset spec (JSONL path or mixture config) is unusable; names the file and the field."""


class TooManyRejectedError(ValueError):
    """A preparation job finished (everything written) but rejected more than its allowed share of
    records; the message summarises why, ``manifest`` holds the counts."""

    def __init__(self, message: str, manifest: dict | None = None):
        super().__init__(message)
        self.manifest = manifest


class SampleTooLongError(VisionInputError):
    """A training sample has more tokens than ``max_length`` (``length`` and ``max_length`` are kept)."""

    def __init__(self, reason: str, source: Any = None, position: str | None = None, *,
                 length: int | None = None, max_length: int | None = None):
        self.length = length
        self.max_length = max_length
        super().__init__(reason, source, position)

    def __reduce__(self):  # keep the lengths across DataLoader worker processes
        return (_rebuild_too_long, (self.reason, self.position, self.length, self.max_length, str(self)))


def _rebuild_too_long(reason, position, length, max_length, message):
    exc = SampleTooLongError(reason, None, position, length=length, max_length=max_length)
    exc.args = (message,)
    return exc


class TokenizerError(ValueError):
    """A tokenizer file is missing or malformed, or a text cannot be encoded the way the
    model's own tokenizer would (e.g. an unclosed ``<img>`` tag); names the file or text."""
