"""A griffe extension for the API pages (mkdocs.yml): Sphinx roles in docstrings as Markdown code.

The docstrings cross-reference with reStructuredText roles (``:func:`build_sample```,
``:class:`~vlutils.policy.SafetyPolicy```), which mkdocstrings would print as they are. This
rewrites each role to a code span of its target (``~`` keeps the last dotted part, as Sphinx does);
``double backticks`` are already Markdown code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|ref|const):`(~?)([^`]+)`")


def markdown_roles(text: str) -> str:
    """``:func:`~a.b.c``` -> ```c```, ``:mod:`a.b``` -> ```a.b```."""
    return ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)


class RstRoles(griffe.Extension):
    """Rewrite the roles of every loaded object's docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_roles(obj.docstring.value)
