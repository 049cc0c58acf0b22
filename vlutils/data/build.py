"""One record -> one encoded row (or a rejection): the work every engine's workers do.

The seam with training is :func:`vlutils.train.build_sample`: media is fetched here first
(``process_vision_info`` with the model's patch size), handed to ``build_sample`` with the
rest of the conversation, and the resized media are kept so that the row stores them
(see :mod:`vlutils.data.rows`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from ..families import is_fixed_span
from .records import parse_record
from .rows import encode_row
from .spec import DatasetSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A record to prepare: ``source`` is its position in the spec, ``index`` its line."""

    source: int
    index: int
    line: bytes
    path: str


def tokenizer_file(path: str, storage_options: Mapping[str, str] | None = None) -> str:
    """The tokenizer file that ``path`` names: the file itself, or the ``tokenizer.json`` (else
    the Qwen-VL ``qwen.tiktoken``) in that folder."""
    from .. import storage
    from ..errors import InvalidSpecError
    from ..tokenizer import TIKTOKEN_FILE, TOKENIZER_JSON

    try:
        if storage.exists(path, storage_options=storage_options) and not _is_file(path, storage_options):
            for name in (TOKENIZER_JSON, TIKTOKEN_FILE):
                candidate = storage.join(path, name)
                if _is_file(candidate, storage_options):
                    return candidate
        if _is_file(path, storage_options):
            return path
    except storage.StorageError as exc:
        raise InvalidSpecError(f"tokenizer {path}: {exc}") from None
    raise InvalidSpecError(f"{path}: no {TOKENIZER_JSON} or {TIKTOKEN_FILE} there")


def _is_file(path: str, storage_options: Mapping[str, str] | None) -> bool:
    from pyarrow import fs

    from .. import storage

    filesystem, inner = storage.resolve(path, storage_options=storage_options)
    return filesystem.get_file_info(inner).type == fs.FileType.File


def read_tokenizer_json(path: str, storage_options: Mapping[str, str] | None = None) -> str:
    """The text of the tokenizer that ``path`` names (local, file:// or s3://): a tokenizer.json,
    or a ``qwen.tiktoken`` vocabulary (base64 lines, ASCII)."""
    from .. import storage

    return storage.read_bytes(tokenizer_file(path, storage_options), storage_options=storage_options).decode()


def load_tokenizer(path: str | None, tokenizer_json: str | None = None,
                   storage_options: Mapping[str, str] | None = None) -> Any:
    """The tokenizer from its text (:func:`read_tokenizer_json`), a file or a folder holding one: a
    ``tokenizers.Tokenizer`` for a tokenizer.json, Qwen-VL's tokenizer for a ``qwen.tiktoken``."""
    text = tokenizer_json if tokenizer_json is not None else read_tokenizer_json(path, storage_options)
    if not text.lstrip().startswith("{"):
        from ..errors import InvalidSpecError, TokenizerError
        from ..tiktoken_qwen import QwenTiktokenTokenizer

        try:
            return QwenTiktokenTokenizer.from_bytes(text.encode("ascii", "replace"), name=str(path or "qwen.tiktoken"))
        except TokenizerError as exc:
            raise InvalidSpecError(str(exc)) from None
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def _build_sample():
    from ..train import build_sample  # noqa: PLC0415 - torch-heavy, loaded in workers

    return build_sample


class SampleBuilder:
    """Holds the tokenizer and settings; call it with a :class:`Job`."""

    def __init__(self, spec: DatasetSpec, tokenizer_path: str | None, model_type: str, *,
                 tokenizer_json: str | None = None, storage_options: Mapping[str, str] | None = None):
        self.spec = spec
        self.model_type = model_type
        self.storage_options = dict(storage_options or {})
        self.tokenizer = load_tokenizer(tokenizer_path, tokenizer_json, storage_options)
        self.build_sample = _build_sample()

    def __call__(self, job: Job) -> dict:
        """``{"kind": "row", "row": ...}`` or ``{"kind": "rejected", "rejected": {...}}``."""
        source = self.spec.sources[job.source]
        try:
            messages = parse_record(job.line, source, job.path)
            row = self._sample_row(messages, f"{source.name}:{job.index}")
        except Exception as exc:  # a bad record never stops the job: it is reported, typed
            if not isinstance(exc, ValueError):
                logger.warning("%s:%d: unexpected %s: %s", source.name, job.index, type(exc).__name__, exc)
            return {"kind": "rejected", "rejected": {
                "source": source.name, "index": job.index, "error": type(exc).__name__, "message": self._relative(str(exc))}}
        if row is None:
            return {"kind": "rejected", "rejected": {
                "source": source.name, "index": job.index, "error": "Dropped",
                "message": f"longer than max_length={self.spec.max_length} (truncation='drop')"}}
        row.update(source=source.name, index=job.index)
        return {"kind": "row", "row": row}

    def _relative(self, message: str) -> str:
        """Paths under the spec's folder named relative to it, so the rejected list does not depend on
        where the data sits (the same data moved, or copied to object storage, gives the same bytes)."""
        base = self.spec.base.rstrip("/")
        return message.replace(base + "/", "") if base else message

    def _sample_row(self, messages: list[dict], name: str) -> dict | None:
        from ..inputs import fetch_media, split_video_metadata

        preset = vision_preset(self.model_type, self.spec.options)
        if is_fixed_span(self.model_type):
            return self._fixed_span_row(messages, name, preset)
        images, videos, video_kwargs = fetch_media([messages], self.model_type, preset.patch_size)
        # "drop" is run as "error" so that the rejected line carries the typed reason and both lengths
        truncation = "error" if self.spec.truncation == "drop" else self.spec.truncation
        sample = self.build_sample(
            messages, self.tokenizer, self.model_type, max_length=self.spec.max_length,
            truncation=truncation, images=images, videos=videos, video_kwargs=video_kwargs,
            **{"sample_id": name, **self.spec.options},
        )
        if sample is None:
            return None
        frames, _ = split_video_metadata(videos)
        return encode_row(sample, images or [], frames or [], preset)

    def _fixed_span_row(self, messages: list[dict], name: str, preset: Any) -> dict | None:
        """Qwen-VL: images fetched and resized once; the row stores them, the sample is built from them."""
        from ..chat_qwen_vl import conversation_turns
        from ..image_qwen_vl import load_qwen_vl_image, resize

        items = conversation_turns(messages).images  # every image, in message order
        resized = [resize(load_qwen_vl_image(item), preset.image_size) for item in items]
        truncation = "error" if self.spec.truncation == "drop" else self.spec.truncation
        sample = self.build_sample(messages, self.tokenizer, self.model_type, max_length=self.spec.max_length,
                                   truncation=truncation, images=resized, **{"sample_id": name, **self.spec.options})
        return None if sample is None else encode_row(sample, resized, [], preset)


def vision_preset(model_type: str, options: dict):
    """The patchify preset of ``model_type`` with any preset fields set in the spec's options
    (Qwen-VL: a :class:`~vlutils.image_qwen_vl.QwenVLPreset` with its ``image_size``)."""
    import dataclasses

    if is_fixed_span(model_type):
        from ..image_qwen_vl import DEFAULT_IMAGE_SIZE, QwenVLPreset, check_image_size

        return QwenVLPreset(check_image_size(options.get("image_size", DEFAULT_IMAGE_SIZE)))

    from ..processor import VisionPreset, get_preset

    fields = {f.name for f in dataclasses.fields(VisionPreset)}
    return get_preset(model_type, **{k: v for k, v in options.items() if k in fields})
