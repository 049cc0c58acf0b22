"""Where stored bytes live: local paths, ``file://`` URIs and ``s3://bucket/key`` URIs, through one code path.

Dataset preparation (spec, record files, media, shards, manifest), prepared-dataset reads and ``s3://`` media in
``process_vision_info`` all go through this module, so a job reads and writes object storage exactly as it does a
local disk.

Why pyarrow's filesystems (not fsspec/s3fs): pyarrow is already our Parquet dependency; its C++ S3 client has
connect and request time limits and retries, ranged random-access reads (Parquet footers and single columns without
the pixel data), multipart uploads and server-side copies, and no asyncio event loop that breaks after ``fork``.
Its S3 client is not fork-safe once used, so a filesystem object is cached *per process*: a DataLoader or pool
worker forked from a parent that already read S3 builds its own client.

Credentials and endpoint come from ``storage_options`` (``endpoint_url``, ``access_key``, ``secret_key``,
``session_token``, ``region``, ``connect_timeout``, ``request_timeout``; ``--storage-option KEY=VALUE`` on the
command line) or else from the standard AWS environment variables as boto3 and s3fs read them
(``AWS_ENDPOINT_URL_S3`` over ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION`` over ``AWS_DEFAULT_REGION``). pyarrow alone ignores ``AWS_ENDPOINT_URL``; we
do not. Workers on other machines get the options explicitly (pass the dict), never by hoping their environment
matches.

Atomic writes: local files are written under a temporary name, fsynced and renamed. On S3 the bytes are uploaded
under a temporary key (``<key>.tmp-<pid>-<random>``) and then copied server-side to the final key and the temporary
deleted: pyarrow's output stream completes a multipart upload when it is closed, also on an error path, so writing
straight to the final key could publish a truncated object; an object that appears under its final name here is
always whole. A writer killed mid-upload leaves at most a temporary key, which :func:`remove_temporaries` clears.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import threading
import urllib.parse
from typing import Any, Iterator, Mapping

__all__ = [
    "StorageError", "StorageNotFoundError", "OPTION_KEYS", "is_remote", "is_uri", "check_location", "resolve",
    "join", "parent", "basename", "exists", "size", "delete", "makedirs", "list_dir", "read_bytes", "read_text",
    "open_input", "open_input_stream", "iter_lines", "atomic_output", "write_atomic", "put_file", "download", "remove_temporaries",
    "open_local_or_download", "parse_storage_options", "storage_options_from_env", "use_storage_options",
]

OPTION_KEYS = ("endpoint_url", "access_key", "secret_key", "session_token", "region", "connect_timeout",
               "request_timeout")
TEMP_MARKER = ".tmp-"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_CHUNK = 1 << 20


class StorageError(OSError):
    """A storage operation failed; the message names the location and the reason."""

    def __init__(self, reason: str, location: str):
        super().__init__(f"{location}: {reason}")
        self.location = location
        self.reason = reason


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The location does not exist (no such file, key or bucket)."""


