"""Where media bytes come from: local paths, file:// URIs, http(s) URLs, s3:// objects, data: URIs,
bare base64, raw bytes, and in-memory objects (PIL images, arrays, tensors).

One job: turn whatever the user put in a content item into a :class:`Source`
(a local path, a bytes buffer, or an in-memory object) without decoding it.
Network access has connect/read/total time limits, a byte cap and bounded retries
on transient failures; every failure is a typed :mod:`vlutils.errors` exception
that names the input.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import os
import re
import stat
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Callable, Iterator

import requests
import requests.adapters
import urllib3
import urllib3.connection

from . import cancel as _cancel
from . import policy as _policy
from .uris import Base64Text, windows_file_uri_to_path
from .errors import (
    FetchError,
    FetchTimeoutError,
    InvalidMessageError,
    SizeLimitError,
    SourceNotFoundError,
    UnsupportedSourceError,
    VisionInputError,
)

logger = logging.getLogger(__name__)

_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/_\-\s]+={0,2}\s*$")
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_CHUNK = 1 << 16


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class FetchSettings:
    """Limits for reading media. Defaults can be overridden with environment variables.

    ``url_check`` is called with every URL before it is requested (including each
    redirect target); safe mode uses it to refuse private addresses.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 300.0
    max_bytes: int = 512 * 1024 * 1024
    retries: int = 2
    backoff: float = 0.2
    max_redirects: int = 10
    url_check: Callable[[str], None] | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls) -> "FetchSettings":
        """Settings from ``VLUTILS_HTTP_CONNECT_TIMEOUT``, ``VLUTILS_HTTP_TIMEOUT`` (read),
        ``VLUTILS_HTTP_TOTAL_TIMEOUT``, ``VLUTILS_MAX_BYTES`` and ``VLUTILS_HTTP_RETRIES``."""
        d = cls()
        return _policy.apply(cls(
            connect_timeout=_env_float("VLUTILS_HTTP_CONNECT_TIMEOUT", d.connect_timeout),
            read_timeout=_env_float("VLUTILS_HTTP_TIMEOUT", d.read_timeout),
            total_timeout=_env_float("VLUTILS_HTTP_TOTAL_TIMEOUT", d.total_timeout),
            max_bytes=int(_env_float("VLUTILS_MAX_BYTES", d.max_bytes)),
            retries=int(_env_float("VLUTILS_HTTP_RETRIES", d.retries)),
        ))

    def replace(self, **changes: Any) -> "FetchSettings":
        return replace(self, **changes)


@dataclass
class Source:
    """A resolved, not yet decoded, media source.

    ``kind`` is one of ``"path"`` (``path`` is set), ``"bytes"`` (``data`` is set) or
    ``"object"`` (``obj`` is a PIL image, numpy array or torch tensor). ``original``
    is what the user passed, kept for error messages.
    """

    kind: str
    original: Any
    path: str | None = None
    data: bytes | None = None
    obj: Any = None


# --------------------------------------------------------------------------- HTTP

_thread_state = threading.local()


class _CancellableConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        _cancel.watch_socket(self.sock)  # an async caller's cancel wakes the wait for the answer


class _CancellableHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        _cancel.watch_socket(self.sock)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _CancellableConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _CancellableHTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections register their socket with the cancel token."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def _session() -> requests.Session:
    """One requests session per thread (sessions are not guaranteed thread-safe)."""
    session = getattr(_thread_state, "session", None)
    if session is None or getattr(_thread_state, "pid", None) != os.getpid():
        session = requests.Session()
        session.mount("http://", _Adapter())
        session.mount("https://", _Adapter())
        session.headers["User-Agent"] = "vlutils"
        session.trust_env = True
        _thread_state.session = session
        _thread_state.pid = os.getpid()
    return session


