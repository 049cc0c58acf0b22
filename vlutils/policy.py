"""Safe mode: what a server may let strangers' messages read.

Without a policy vlutils behaves like qwen-vl-utils: any local path, any URL, no
limits beyond the usual ones. A server that passes untrusted messages to
``process_vision_info`` turns safe mode on, either in code::

    import vlutils
    from vlutils.policy import SafetyPolicy

    vlutils.policy.set_policy(SafetyPolicy(allowed_roots=["/srv/media"]))   # process-wide
    with vlutils.policy.use(SafetyPolicy(allowed_schemes={"https"})):      # this context only
        images, videos = vlutils.process_vision_info(messages)

or, without code changes, with environment variables (read at every call, so they
also reach DataLoader workers started with ``spawn``)::

    VLUTILS_SAFE_MODE=1                        # turn safe mode on with the defaults below
    VLUTILS_ALLOWED_ROOTS=/data:/srv/media     # local files allowed under these folders only
    VLUTILS_ALLOWED_SCHEMES=https,data         # any of http, https, file, data, base64, s3
    VLUTILS_ALLOWED_NETWORKS=10.1.2.0/24       # private networks that may still be fetched
    VLUTILS_SAFE_MAX_BYTES / _MAX_PIXELS / _MAX_FRAMES / _DECODE_TIMEOUT / _MAX_VIDEO_BYTES / _MAX_ITEMS
    VLUTILS_SAFE_IMAGE_FORMATS=JPEG,PNG,WEBP   # Pillow formats decoded ("*": all)

Setting any ``VLUTILS_ALLOWED_*`` variable also turns safe mode on (fail closed: an
administrator who names allowed roots expects a restriction); ``VLUTILS_SAFE_MODE=0``
turns it off explicitly.

What safe mode enforces (every refusal is an :class:`~vlutils.errors.UnsafeSourceError`
naming the input and the reason):

* **schemes**: only ``allowed_schemes`` (``http``, ``https``, ``file`` for local paths
  and ``file://`` URIs, ``data`` for ``data:`` URIs, ``base64`` for bare base64 text, ``s3``
  for ``s3://`` objects: off by default, since they are read with the server's credentials).
  Raw ``bytes`` and in-memory images/arrays/tensors are always accepted: they were
  built by the caller's own code, not read from anywhere.
* **local files**: the path (after ``..`` normalisation and symlink resolution with
  ``realpath``) must lie inside one of ``allowed_roots``; no roots means no local
  files. The check happens before any existence test, so a refused path reveals
  nothing about whether the file exists.
* **network addresses**: the host of every URL, and of every redirect target, is
  resolved with ``getaddrinfo`` and *every* address must be public: loopback,
  private, link-local, multicast, reserved, unspecified, shared (CGNAT) and cloud
  metadata addresses are refused before any connection is made.
  ``allowed_networks`` makes exceptions (an internal media server), ``denied_networks``
  adds refusals. Known limit: the address is resolved again when connecting, so a
  DNS server that answers differently the second time (DNS rebinding) is not caught;
  put an egress firewall in front of a server that must be immune to that.
* **image formats**: only ``image_formats`` (JPEG, MPO, PNG, GIF, WebP, BMP, TIFF, AVIF
  by default) are decoded; Pillow's rarer decoders are a larger attack surface and EPS
  runs Ghostscript on the input.
* **caps**: ``max_bytes`` (download or file size), ``max_pixels`` (decoded image size,
  before resizing), ``max_frames`` (frames decoded per video), ``decode_timeout``
  (seconds per video decode) and ``max_video_bytes`` (float32 output of one video: 4 GiB
  by default, above the ~2.2 GB the default options can produce, far below what a
  message asking for min_pixels=60e6 over 20 frames would allocate). Each lowers, never
  raises, the limit otherwise in force. ``max_items`` (128) bounds the images and videos
  of one call: all are decoded before a server can count tokens.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import logging
import math
import os
import socket
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from .errors import FetchError, InvalidOptionError, SizeLimitError, UnsafeSourceError

logger = logging.getLogger(__name__)


class FetchLimits(Protocol):
    """What a policy changes in fetch settings (:class:`vlutils.sources.FetchSettings` has it;
    described here so that this module need not import vlutils.sources, which imports it)."""

    url_check: Callable[[str], None] | None
    max_bytes: int

    def replace(self, **changes: Any) -> Any: ...


Settings = TypeVar("Settings", bound=FetchLimits)

SCHEMES = frozenset({"http", "https", "file", "data", "base64", "s3"})
# s3:// reads with the server's own credentials: an untrusted request must not pick the bucket unless allowed.
DEFAULT_SAFE_SCHEMES = SCHEMES - {"s3"}
# Pillow format names decoded in safe mode. Pillow can open ~40 formats; the rare ones
# are rarely fuzzed, and EPS runs Ghostscript (a long CVE history) on the input.
DEFAULT_SAFE_IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF"})

# Cloud instance-metadata endpoints. Most are already link-local or private; listed
# so that the refusal names them and so that ``allow_private_addresses`` (an opt-in
# for internal networks) still never reaches them.
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2/32",  # AWS ECS task metadata
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.192/32",  # Oracle Cloud (legacy)
        "fd00:ec2::254/128",  # AWS IPv6 metadata
    )
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]


def _system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), as requests would connect to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def _networks(values: Iterable[Any], name: str) -> tuple[Network, ...]:
    out = []
    for value in values:
        try:
            out.append(value if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                       else ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise InvalidOptionError(f"{name}: {value!r} is not an IP network ({exc})") from None
    return tuple(out)


def _positive_or_none(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidOptionError(f"{name} must be a positive finite number or None, got {value!r}")
    return value


@dataclass(frozen=True)
class SafetyPolicy:
    """Restrictions for untrusted inputs. Construct one and activate it with
    :func:`set_policy` or :func:`use`; the defaults are a sensible server setting
    (web and inline data only, no local files, public addresses only, caps on)."""

    allowed_schemes: frozenset[str] = DEFAULT_SAFE_SCHEMES
    allowed_roots: tuple[str, ...] = ()
    allow_private_addresses: bool = False
    allowed_networks: tuple[Network, ...] = ()
    denied_networks: tuple[Network, ...] = ()
    max_bytes: int | None = 128 * 1024 * 1024
    max_pixels: int | None = 64 * 1024 * 1024
    max_frames: int | None = 1024
    decode_timeout: float | None = 60.0
    max_video_bytes: int | None = 4 * 1024**3
    max_items: int | None = 128
    image_formats: frozenset[str] | None = DEFAULT_SAFE_IMAGE_FORMATS
    resolver: Resolver | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        schemes = self.allowed_schemes
        if isinstance(schemes, str):
            schemes = [schemes]
        schemes = frozenset(s.strip().lower() for s in schemes if s.strip())
        unknown = schemes - SCHEMES
        if unknown:
            raise InvalidOptionError(
                f"allowed_schemes: unknown scheme(s) {sorted(unknown)}; choose from {sorted(SCHEMES)}"
            )
        roots = [self.allowed_roots] if isinstance(self.allowed_roots, (str, os.PathLike)) else self.allowed_roots
        real_roots = []
        for root in roots:
            text = os.fspath(root)
            if not text or not os.path.isabs(text):
                raise InvalidOptionError(f"allowed_roots: {text!r} must be an absolute folder path")
            real_roots.append(os.path.realpath(text))
        object.__setattr__(self, "allowed_schemes", schemes)
        if self.image_formats is not None:
            formats = [self.image_formats] if isinstance(self.image_formats, str) else self.image_formats
            object.__setattr__(self, "image_formats", frozenset(f.strip().upper() for f in formats if f.strip()))
        object.__setattr__(self, "allowed_roots", tuple(real_roots))
        object.__setattr__(self, "allowed_networks", _networks(self.allowed_networks, "allowed_networks"))
        object.__setattr__(self, "denied_networks", _networks(self.denied_networks, "denied_networks"))
        for name in ("max_bytes", "max_pixels", "max_frames", "decode_timeout", "max_video_bytes", "max_items"):
            _positive_or_none(name, getattr(self, name))

    def replace(self, **changes: Any) -> "SafetyPolicy":
        return replace(self, **changes)

    # ------------------------------------------------------------------ checks

    def check_scheme(self, scheme: str, original: Any = None) -> None:
        """Refuse a source kind (``http``, ``https``, ``file``, ``data``, ``base64``) not allowed."""
        if scheme not in self.allowed_schemes:
            allowed = ", ".join(sorted(self.allowed_schemes)) or "none"
            raise UnsafeSourceError(f"safe mode: scheme {scheme!r} is not allowed (allowed: {allowed})", original)

    def check_item_count(self, count: int) -> None:
        """Refuse a call with more than ``max_items`` images and videos: everything is
        decoded before the server can count tokens, so 10,000 references to one file would
        otherwise decode 10,000 images."""
        if self.max_items is not None and count > self.max_items:
            raise SizeLimitError(f"safe mode: {count} images and videos in one call, over the limit of {self.max_items}")

    def check_image_format(self, image_format: str | None, original: Any = None) -> None:
        """Refuse an image whose Pillow format is not in ``image_formats`` (``None``: all).
        Call it after ``Image.open`` (header parsed) and before ``load()`` (pixels decoded)."""
        if self.image_formats is not None and (image_format or "").upper() not in self.image_formats:
            allowed = ", ".join(sorted(self.image_formats))
            raise UnsafeSourceError(
                f"safe mode: image format {image_format!r} is not allowed (allowed: {allowed})", original
            )

    def check_path(self, path: str, original: Any = None) -> str:
        """Return the real path of ``path`` if it lies inside an allowed root, else refuse.

        ``..`` and symlinks are resolved first (``os.path.realpath``), so neither can
        escape a root; the caller should open the returned path."""
        self.check_scheme("file", original if original is not None else path)
        label = original if original is not None else path
        if not self.allowed_roots:
            raise UnsafeSourceError("safe mode: local files are not allowed (no allowed roots configured)", label)
        try:
            real = os.path.realpath(os.path.abspath(os.fspath(path)))
        except (ValueError, OSError, TypeError) as exc:  # embedded NUL, bad type
            raise UnsafeSourceError(f"safe mode: invalid path ({exc})", label) from None
        for root in self.allowed_roots:
            if real == root or os.path.commonpath([real, root]) == root:
                return real
        raise UnsafeSourceError("safe mode: path is outside the allowed roots", label)

    def check_address(self, address: str | Address) -> str | None:
        """Why ``address`` must not be contacted (e.g. ``"a loopback address"``), or
        ``None`` if it may be. IPv4 addresses embedded in IPv6 ones are checked too."""
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
            if embedded is None and ip in _NAT64:
                embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if embedded is not None:
                why = self.check_address(embedded)
                return f"{why} ({embedded} embedded in an IPv6 address)" if why else None
        if any(ip in net for net in self.denied_networks):
            return "in a denied network"
        if any(ip in net for net in self.allowed_networks):
            return None
        if any(ip in net for net in METADATA_NETWORKS):
            return "a cloud metadata address"
        if self.allow_private_addresses and not ip.is_multicast and not ip.is_unspecified:
            return None
        for attribute, label in (
            ("is_loopback", "a loopback address"),
            ("is_link_local", "a link-local address"),
            ("is_multicast", "a multicast address"),
            ("is_unspecified", "an unspecified address"),
            ("is_reserved", "a reserved address"),
            ("is_private", "a private address"),
        ):
            if getattr(ip, attribute):
                return label
        if not ip.is_global:
            return "not a public address"
        return None

    def check_url(self, url: str) -> None:
        """Refuse an http(s) URL whose scheme is not allowed or whose host resolves to
        any non-public address. Called before the first request and for every redirect."""
        host, port, scheme = _split_url(url)
        self.check_scheme(scheme, url)
        if not host:
            raise UnsafeSourceError("safe mode: URL has no host", url)
        literal = True
        try:
            addresses = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            literal = False
            try:
                addresses = list((self.resolver or _system_resolver)(host, port))
            except (OSError, UnicodeError) as exc:
                raise FetchError(f"cannot resolve host {host!r}: {exc}", url) from None
            if not addresses:
                raise FetchError(f"host {host!r} resolves to no address", url)
        for address in addresses:
            try:
                why = self.check_address(address)
            except ValueError:
                why = f"{address!r} is not an IP address"
            if why:
                where = f"{address} is" if literal else f"host {host!r} resolves to {address},"
                raise UnsafeSourceError(f"safe mode: {where} {why}", url)

    def limit(self, name: str, value: float | None) -> float | None:
        """The stricter of ``value`` and this policy's cap ``name`` (``None`` = no cap):
        max_bytes, max_pixels, max_frames, decode_timeout or max_video_bytes."""
        cap = getattr(self, name)
        if cap is None:
            return value
        return cap if value is None else min(value, cap)

    def apply(self, settings: Settings) -> Settings:
        """``settings`` with this policy's URL check chained in and its byte cap applied."""
        check = settings.url_check
        if check is not None and (check == self.check_url or getattr(check, "_vlutils_policy", None) is self):
            url_check = check
        elif check is None:
            url_check = self.check_url
        else:
            def url_check(url: str, _first=check, _policy=self) -> None:
                _policy.check_url(url)
                _first(url)

            url_check._vlutils_policy = self  # type: ignore[attr-defined]
        return settings.replace(url_check=url_check, max_bytes=int(self.limit("max_bytes", settings.max_bytes)))


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _split_url(url: str) -> tuple[str, int, str]:
    """(host, port, scheme) exactly as requests/urllib3 will parse the URL, so that a
    crafted URL cannot show one host to the check and another to the connection."""
    from urllib3.util import parse_url

    try:
        parsed = parse_url(url)
    except Exception as exc:  # urllib3 raises LocationParseError (a ValueError subclass)
        raise UnsafeSourceError(f"safe mode: unparseable URL ({exc})", url) from None
    scheme = (parsed.scheme or "").lower()
    port = parsed.port or (443 if scheme == "https" else 80)
    return (parsed.host or ""), port, scheme