# ----------------------------------------------------------------------------- locations


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` strings (including ``file://``)."""
    return bool(_SCHEME_RE.match(location))


def is_remote(location: str) -> bool:
    """True for object-storage locations (``s3://``)."""
    return location[:5].lower() == "s3://"


def check_location(location: str) -> str:
    """Return ``location`` if this module understands it; raise :class:`StorageError` naming it otherwise.

    A string with an unknown scheme (``gs://``, ``hdfs://``, ``http://``), an ``s3://`` URI without a bucket, or
    a malformed ``s3:/x`` (one slash, which a plain path join would silently turn into a local folder ``s3:``) is
    refused instead of being treated as a local path.
    """
    if not isinstance(location, str) or not location.strip():
        raise StorageError("empty location", repr(location))
    match = _SCHEME_RE.match(location)
    if match:
        scheme = match.group(1).lower()
        if scheme == "s3":
            bucket = location[5:].split("/", 1)[0]
            if not bucket:
                raise StorageError("an s3:// URI needs a bucket (s3://bucket/key)", location)
            return location
        if scheme == "file":
            return location
        raise StorageError(f"unsupported storage scheme {scheme!r} (local paths, file:// and s3:// are supported)",
                           location)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+:/", location):
        raise StorageError("malformed URI (a scheme needs '://'; write s3://bucket/key)", location)
    return location


def _file_uri_path(location: str) -> str:
    parsed = urllib.parse.urlparse(location)
    if parsed.netloc not in ("", "localhost"):
        raise StorageError("file:// URIs must name a local path (file:///path)", location)
    return urllib.parse.unquote(parsed.path)


def _split(location: str) -> tuple[str, str]:
    """``(kind, path)``: kind is ``"local"`` (absolute path) or ``"s3"`` (``bucket/key``)."""
    check_location(location)
    if is_remote(location):
        return "s3", location[5:].rstrip("/")
    if location[:7].lower() == "file://":
        return "local", os.path.abspath(_file_uri_path(location))
    return "local", os.path.abspath(os.path.expanduser(location))


def join(location: str, *parts: str) -> str:
    """``os.path.join`` that keeps ``s3://`` and ``file://`` URIs URIs."""
    if is_uri(location):
        result = location.rstrip("/")
        for part in parts:
            result = f"{result}/{part.strip('/')}" if part else result
        return result
    return os.path.join(location, *parts)


def parent(location: str) -> str:
    """The folder (or key prefix) that holds ``location``."""
    if is_uri(location):
        head = location.rstrip("/").rsplit("/", 1)[0]
        return head if not head.endswith(":/") else location
    return os.path.dirname(os.path.abspath(location))


def basename(location: str) -> str:
    """The last part of a path or key."""
    return location.rstrip("/").rsplit("/", 1)[-1] if is_uri(location) else os.path.basename(location)


# ----------------------------------------------------------------------------- options and filesystems


def storage_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The S3 options the standard AWS environment variables give (only those that are set)."""
    env = os.environ if environ is None else environ
    options: dict[str, str] = {}
    for key, names in (("endpoint_url", ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
                       ("access_key", ("AWS_ACCESS_KEY_ID",)), ("secret_key", ("AWS_SECRET_ACCESS_KEY",)),
                       ("session_token", ("AWS_SESSION_TOKEN",)), ("region", ("AWS_REGION", "AWS_DEFAULT_REGION"))):
        for name in names:
            if env.get(name):
                options[key] = env[name]
                break
    return options


def parse_storage_options(pairs: list[str] | None) -> dict[str, str]:
    """``["endpoint_url=http://...", ...]`` (from ``--storage-option`` flags) -> dict; unknown keys are errors."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not key:
            raise StorageError("expected KEY=VALUE", f"--storage-option {pair!r}")
        if key not in OPTION_KEYS:
            raise StorageError(f"unknown key {key!r} (known: {', '.join(OPTION_KEYS)})", f"--storage-option {pair!r}")
        options[key] = value.strip()
    return options


_process_options: dict[str, str] = {}


def use_storage_options(storage_options: Mapping[str, str] | None) -> None:
    """Make ``storage_options`` this process's defaults (over the environment, under options passed to a call).

    For workers on other machines: a preparation worker installs its job's options once, so that code which reads
    ``s3://`` without passing options (``process_vision_info`` fetching a record's media) uses the job's endpoint
    and credentials, not whatever that machine's environment holds.
    """
    for key in storage_options or {}:
        if key not in OPTION_KEYS:
            raise StorageError(f"unknown storage option {key!r} (known: {', '.join(OPTION_KEYS)})", "storage_options")
    _process_options.clear()
    _process_options.update({k: str(v) for k, v in (storage_options or {}).items() if v is not None})


def _effective_options(storage_options: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    options = storage_options_from_env()
    options.update(_process_options)
    for key, value in (storage_options or {}).items():
        if key not in OPTION_KEYS:
            raise StorageError(f"unknown storage option {key!r} (known: {', '.join(OPTION_KEYS)})", "storage_options")
        if value is not None:
            options[key] = str(value)
    return tuple(sorted(options.items()))


_filesystems: dict[tuple, object] = {}
_filesystems_lock = threading.Lock()
_atexit_registered = False


def _clear_filesystems() -> None:
    # Drop our S3 clients before pyarrow's own exit handler finalises S3 (a client that outlives it can deadlock
    # interpreter shutdown in some pyarrow releases). atexit runs handlers last-registered-first.
    _filesystems.clear()


def _s3_filesystem(options: tuple[tuple[str, str], ...]):
    import pyarrow.fs as pafs

    opts = dict(options)
    kwargs: dict = {
        "connect_timeout": float(opts.get("connect_timeout", 10.0)),
        "request_timeout": float(opts.get("request_timeout", 60.0)),
        "region": opts.get("region", "us-east-1"),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    endpoint = opts.get("endpoint_url")
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme or "https"
    if opts.get("access_key") or opts.get("secret_key"):
        kwargs["access_key"] = opts.get("access_key", "")
        kwargs["secret_key"] = opts.get("secret_key", "")
        if opts.get("session_token"):
            kwargs["session_token"] = opts["session_token"]
    return pafs.S3FileSystem(**kwargs)


def resolve(location: str, storage_options: Mapping[str, str] | None = None):
    """``(pyarrow filesystem, path)`` for ``location``; S3 filesystems are cached per process and option set."""
    global _atexit_registered
    kind, path = _split(location)
    import pyarrow.fs as pafs

    if kind == "local":
        return pafs.LocalFileSystem(), path
    key = (os.getpid(), _effective_options(storage_options))
    with _filesystems_lock:
        fs = _filesystems.get(key)
        if fs is None:
            for stale in [k for k in _filesystems if k[0] != key[0]]:  # clients inherited through fork: unusable
                del _filesystems[stale]
            fs = _filesystems[key] = _s3_filesystem(key[1])
            if not _atexit_registered:
                atexit.register(_clear_filesystems)
                _atexit_registered = True
    return fs, path


@contextlib.contextmanager
def _errors(location: str) -> Iterator[None]:
    """Turn pyarrow's OSErrors into StorageErrors that name the location."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageNotFoundError(_reason(exc, "no such file or key"), location) from None
    except (OSError, ValueError) as exc:
        reason = _reason(exc, type(exc).__name__)
        if "NoSuchBucket" in reason or "does not exist" in reason:
            raise StorageNotFoundError(reason, location) from None
        raise StorageError(reason, location) from None


def _reason(exc: BaseException, default: str) -> str:
    text = str(exc).strip() or default
    return text.splitlines()[0][:300]


# ----------------------------------------------------------------------------- reading


def _info(location: str, storage_options: Mapping[str, str] | None):
    fs, path = resolve(location, storage_options)
    with _errors(location):
        return fs, path, fs.get_file_info(path)


def exists(location: str, *, storage_options: Mapping[str, str] | None = None) -> bool:
    """True when a file or object (or folder / key prefix) is there."""
    import pyarrow.fs as pafs

    return _info(location, storage_options)[2].type != pafs.FileType.NotFound


def size(location: str, *, storage_options: Mapping[str, str] | None = None) -> int:
    """Size in bytes of a file or object."""
    import pyarrow.fs as pafs

    info = _info(location, storage_options)[2]
    if info.type == pafs.FileType.NotFound:
        raise StorageNotFoundError("no such file or key", location)
    if info.type != pafs.FileType.File:
        raise StorageError("not a file", location)
    return int(info.size)


def list_dir(location: str, *, storage_options: Mapping[str, str] | None = None) -> list[str]:
    """Locations of the files directly under a folder or key prefix, sorted; [] when there is none."""
    import pyarrow.fs as pafs

    fs, path = resolve(location, storage_options)
    with _errors(location):
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    names = sorted(info.base_name for info in infos if info.type == pafs.FileType.File)
    return [join(location, name) for name in names]


def open_input(location: str, *, storage_options: Mapping[str, str] | None = None):
    """A seekable binary file (pyarrow ``RandomAccessFile``: ranged reads on S3), usable by ``pyarrow.parquet``."""
    fs, path = resolve(location, storage_options)
    with _errors(location):
        return fs.open_input_file(path)


def open_input_stream(location: str, *, storage_options: Mapping[str, str] | None = None):
    """A forward-only binary stream (one GET on S3)."""
    fs, path = resolve(location, storage_options)
    with _errors(location):
        return fs.open_input_stream(path)


def read_bytes(location: str, *, max_bytes: int | None = None,
               storage_options: Mapping[str, str] | None = None) -> bytes:
    """The whole file or object; :class:`StorageError` (``SizeLimitError`` semantics) above ``max_bytes``."""
    fs, path = resolve(location, storage_options)
    with _errors(location):
        with fs.open_input_file(path) as handle:
            total = handle.size()
            if max_bytes is not None and total > max_bytes:
                raise StorageError(f"object is {total} bytes, over the {max_bytes}-byte limit", location)
            return handle.read()


def read_text(location: str, *, storage_options: Mapping[str, str] | None = None) -> str:
    """A UTF-8 text file (spec, manifest, JSON)."""
    return read_bytes(location, storage_options=storage_options).decode("utf-8")


def iter_lines(location: str, *, storage_options: Mapping[str, str] | None = None) -> Iterator[bytes]:
    """The lines of a file (without line ends), streamed: memory stays bounded for multi-GB record files."""
    with open_input_stream(location, storage_options=storage_options) as stream:
        pending = b""
        while True:
            with _errors(location):
                chunk = stream.read(_CHUNK)
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                yield line[:-1] if line.endswith(b"\r") else line
        if pending:
            yield pending[:-1] if pending.endswith(b"\r") else pending


def download(location: str, local_path: str, *, storage_options: Mapping[str, str] | None = None) -> int:
    """Copy ``location`` to a local file, atomically (temporary name + rename); returns the byte count."""
    directory = os.path.dirname(os.path.abspath(local_path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{local_path}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    written = 0
    try:
        with open_input_stream(location, storage_options=storage_options) as stream, open(tmp, "wb") as out:
            while True:
                with _errors(location):
                    chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                written += len(chunk)
        os.replace(tmp, local_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return written


# ----------------------------------------------------------------------------- writing


def makedirs(location: str, *, storage_options: Mapping[str, str] | None = None) -> None:
    """Create a local folder (and parents). On S3 there are no folders: nothing to do (the bucket must exist)."""
    kind, path = _split(location)
    if kind == "local":
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create folder: {exc.strerror or exc}", location) from None


def delete(location: str, *, missing_ok: bool = True, storage_options: Mapping[str, str] | None = None) -> None:
    """Delete one file or object."""
    fs, path = resolve(location, storage_options)
    try:
        with _errors(location):
            fs.delete_file(path)
    except StorageNotFoundError:
        if not missing_ok:
            raise


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary(location: str) -> str:
    return f"{location}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def atomic_output(location: str, *, storage_options: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A writable binary stream whose content appears under ``location`` only when the block ends without an
    error: the one atomic-write primitive (shards, reports, manifests).

    Local: a temporary file, fsynced, renamed (and the folder fsynced). Object store: a (multipart) upload to a
    temporary key, then a server-side copy to the final key and a delete, so a reader sees the whole object or
    none (S3 has no rename; a commit marker would make every reader check for it). An error inside the block
    leaves the old content, and at most a temporary that :func:`remove_temporaries` clears."""
    kind, path = _split(location)
    if kind == "local":
        tmp = _temporary(path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(os.path.dirname(path))
        except OSError as exc:
            raise StorageError(f"cannot write: {exc.strerror or exc}", location) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return
    fs, key = resolve(location, storage_options)
    tmp_key = _temporary(key)
    try:
        with _errors(location):
            with fs.open_output_stream(tmp_key, metadata={}) as out:
                yield out
            fs.move(tmp_key, key)  # server-side copy to the final key, then delete the temporary
    finally:
        with contextlib.suppress(Exception):
            if fs.get_file_info(tmp_key).type.name != "NotFound":
                fs.delete_file(tmp_key)


def write_atomic(location: str, data: bytes, *, storage_options: Mapping[str, str] | None = None) -> None:
    """Write ``data`` so that ``location`` holds either its old content or all of ``data``, never a part."""
    with atomic_output(location, storage_options=storage_options) as out:
        out.write(data)


def put_file(local_path: str, location: str, *, storage_options: Mapping[str, str] | None = None) -> int:
    """Copy a local file to ``location`` atomically (streamed, for files too big to hold twice); returns bytes."""
    total = 0
    with open(local_path, "rb") as src, atomic_output(location, storage_options=storage_options) as out:
        while chunk := src.read(8 * _CHUNK):
            out.write(chunk)
            total += len(chunk)
    return total


def remove_temporaries(location: str, *, storage_options: Mapping[str, str] | None = None) -> int:
    """Delete what killed writers left under ``location`` (files whose name holds the temporary marker)."""
    removed = 0
    for child in list_dir(location, storage_options=storage_options):
        if TEMP_MARKER in basename(child):
            delete(child, storage_options=storage_options)
            removed += 1
    return removed


def open_local_or_download(location: str, local_dir: str, *,
                           storage_options: Mapping[str, str] | None = None) -> str:
    """A local path holding ``location``'s bytes: the path itself when local, else a download into ``local_dir``."""
    kind, path = _split(location)
    if kind == "local":
        return path
    target = os.path.join(local_dir, basename(location))
    download(location, target, storage_options=storage_options)
    return target
