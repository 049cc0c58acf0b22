"""Text shared by the command lines: help without reStructuredText markup, install hints.

Docstrings are written for the API reference (``literal``, :func:`name`); ``--help`` shows
plain text, so every CLI passes its docstring through :func:`plain`.
"""

from __future__ import annotations

import re

__all__ = ["DISTRIBUTION", "plain", "summary", "install_hint"]

# The name on the package index (the import names stay vlutils and vlmodel; "vlutils" on the
# public index is an unrelated package).
DISTRIBUTION = "qwenvl-kit"

_ROLE = re.compile(r":[a-z]+:`~?([^`<]+?)\s*(?:<[^>`]*>)?`")  # :func:`name`, :mod:`~a.b`, :class:`T <a.T>`
_LITERAL = re.compile(r"``(.+?)``")
_DEFAULT_ROLE = re.compile(r"(?<![`\w])`([^`\n]+)`(?![`\w])")


def plain(text: str) -> str:
    """``text`` with reST roles and literals replaced by their text, and a literal block's
    ``::`` as a plain colon."""
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _DEFAULT_ROLE.sub(r"\1", text)
    text = re.sub(r"(?<=\S)::\n", ":\n", text)
    return text.replace("\\\\", "\\")


def summary(doc: str | None) -> str:
    """The first paragraph of a docstring, as plain text on one line."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(plain(first).split())


def install_hint(*extras: str) -> str:
    """How to install optional ``extras``: from the index, and from a checkout."""
    names = ",".join(extras)
    return f'pip install "{DISTRIBUTION}[{names}]" (from a checkout: pip install -e ".[{names}]")'