def download(url: str, dest: BinaryIO, settings: FetchSettings | None = None) -> int:
    """Stream ``url`` into ``dest`` and return the number of bytes written.

    Retries (bounded, with backoff) on connection failures and 5xx answers only;
    follows redirects by hand so that each hop is checked; enforces connect/read
    timeouts, an overall deadline and ``settings.max_bytes``.
    """
    settings = _policy.apply(settings or FetchSettings.from_env())
    attempt = 0
    while True:
        _cancel.check()
        start_pos = dest.tell()
        try:
            return _download_once(url, dest, settings)
        except VisionInputError:
            _cancel.check()  # a socket shut down by a cancel is the cancel, not a network error
            raise
        except _Retryable as exc:
            _cancel.check()
            attempt += 1
            if attempt > settings.retries:
                raise exc.error from None
            logger.info("retrying %s after %s (attempt %d)", url, exc.error.reason, attempt)
            dest.seek(start_pos)
            dest.truncate()
            time.sleep(settings.backoff * (2 ** (attempt - 1)))


class _Retryable(Exception):
    def __init__(self, error: FetchError):
        self.error = error


def _download_once(url: str, dest: BinaryIO, settings: FetchSettings) -> int:
    deadline = time.monotonic() + settings.total_timeout
    timeout = (settings.connect_timeout, settings.read_timeout)
    current = url
    for _ in range(settings.max_redirects + 1):
        _check_http_url(current, url, settings)
        try:
            response = _session().get(
                current, stream=True, timeout=timeout, allow_redirects=False,
                auth=_NO_AUTH if _policy.current() is not None else None,
            )
        except requests.exceptions.ConnectTimeout:
            raise _Retryable(FetchTimeoutError(f"connect timed out after {settings.connect_timeout}s", url))
        except requests.exceptions.ReadTimeout:
            raise FetchTimeoutError(f"no response within {settings.read_timeout}s", url) from None
        except requests.exceptions.ConnectionError as exc:
            raise _Retryable(FetchError(f"connection failed: {_short(exc)}", url))
        except requests.exceptions.RequestException as exc:
            raise FetchError(f"request failed: {_short(exc)}", url) from None
        except (ValueError, urllib3.exceptions.HTTPError) as exc:  # e.g. LocationParseError from urllib3's connect
            raise FetchError(f"invalid URL: {_short(exc)}", url) from None
        with response:
            _cancel.check()  # an async caller gave up while the server was answering
            if response.is_redirect:
                location = response.headers.get("Location", "")
                try:
                    current = urllib.parse.urljoin(current, location)
                except ValueError as exc:
                    raise FetchError(f"redirect to an invalid URL {location[:80]!r} ({exc})", url) from None
                continue
            if response.status_code in _RETRY_STATUSES:
                raise _Retryable(FetchError(f"HTTP {response.status_code} {response.reason}", url))
            if response.status_code >= 400:
                raise FetchError(f"HTTP {response.status_code} {response.reason}", url)
            return _read_body(response, dest, settings, deadline, url)
    raise FetchError(f"more than {settings.max_redirects} redirects", url)