# ---------------------------------------------------------------- activation

_UNSET: Any = object()
_context_policy: contextvars.ContextVar[Any] = contextvars.ContextVar("vlutils_policy", default=_UNSET)
_global_policy: Any = _UNSET
_lock = threading.Lock()
_env_cache: tuple[tuple, SafetyPolicy | None] | None = None

ENV_VARS = (
    "VLUTILS_SAFE_MODE",
    "VLUTILS_ALLOWED_ROOTS",
    "VLUTILS_ALLOWED_SCHEMES",
    "VLUTILS_ALLOWED_NETWORKS",
    "VLUTILS_SAFE_MAX_BYTES",
    "VLUTILS_SAFE_MAX_PIXELS",
    "VLUTILS_SAFE_MAX_FRAMES",
    "VLUTILS_SAFE_DECODE_TIMEOUT",
    "VLUTILS_SAFE_IMAGE_FORMATS",
    "VLUTILS_SAFE_MAX_VIDEO_BYTES",
    "VLUTILS_SAFE_MAX_ITEMS",
)


def set_policy(policy: SafetyPolicy | None) -> None:
    """Activate ``policy`` process-wide (``None``: permissive, ignoring the environment).

    A :func:`use` block overrides it. Worker processes started with ``spawn`` do not
    inherit it: use the environment variables or call this in ``worker_init_fn``."""
    global _global_policy
    if policy is not None and not isinstance(policy, SafetyPolicy):
        raise InvalidOptionError(f"set_policy expects a SafetyPolicy or None, got {type(policy).__name__}")
    with _lock:
        _global_policy = policy


