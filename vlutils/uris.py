"""Source strings that are not plain paths or URLs: transformers' ``base64`` key and Windows
``file:`` URIs (a pure function, so its conversion is tested on every OS)."""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["Base64Text", "windows_file_uri_to_path"]


class Base64Text(str):
    """Text from transformers' ``base64`` key: decoded as base64 (policy scheme ``base64``),
    never taken for a path even when short or starting with ``/``."""


_DRIVE_RE = re.compile(r"^/?([A-Za-z]):")


def windows_file_uri_to_path(uri: str) -> str:
    """A ``file:`` URI as a Windows path, on any OS (pure, so it is tested everywhere).

    ``file:///C:/dir/x%20y.jpg`` and ``file://C:\\dir\\x.jpg`` -> ``C:\\dir\\x y.jpg``;
    ``file://server/share/x.jpg`` -> ``\\\\server\\share\\x.jpg`` (UNC);
    ``file://localhost/C:/x.jpg`` -> ``C:\\x.jpg``. Percent escapes are decoded."""
    rest = urllib.parse.unquote(uri[len("file:"):])
    rest = rest.replace("\\", "/")
    if rest.startswith("//"):
        rest = rest[2:]
        host, slash, tail = rest.partition("/")
        if host.lower() == "localhost":
            rest = slash + tail
        elif not _DRIVE_RE.match(rest) and host:
            return "\\\\" + rest.replace("/", "\\")  # UNC: \\server\share\...
    match = _DRIVE_RE.match(rest)
    if match:
        rest = rest[len(match.group(0)) - 2:]  # from the drive letter on
    return rest.replace("/", "\\")