def _NO_AUTH(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit (empty) auth: stops requests from attaching ~/.netrc credentials, which
    in safe mode would go to whatever host a stranger's message (or its redirect) names."""
    return request


def _check_http_url(current: str, original: str, settings: FetchSettings) -> None:
    try:
        scheme = urllib.parse.urlsplit(current).scheme.lower()
    except ValueError as exc:  # "Invalid IPv6 URL", bad bracketed host
        raise FetchError(f"invalid URL {current[:80]!r} ({exc})", original) from None
    if scheme not in ("http", "https"):
        raise FetchError(f"redirected to unsupported scheme {scheme!r} ({current[:80]})", original)
    if settings.url_check is not None:
        try:
            settings.url_check(current)
        except VisionInputError as exc:
            if current != original:
                exc.reason = f"redirect to {current[:80]}: {exc.reason}"
            exc.source = original
            exc.args = (exc._format(),)
            raise


def _read_body(response: requests.Response, dest: BinaryIO, settings: FetchSettings, deadline: float, url: str) -> int:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_bytes:
        raise SizeLimitError(f"Content-Length {declared} exceeds the {settings.max_bytes}-byte limit", url)
    written = 0
    token = _cancel.current()
    try:
        for chunk in _body_chunks(response):
            _cancel.check(token)
            written += len(chunk)
            if written > settings.max_bytes:
                raise SizeLimitError(f"body exceeds the {settings.max_bytes}-byte limit", url)
            if time.monotonic() > deadline:
                raise FetchTimeoutError(f"download took longer than {settings.total_timeout}s", url)
            dest.write(chunk)
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        if "timed out" in str(exc).lower():
            raise FetchTimeoutError(f"body stalled for more than {settings.read_timeout}s", url) from None
        raise FetchError(f"connection broken while reading body: {_short(exc)}", url) from None
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as exc:
        raise FetchError(f"truncated body: {_short(exc)}", url) from None
    except urllib3.exceptions.ReadTimeoutError:
        raise FetchTimeoutError(f"body stalled for more than {settings.read_timeout}s", url) from None
    except urllib3.exceptions.DecodeError as exc:
        raise FetchError(f"bad Content-Encoding: {_short(exc)}", url) from None
    encoded = response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    if declared is not None and declared.isdigit() and not encoded and written < int(declared):
        # Content-Length counts the bytes on the wire: only an unencoded body can be compared
        # (urllib3 itself notices a short gzip stream)
        raise FetchError(f"truncated body: got {written} of {declared} bytes", url)
    return written


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """Decoded body chunks as soon as any bytes arrive (``read1``). ``iter_content(n)``
    blocks until ``n`` bytes have arrived, so a server trickling a byte at a time would
    never trip the read timeout and would outlast the total deadline."""
    raw = response.raw
    while True:
        chunk = raw.read1(_CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def fetch_url_bytes(url: str, settings: FetchSettings | None = None) -> bytes:
    """Download a whole URL into memory (images)."""
    buffer = io.BytesIO()
    download(url, buffer, settings)
    return buffer.getvalue()


# ------------------------------------------------------------------------ strings


def _object_storage_error(exc: Exception, original: Any) -> VisionInputError:
    from . import storage

    if isinstance(exc, storage.StorageNotFoundError):
        return SourceNotFoundError(f"no such object: {exc.reason}", original)
    if "limit" in getattr(exc, "reason", ""):
        return SizeLimitError(exc.reason, original)
    return FetchError(f"object storage: {getattr(exc, 'reason', exc)}", original)


def fetch_object_bytes(uri: str, settings: FetchSettings, original: Any = None) -> bytes:
    """Read an ``s3://`` object (credentials and endpoint: see :mod:`vlutils.storage`) under the byte cap."""
    from . import storage

    try:
        data = storage.read_bytes(uri, max_bytes=settings.max_bytes, storage_options=_object_timeouts(settings))
    except ImportError:
        raise UnsupportedSourceError(
            's3:// sources need pyarrow: pip install "qwenvl-kit[data]"', original if original is not None else uri
        ) from None
    except storage.StorageError as exc:
        raise _object_storage_error(exc, original if original is not None else uri) from None
    if not data:
        raise UnsupportedSourceError("object is empty (0 bytes)", original if original is not None else uri)
    return data


def _object_timeouts(settings: FetchSettings) -> dict[str, str]:
    return {"connect_timeout": str(settings.connect_timeout), "request_timeout": str(settings.read_timeout)}


def parse_data_uri(uri: str) -> bytes:
    """Decode a ``data:[<mediatype>][;base64],<payload>`` URI."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise UnsupportedSourceError("data URI has no ',' separating header and payload", uri)
    if header.endswith(";base64"):
        return decode_base64(payload, uri)
    return urllib.parse.unquote_to_bytes(payload)


def decode_base64(text: str, original: Any = None) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, padding optional)."""
    compact = "".join(text.split())
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnsupportedSourceError(f"invalid base64 data ({exc})", original if original is not None else text) from None
    if not data:
        raise UnsupportedSourceError("base64 payload is empty", original if original is not None else text)
    return data


def file_uri_to_path(uri: str, os_name: str | None = None) -> str:
    """``file:///a%20b.jpg`` -> ``/a b.jpg``. Falls back to the raw text after ``file://``
    (what qwen-vl-utils did) when only that exists on disk. On Windows (``os_name == "nt"``)
    drive-letter and UNC forms map to Windows paths (:func:`windows_file_uri_to_path`)."""
    raw = uri[len("file://"):]
    if (os.name if os_name is None else os_name) == "nt":
        decoded = windows_file_uri_to_path(uri)
        return raw if not os.path.exists(decoded) and os.path.exists(raw) else decoded
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError:  # "file://[x": not a URL after all, only a (strange) path
        return raw
    decoded = urllib.parse.unquote(parsed.path)
    if parsed.netloc and parsed.netloc != "localhost":
        decoded = urllib.parse.unquote(parsed.netloc + parsed.path)  # file://relative/path
    if not os.path.exists(decoded) and os.path.exists(raw):
        return raw
    return decoded


def looks_like_base64(text: str) -> bool:
    """Long text in the base64 alphabet. Absolute paths also match the alphabet, so text
    starting with '/' only counts when it starts like a base64 JPEG ("/9j/")."""
    if len(text) < 32 or not _BASE64_RE.match(text):
        return False
    return not text.startswith(("/", ".", "~")) or text.startswith("/9j/")


def _check_local_path(path: str, original: Any) -> str:
    if not os.path.exists(path):
        raise SourceNotFoundError("no such file", original)
    if os.path.isdir(path):
        raise SourceNotFoundError("is a directory, not a file", original)
    if not stat.S_ISREG(os.stat(path).st_mode):
        # a FIFO blocks forever on open and /dev/zero never ends: only regular files are media
        raise SourceNotFoundError("not a regular file (device, FIFO or socket)", original)
    if not os.access(path, os.R_OK):
        raise SourceNotFoundError("file is not readable", original)
    return path


def resolve_source(value: Any, settings: FetchSettings | None = None, *, download_urls: bool = True) -> Source:
    """Classify ``value`` and fetch remote bytes. Nothing is decoded here.

    With ``download_urls=False`` an http(s) URL is returned as ``kind="url"`` and an ``s3://`` URI as
    ``kind="s3"`` (``path`` holds the URL) so that video code can stream it to a temporary file instead.
    """
    _cancel.check()
    settings = _policy.apply(settings if settings is not None else FetchSettings.from_env())
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise UnsupportedSourceError("empty bytes", value)
        return Source("bytes", value, data=data)
    if isinstance(value, dict) and "url" in value:  # OpenAI form {"url": ...}
        return resolve_source(value["url"], settings, download_urls=download_urls)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        if _is_in_memory_image(value):
            return Source("object", value, obj=value)
        raise UnsupportedSourceError(
            f"unsupported source type {type(value).__name__}; expected a path, URL, data URI, "
            "base64 string, bytes, PIL.Image, numpy array or torch tensor",
            value,
        )
    if isinstance(value, Base64Text):
        _policy.check_scheme("base64", value)
        return Source("bytes", value, data=decode_base64(value, value))
    text = value.strip()
    if not text:
        raise InvalidMessageError("empty source string", value)
    lowered = text[:12].lower()
    if lowered.startswith(("http://", "https://")):
        if settings.url_check is not None:
            settings.url_check(text)
        if not download_urls:
            return Source("url", value, path=text)
        return Source("bytes", value, data=fetch_url_bytes(text, settings))
    if lowered.startswith("s3://"):
        _policy.check_scheme("s3", value)
        if not download_urls:
            return Source("s3", value, path=text)
        return Source("bytes", value, data=fetch_object_bytes(text, settings, value))
    if lowered.startswith("file://"):
        return Source("path", value, path=_check_local_path(_policy.check_path(file_uri_to_path(text), value), value))
    if lowered.startswith("data:"):
        _policy.check_scheme("data", value)
        return Source("bytes", value, data=parse_data_uri(text))
    match = _SCHEME_RE.match(text)
    if match and len(match.group(1)) > 1 and text[len(match.group(0)):].startswith("//"):
        raise UnsupportedSourceError(f"unsupported URL scheme {match.group(1)!r}", value)
    if os.path.exists(text) or (_policy.current() is not None and not looks_like_base64(text)):
        # under a policy, check the path before existence so a refusal reveals nothing
        return Source("path", value, path=_check_local_path(_policy.check_path(text, value), value))
    if looks_like_base64(text):
        _policy.check_scheme("base64", value)
        return Source("bytes", value, data=decode_base64(text, value))
    raise SourceNotFoundError("no such file (and not a URL, data URI or base64 string)", value)


def _download_object(uri: str, dest: BinaryIO, settings: FetchSettings, original: Any) -> int:
    """Stream an ``s3://`` object into ``dest`` under the byte cap (videos: decoders need a seekable file)."""
    from . import storage

    written = 0
    try:
        if storage.size(uri, storage_options=_object_timeouts(settings)) > settings.max_bytes:
            raise SizeLimitError(f"object is over the {settings.max_bytes}-byte limit", original)
        with storage.open_input_stream(uri, storage_options=_object_timeouts(settings)) as stream:
            while chunk := stream.read(_CHUNK):
                _cancel.check()
                written += len(chunk)
                if written > settings.max_bytes:
                    raise SizeLimitError(f"object holds more than the {settings.max_bytes}-byte limit", original)
                dest.write(chunk)
    except ImportError:
        raise UnsupportedSourceError('s3:// sources need pyarrow: pip install "qwenvl-kit[data]"', original) from None
    except storage.StorageError as exc:
        raise _object_storage_error(exc, original) from None
    except OSError as exc:
        raise FetchError(f"object storage: {_short(exc)}", original) from None
    return written


def _is_in_memory_image(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith(("PIL.", "numpy", "torch")) and not isinstance(value, type)


def read_limited(path: str, limit: int, original: Any) -> bytes:
    """Read a local file fully (closing it), refusing files above ``limit`` bytes."""
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise SizeLimitError(f"file is {size} bytes, over the {limit}-byte limit", original)
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # /proc files report size 0 and can hold gigabytes
        if len(data) > limit:
            raise SizeLimitError(f"file holds more than the {limit}-byte limit", original)
        return data
    except OSError as exc:
        raise SourceNotFoundError(f"cannot read file: {exc.strerror or exc}", original) from None


@contextlib.contextmanager
def local_file(value: Any, settings: FetchSettings | None = None, suffix: str = "") -> Iterator[str]:
    """Yield a seekable local path for any byte-like source (path, file://, http(s), data:,
    base64, bytes). Downloads and in-memory bytes go to a temporary file that is always
    removed on exit, so every video backend can open and seek it."""
    settings = settings or FetchSettings.from_env()
    source = resolve_source(value, settings, download_urls=False)
    if source.kind == "path":
        yield source.path
        return
    if source.kind == "object":
        raise UnsupportedSourceError("an in-memory object is not a file", value)
    handle = tempfile.NamedTemporaryFile(prefix="vlutils-", suffix=suffix, delete=False)
    try:
        with handle:
            if source.kind == "url":
                download(source.path, handle, settings)
            elif source.kind == "s3":
                _download_object(source.path, handle, settings, value)
            else:
                handle.write(source.data)
        if os.path.getsize(handle.name) == 0:
            raise UnsupportedSourceError("source is empty (0 bytes)", value)
        yield handle.name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)


# The name this helper had before it was public (other modules used it); new code uses the public one.
_looks_like_base64 = looks_like_base64