def reset_policy() -> None:
    """Forget :func:`set_policy`; the environment variables decide again."""
    global _global_policy
    with _lock:
        _global_policy = _UNSET


@contextlib.contextmanager
def use(policy: SafetyPolicy | None) -> Iterator[SafetyPolicy | None]:
    """Activate ``policy`` for the current thread / asyncio task (a ``contextvars`` value),
    e.g. per request in a server. ``None`` turns safe mode off inside the block."""
    if policy is not None and not isinstance(policy, SafetyPolicy):
        raise InvalidOptionError(f"use() expects a SafetyPolicy or None, got {type(policy).__name__}")
    token = _context_policy.set(policy)
    try:
        yield policy
    finally:
        _context_policy.reset(token)


def current() -> SafetyPolicy | None:
    """The active policy: a :func:`use` block, else :func:`set_policy`, else the
    environment; ``None`` means permissive (qwen-vl-utils behaviour)."""
    value = _context_policy.get()
    if value is _UNSET:
        value = _global_policy
    if value is _UNSET:
        value = from_env()
    return value


def from_env(environ: Any = None) -> SafetyPolicy | None:
    """The policy the ``VLUTILS_SAFE_*`` / ``VLUTILS_ALLOWED_*`` variables describe, or
    ``None`` when safe mode is off. Bad values raise :class:`InvalidOptionError`."""
    global _env_cache
    env = os.environ if environ is None else environ
    key = tuple(env.get(name) for name in ENV_VARS)
    cached = _env_cache
    if environ is None and cached is not None and cached[0] == key:
        return cached[1]
    policy = _parse_env(dict(zip(ENV_VARS, key)))
    if environ is None:
        _env_cache = (key, policy)
        if policy is not None:
            logger.info("safe mode on from the environment: %s", policy)
    return policy


