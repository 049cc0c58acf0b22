"""One place per model generation: what differs between Qwen-VL generations, and nothing else.

Each generation is one module here holding one :class:`Family` (``FAMILY``): its vision preset
(patch, merge and temporal patch sizes, normalisation; min/max pixels defaults follow from them),
its chat formatter, its position-id style, its video timestamp rule, its grounding convention,
the dense family a MoE variant shares its inputs with, and what it can be used for (``uses``:
``inputs`` = build_inputs / format_chat / patchify / get_rope_index / count_tokens / the CLI,
``train`` = build_sample, ``prepare`` = dataset preparation, ``grounding``). Every other module
asks :func:`get_family` instead of comparing ``model_type`` with its own list::

    family = get_family(model_type, use="train")   # unknown or unsupported: InvalidOptionError
    if family.video_timestamps == "text": ...

Adding a generation
-------------------
1. Write ``vlutils/families/<model_type>.py`` with ``FAMILY = Family(...)`` (a MoE variant of
   an existing family: ``FAMILY = moe_variant(BASE, "<model_type>", "<Title>")``).
2. If its prompt format is new, write the formatter module (``vlutils/chat_<name>.py``) with the
   two functions :class:`ChatFormat` describes; if its position ids, timestamps or grounding
   syntax are new, add the style name to ``base.py``'s lists and teach the one module that reads
   that fact (``vlutils.rope``, ``vlutils.inputs``, ``vlutils.grounding``) the new case.
3. Import the module below and add it to ``_MODULES`` (its order is the order of every listing),
   and add tests (``tests/test_families.py`` holds the registry's own).
Nothing else lists model types; ``tests/test_families.py`` checks that no other module does.

vlmodel
-------
``vlmodel`` keeps the architecture facts (layer shapes, norms, rotary layout, checkpoint names)
in ``vlmodel/config.py``: they describe network weights, are only needed to build a model, and
vlutils must stay importable without vlmodel (vlmodel imports vlutils, never the reverse, so
one registry there would make an import cycle). What vlmodel needs about inputs (which model
type to hand to build_inputs) it asks this registry (``Family.inputs_model_type``), and a test
checks that every vlmodel family is one of these.

This package imports no torch, PIL or video backend: light modules (grounding, the CLI,
vlmodel.config) read it too.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidOptionError
from .base import USES, ChatFormat, Family, GroundingStyle, VisionPreset
from .moe import moe_variant
from . import qwen_vl, qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe  # noqa: I001

__all__ = [
    "Family", "VisionPreset", "ChatFormat", "GroundingStyle", "USES", "FAMILIES", "MODEL_TYPES", "get_family",
    "model_types", "moe_variant", "is_fixed_span",
]

# One module per generation, in the order every listing uses.
_MODULES = (qwen_vl, qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe)
FAMILIES: dict[str, Family] = {module.FAMILY.model_type: module.FAMILY for module in _MODULES}
MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)


def model_types(use: str | None = None) -> tuple[str, ...]:
    """The model types whose family supports ``use`` (one of ``USES``), in registry order; all without."""
    if use is None:
        return MODEL_TYPES
    _check_use(use)
    return tuple(name for name, family in FAMILIES.items() if use in family.uses)


def get_family(model_type: Any, use: str | None = None, *, loose: bool = False) -> Family:
    """The family of ``model_type``, checked to support ``use`` when given.

    ``loose=True`` forgives spelling (``Qwen2.5-VL`` = ``qwen2_5_vl``). Raises
    :class:`~vlutils.errors.InvalidOptionError` naming the model type and the known ones.
    """
    if use is not None:
        _check_use(use)
    candidates = model_types(use)
    if not isinstance(model_type, str):
        raise InvalidOptionError(f"model_type must be a string, one of {', '.join(candidates)}; got {model_type!r}")
    key = model_type.strip().lower().replace("-", "_").replace(".", "_") if loose else model_type
    family = FAMILIES.get(key)
    if family is None:
        raise InvalidOptionError(f"unknown model_type {model_type!r}; expected one of {', '.join(candidates)}")
    if use is not None and use not in family.uses:
        raise InvalidOptionError(
            f"model_type {model_type!r} ({family.title}) does not support {use} yet; "
            f"model types that do: {', '.join(candidates)}"
        )
    return family


def is_fixed_span(model_type: Any) -> bool:
    """Whether ``model_type`` is a known family whose images are fixed ``<img>`` spans (Qwen-VL's
    pipeline, :mod:`vlutils.inputs_qwen_vl`); entry points hand such families over to it."""
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    return family is not None and family.pipeline == "fixed_span"


def _check_use(use: str) -> None:
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, got {use!r}")
