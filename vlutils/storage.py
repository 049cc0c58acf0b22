"""TEMPORARY stand-in for the lead's vlutils/storage.py (same API, see /work/notes/STORAGE.md);
replaced by main's module at merge time."""

from __future__ import annotations

import os
import uuid
from typing import Iterator, Mapping


class StorageError(OSError):
    def __init__(self, location: str, reason: str):
        self.location, self.reason = location, reason
        super().__init__(f"{location}: {reason}")


class StorageNotFoundError(StorageError):
    pass


_CACHE: dict = {}


def is_remote(location: str) -> bool:
    return location.startswith("s3://")


def _options(storage_options):
    env = os.environ
    opts = {"endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            "access_key": env.get("AWS_ACCESS_KEY_ID"), "secret_key": env.get("AWS_SECRET_ACCESS_KEY"),
            "session_token": env.get("AWS_SESSION_TOKEN"),
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")}
    opts.update(storage_options or {})
    return {k: v for k, v in opts.items() if v}


def resolve(location: str, storage_options: Mapping[str, str] | None = None):
    from pyarrow import fs

    if location.startswith("s3://"):
        opts = _options(storage_options)
        key = (os.getpid(), tuple(sorted(opts.items())))
        if key not in _CACHE:
            endpoint = opts.get("endpoint_url")
            scheme, host = ("http", endpoint) if not endpoint else endpoint.split("://", 1)
            _CACHE[key] = fs.S3FileSystem(
                access_key=opts.get("access_key"), secret_key=opts.get("secret_key"),
                session_token=opts.get("session_token"), region=opts.get("region", "us-east-1"),
                endpoint_override=host if endpoint else None, scheme=scheme,
                connect_timeout=float(opts.get("connect_timeout", 10)),
                request_timeout=float(opts.get("request_timeout", 60)), allow_bucket_creation=True)
        return _CACHE[key], location[len("s3://"):]
    if location.startswith("file://"):
        location = location[len("file://"):]
    elif "://" in location or location.startswith("s3:"):
        raise StorageError(location, "unsupported storage scheme (use a local path, file:// or s3://)")
    return fs.LocalFileSystem(), os.path.abspath(location)


def join(location: str, *parts: str) -> str:
    if "://" in location:
        out = location.rstrip("/")
        for part in parts:
            out = out + "/" + part.strip("/")
        return out
    return os.path.join(location, *parts)


def _info(location, storage_options=None):
    filesystem, path = resolve(location, storage_options=storage_options)
    return filesystem.get_file_info(path)


def exists(location, *, storage_options=None) -> bool:
    from pyarrow import fs

    return _info(location, storage_options).type != fs.FileType.NotFound


def size(location, *, storage_options=None) -> int:
    info = _info(location, storage_options)
    if info.size is None:
        raise StorageNotFoundError(location, "no such file")
    return info.size


def delete(location, *, storage_options=None) -> None:
    filesystem, path = resolve(location, storage_options)
    filesystem.delete_file(path)


def makedirs(location, *, storage_options=None) -> None:
    filesystem, path = resolve(location, storage_options)
    filesystem.create_dir(path, recursive=True)


def list_dir(location, *, storage_options=None) -> list[str]:
    from pyarrow import fs

    filesystem, path = resolve(location, storage_options)
    try:
        infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except Exception as exc:
        raise StorageError(location, str(exc)) from None
    return sorted(join(location, i.base_name) for i in infos if i.type == fs.FileType.File)


def read_bytes(location, *, max_bytes=None, storage_options=None) -> bytes:
    filesystem, path = resolve(location, storage_options)
    try:
        with filesystem.open_input_stream(path) as handle:
            return handle.read()
    except FileNotFoundError:
        raise StorageNotFoundError(location, "no such file") from None


def open_input(location, *, storage_options=None):
    filesystem, path = resolve(location, storage_options)
    try:
        return filesystem.open_input_file(path)
    except FileNotFoundError:
        raise StorageNotFoundError(location, "no such file") from None


def iter_lines(location, *, storage_options=None) -> Iterator[bytes]:
    with open_input(location, storage_options=storage_options) as handle:
        rest = b""
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                yield line + b"\n"
        if rest:
            yield rest


def write_atomic(location, data: bytes, *, storage_options=None) -> None:
    filesystem, path = resolve(location, storage_options)
    if not is_remote(location):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with filesystem.open_output_stream(tmp) as handle:
        handle.write(data)
    filesystem.copy_file(tmp, path)
    filesystem.delete_file(tmp)


def download(location, local_path, *, storage_options=None) -> None:
    write = local_path + ".tmp"
    with open(write, "wb") as out:
        out.write(read_bytes(location, storage_options=storage_options))
    os.replace(write, local_path)


def parse_storage_options(items) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option needs KEY=VALUE, got {item!r}")
        out[key] = value
    return out