def _parse_env(env: dict[str, str | None]) -> SafetyPolicy | None:
    flag = (env["VLUTILS_SAFE_MODE"] or "").strip().lower()
    restricting = any(env[name] for name in ENV_VARS[1:4])
    if flag in ("0", "false", "no", "off"):
        return None
    if flag not in ("", "1", "true", "yes", "on"):
        raise InvalidOptionError(f"VLUTILS_SAFE_MODE must be 1 or 0, got {env['VLUTILS_SAFE_MODE']!r}")
    if not flag and not restricting:
        return None
    kwargs: dict[str, Any] = {}
    if env["VLUTILS_ALLOWED_ROOTS"]:
        kwargs["allowed_roots"] = tuple(p for p in env["VLUTILS_ALLOWED_ROOTS"].split(os.pathsep) if p)
    if env["VLUTILS_ALLOWED_SCHEMES"] is not None:
        kwargs["allowed_schemes"] = frozenset(s for s in env["VLUTILS_ALLOWED_SCHEMES"].split(",") if s.strip())
    if env["VLUTILS_ALLOWED_NETWORKS"]:
        kwargs["allowed_networks"] = tuple(n for n in env["VLUTILS_ALLOWED_NETWORKS"].split(",") if n.strip())
    for var, name, kind in (
        ("VLUTILS_SAFE_MAX_BYTES", "max_bytes", int),
        ("VLUTILS_SAFE_MAX_PIXELS", "max_pixels", int),
        ("VLUTILS_SAFE_MAX_FRAMES", "max_frames", int),
        ("VLUTILS_SAFE_DECODE_TIMEOUT", "decode_timeout", float),
        ("VLUTILS_SAFE_MAX_VIDEO_BYTES", "max_video_bytes", int),
        ("VLUTILS_SAFE_MAX_ITEMS", "max_items", int),
    ):
        text = env[var]
        if text:
            try:
                kwargs[name] = kind(float(text)) if kind is int else float(text)
            except ValueError:
                raise InvalidOptionError(f"{var} must be a number, got {text!r}") from None
    formats = env["VLUTILS_SAFE_IMAGE_FORMATS"]
    if formats is not None:
        kwargs["image_formats"] = None if formats.strip() == "*" else frozenset(f for f in formats.split(",") if f.strip())
    return SafetyPolicy(**kwargs)


