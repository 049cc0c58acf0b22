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

import fnmatch
import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping

from .. import storage
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
    base: str = ""  # the folder (or URI prefix) that relative paths of the spec are relative to

    def to_json(self) -> dict:
        """The spec with its locations relative to ``base``: the same data at another path (or
        copied to object storage) is the same job and resumes."""
        data = asdict(self)
        data.pop("base")
        data["path"] = _relative(self.path, self.base)
        for source in data["sources"]:
            source["files"] = [_relative(f, self.base) for f in source["files"]]
            if source["media_dir"]:
                source["media_dir"] = _relative(source["media_dir"], self.base)
        return data

    def digest(self) -> str:
        """sha256 of the canonical spec (settings and relative file names; not file contents)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _relative(location: str, base: str) -> str:
    if base and location.startswith(base.rstrip("/") + "/"):
        return location[len(base.rstrip("/")) + 1:]
    return location


def dirname(location: str) -> str:
    """The folder of a local path or the prefix of a URI (``s3://b/x/y.jsonl`` -> ``s3://b/x``)."""
    return storage.parent(location)


def normalize_location(location: str) -> str:
    """Local paths made absolute, ``file://`` URIs made local paths, ``s3://`` kept; anything the
    storage module does not understand (``gs://``, a mistyped ``s3:/x``) is an :class:`InvalidSpecError`."""
    try:
        storage.check_location(location)
    except storage.StorageError as exc:
        raise InvalidSpecError(str(exc)) from None
    if storage.is_remote(location):
        return location
    if location[:7].lower() == "file://":
        return storage.resolve(location)[1]
    return os.path.abspath(os.path.expanduser(location))


def load_spec(path: str, storage_options: Mapping[str, str] | None = None) -> DatasetSpec:
    """Read a ``.jsonl`` dataset (one source, format detected per record) or a mixture config,
    from a local path, a ``file://`` or an ``s3://`` URI."""
    path = normalize_location(path)
    try:
        found = storage.exists(path, storage_options=storage_options)
    except storage.StorageError as exc:
        raise InvalidSpecError(f"{path}: cannot read the spec: {exc}") from None
    if not found:
        raise InvalidSpecError(f"{path}: no such spec file")
    if path.endswith(".jsonl"):
        name = os.path.splitext(path.rsplit("/", 1)[-1])[0]
        return DatasetSpec(sources=(SourceSpec(name=name, files=(path,)),), path=path, base=dirname(path))
    try:
        text = storage.read_bytes(path, storage_options=storage_options).decode("utf-8")
    except (storage.StorageError, UnicodeDecodeError) as exc:
        raise InvalidSpecError(f"{path}: cannot read the spec: {exc}") from None
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
    return parse_spec(config, dirname(path), path, storage_options=storage_options)


def parse_spec(config: Any, base_dir: str, label: str = "spec",
               storage_options: Mapping[str, str] | None = None) -> DatasetSpec:
    """Validate a mixture config (a dict) whose relative paths are relative to ``base_dir``."""
    base_dir = normalize_location(base_dir)
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
        files = _expand(_located(raw["path"], base_dir), where, storage_options)
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise InvalidSpecError(f"{where}: weight must be a positive number, got {weight!r}")
        media_dir = raw.get("media_dir", top_media)
        sources.append(SourceSpec(
            name=str(name), files=files, format=fmt,
            image=_settings(raw.get("image"), IMAGE_KEYS, f"{where}.image"),
            video=_settings(raw.get("video"), VIDEO_KEYS, f"{where}.video"),
            weight=float(weight),
            media_dir=_located(media_dir, base_dir) if media_dir else None,
        ))
    return DatasetSpec(
        sources=tuple(sources), model_type=config.get("model_type"), max_length=config.get("max_length"),
        truncation=truncation, shard_size=config.get("shard_size"), options=options, path=label, base=base_dir,
    )


def _located(path: str, base_dir: str) -> str:
    """A spec path: absolute paths and URIs as they are, relative ones under ``base_dir``."""
    if "://" in path or os.path.isabs(path):
        return normalize_location(path)
    return normalize_location(storage.join(base_dir, path))


def _expand(pattern: str, where: str, storage_options: Mapping[str, str] | None) -> tuple[str, ...]:
    """The sorted files a source path names (a glob in the last path component on object stores)."""
    try:
        if not glob.has_magic(pattern):
            files: tuple[str, ...] = (pattern,)
        elif storage.is_remote(pattern):
            folder, name = pattern.rsplit("/", 1)
            if glob.has_magic(folder):
                raise InvalidSpecError(f"{where}: on object storage only the file name may hold a glob: {pattern!r}")
            files = tuple(sorted(f for f in storage.list_dir(folder, storage_options=storage_options)
                                 if fnmatch.fnmatchcase(f.rsplit("/", 1)[-1], name)))
        else:
            files = tuple(sorted(glob.glob(pattern)))
        if not files or not all(_is_file(f, storage_options) for f in files):
            raise InvalidSpecError(f"{where}: no file matches {pattern!r}")
    except storage.StorageError as exc:
        raise InvalidSpecError(f"{where}: cannot list {pattern!r}: {exc}") from None
    return files


def _is_file(location: str, storage_options: Mapping[str, str] | None) -> bool:
    if not storage.is_remote(location):
        return os.path.isfile(location)
    return storage.exists(location, storage_options=storage_options)


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


def iter_lines(source: SourceSpec, storage_options: Mapping[str, str] | None = None
               ) -> Iterator[tuple[int, bytes, str]]:
    """``(index, line, file)`` for every non-blank line of a source; ``index`` is the 0-based
    line number across the source's files in sorted order (blank lines count, but yield nothing).
    Lines stay bytes: a line that is not valid UTF-8 is rejected when parsed, never patched."""
    index = 0
    for path in source.files:
        rest = b""
        with storage.open_input(path, storage_options=storage_options) as handle:
            while True:
                chunk = handle.read(1 << 20)
                if not chunk:
                    break
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield index, line + b"\n", path
                    index += 1
        if rest:
            if rest.strip():
                yield index, rest, path
            index += 1
