"""The MoE variants: same inputs as their dense family (one small table), different vlmodel
architecture (vlmodel/config.py). A MoE family is its base's facts under its own name."""

from __future__ import annotations

import dataclasses

from .base import Family


def moe_variant(base: Family, model_type: str, title: str) -> Family:
    """``base``'s facts under ``model_type``, recording that it shares ``base``'s inputs."""
    return dataclasses.replace(base, model_type=model_type, title=title, shares_inputs_with=base.model_type)