# ------------------------------------------------------- hooks for the library
# Each is a no-op without an active policy, so call sites stay one line.


def check_scheme(scheme: str, original: Any = None) -> None:
    """Refuse ``scheme`` if the active policy does not allow it."""
    policy = current()
    if policy is not None:
        policy.check_scheme(scheme, original)


def check_path(path: str, original: Any = None) -> str:
    """``path`` unchanged without a policy; otherwise its real path, if inside an allowed root."""
    policy = current()
    return path if policy is None else policy.check_path(path, original)


def check_item_count(count: int) -> None:
    """Refuse a call with more vision items than the active policy's ``max_items``."""
    policy = current()
    if policy is not None:
        policy.check_item_count(count)


def check_image_format(image_format: str | None, original: Any = None) -> None:
    """Refuse an image format the active policy does not allow (see SafetyPolicy.image_formats)."""
    policy = current()
    if policy is not None:
        policy.check_image_format(image_format, original)


def check_url(url: str) -> None:
    """Refuse ``url`` (scheme or resolved address) under the active policy."""
    policy = current()
    if policy is not None:
        policy.check_url(url)


def limit(name: str, value: float | None) -> float | None:
    """``value`` lowered to the active policy's cap ``name`` (max_bytes, max_pixels,
    max_frames, decode_timeout)."""
    policy = current()
    return value if policy is None else policy.limit(name, value)


def apply(settings: Settings) -> Settings:
    """``settings`` with the active policy's URL check and byte cap (unchanged without one)."""
    policy = current()
    return settings if policy is None else policy.apply(settings)


__all__ = [
    "SafetyPolicy",
    "set_policy",
    "reset_policy",
    "use",
    "current",
    "from_env",
    "check_scheme",
    "check_image_format",
    "check_item_count",
    "check_path",
    "check_url",
    "limit",
    "apply",
    "METADATA_NETWORKS",
]
