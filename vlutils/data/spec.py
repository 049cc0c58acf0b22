"""Dataset specs: one JSONL file, or a mixture config (JSON or YAML) naming several sources.

A mixture::

    {"model_type": "qwen2_5_vl", "max_length": 4096, "truncation": "drop",
     "sources": [{"name": "docs", "path": "docs.jsonl", "format": "messages",
                  "image": {"max_pixels": 1003520}},
                 {"name": "clips", "path": "clips/*.jsonl", "format": "sharegpt",
                  "video": {"fps": 1.0, "max_frames": 32}, "weight": 0.5}]}

Paths (and ``media_dir``) are relative to the config's folder. A source's ``image`` /
``video`` settings are defaults for items that do not set those keys. ``weight`` is kept in
the manifest for samplers; preparation writes every record once.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from ..clitext import install_hint
from ..errors import InvalidSpecError

FORMATS = ("auto", "messages", "sharegpt", "llava")
TRUNCATION = ("error", "drop", "shrink")
IMAGE_KEYS = ("min_pixels", "max_pixels", "resized_height", "resized_width")
VIDEO_KEYS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
              "resized_height", "resized_width", "video_start", "video_end")
_TOP_KEYS = {"model_type", "max_length", "truncation", "sources", "shard_size", "options", "media_dir"}
_SOURCE_KEYS = {"name", "path", "format", "image", "video", "weight", "media_dir"}


@dataclass(frozen=True)
class SourceSpec:
    """One source of a mixture: its files (sorted, globs expanded) and its vision defaults."""

    name: str
    files: tuple[str, ...]
    format: str = "auto"
    image: dict = field(default_factory=dict)
    video: dict = field(default_factory=dict)
    weight: float = 1.0
    media_dir: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    sources: tuple[SourceSpec, ...]
    model_type: str | None = None
    max_length: int | None = None
    truncation: str = "error"
    shard_size: int | None = None
    options: dict = field(default_factory=dict)  # passed to build_sample (e.g. system_prompt)
    path: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """sha256 of the canonical spec (settings and file names; not file contents)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_spec(path: str) -> DatasetSpec:
    """Read a ``.jsonl`` dataset (one source, format detected per record) or a mixture config."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise InvalidSpecError(f"{path}: no such spec file")
    if path.endswith(".jsonl"):
        name = os.path.splitext(os.path.basename(path))[0]
        return DatasetSpec(sources=(SourceSpec(name=name, files=(path,)),), path=path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            config = yaml.safe_load(text)
        else:
            config = json.loads(text)
    except ImportError:
        raise InvalidSpecError(f"{path}: YAML specs need pyyaml: {install_hint('data')}") from None
    except Exception as exc:  # json / yaml syntax errors
        raise InvalidSpecError(f"{path}: not valid JSON/YAML: {exc}") from None
    return parse_spec(config, os.path.dirname(path), path)


def parse_spec(config: Any, base_dir: str, label: str = "spec") -> DatasetSpec:
    """Validate a mixture config (a dict) whose relative paths are relative to ``base_dir``."""
    if not isinstance(config, dict) or not isinstance(config.get("sources"), list) or not config["sources"]:
        raise InvalidSpecError(f"{label}: a mixture needs a non-empty 'sources' list")
    _unknown(config, _TOP_KEYS, label)
    truncation = config.get("truncation", "error")
    if truncation not in TRUNCATION:
        raise InvalidSpecError(f"{label}: truncation must be one of {TRUNCATION}, got {truncation!r}")
    for key in ("max_length", "shard_size"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidSpecError(f"{label}: {key} must be a positive integer, got {value!r}")
    options = config.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidSpecError(f"{label}: options must be an object")
    top_media = config.get("media_dir")
    sources, names = [], set()
    for i, raw in enumerate(config["sources"]):
        where = f"{label}: sources[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            raise InvalidSpecError(f"{where}: each source needs a 'path' string")
        _unknown(raw, _SOURCE_KEYS, where)
        name = raw.get("name") or os.path.splitext(os.path.basename(raw["path"]))[0]
        if name in names:
            raise InvalidSpecError(f"{where}: duplicate source name {name!r}")
        names.add(name)
        fmt = raw.get("format", "auto")
        if fmt not in FORMATS:
            raise InvalidSpecError(f"{where}: format must be one of {FORMATS}, got {fmt!r}")
        pattern = os.path.join(base_dir, raw["path"])
        files = tuple(sorted(glob.glob(pattern))) if glob.has_magic(pattern) else (pattern,)
        if not files or not all(os.path.isfile(f) for f in files):
            raise InvalidSpecError(f"{where}: no file matches {raw['path']!r}")
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise InvalidSpecError(f"{where}: weight must be a positive number, got {weight!r}")
        media_dir = raw.get("media_dir", top_media)
        sources.append(SourceSpec(
            name=str(name), files=files, format=fmt,
            image=_settings(raw.get("image"), IMAGE_KEYS, f"{where}.image"),
            video=_settings(raw.get("video"), VIDEO_KEYS, f"{where}.video"),
            weight=float(weight),
            media_dir=os.path.join(base_dir, media_dir) if media_dir else None,
        ))
    return DatasetSpec(
        sources=tuple(sources), model_type=config.get("model_type"), max_length=config.get("max_length"),
        truncation=truncation, shard_size=config.get("shard_size"), options=options, path=label,
    )


def _settings(value: Any, allowed: tuple[str, ...], where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpecError(f"{where} must be an object")
    _unknown(value, set(allowed), where)
    return dict(value)


def _unknown(mapping: dict, allowed: set, where: str) -> None:
    extra = sorted(set(mapping) - set(allowed))
    if extra:
        raise InvalidSpecError(f"{where}: unknown key(s) {extra}; known: {sorted(allowed)}")


def iter_lines(source: SourceSpec) -> Iterator[tuple[int, bytes, str]]:
    """``(index, line, file)`` for every non-blank line of a source; ``index`` is the 0-based
    line number across the source's files in sorted order (blank lines count, but yield nothing).
    Lines stay bytes: a line that is not valid UTF-8 is rejected when parsed, never patched."""
    index = 0
    for path in source.files:
        with open(path, "rb") as handle:
            for line in handle:
                if line.strip():
                    yield index, line, path
                index += 1
