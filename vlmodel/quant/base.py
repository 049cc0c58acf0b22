"""What every checkpoint format provides, and the checks they share."""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import ConfigError
from .linear import UnpackedWeight


class Format(Protocol):
    """A parsed ``quantization_config``: which tensors mark a quantized layer and how to unpack them."""

    method: str  # the config's quant_method
    marker: str  # the tensor suffix that marks a quantized linear ("qweight", "weight_packed")
    suffixes: tuple[str, ...]  # every tensor suffix a quantized linear may have

    def unpack(self, name: str, tensors: dict[str, torch.Tensor], out_features: int,
               in_features: int) -> UnpackedWeight:
        """The layer ``name`` (checkpoint spelling, for messages) from its tensors keyed by suffix."""


def expect_shape(name: str, suffix: str, tensor: torch.Tensor, shape: tuple[int, ...], why: str) -> None:
    """ConfigError naming the tensor unless it has ``shape``."""
    if tuple(tensor.shape) != tuple(shape):
        raise ConfigError(f"{name}.{suffix}: shape {tuple(tensor.shape)} does not match the config: "
                          f"expected {tuple(shape)} ({why})")


def expect_dtype(name: str, suffix: str, tensor: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    if tensor.dtype not in dtypes:
        raise ConfigError(f"{name}.{suffix}: dtype {tensor.dtype} is not one of {[str(d) for d in dtypes]}")


def require(name: str, tensors: dict[str, torch.Tensor], suffix: str, why: str = "") -> torch.Tensor:
    if suffix not in tensors:
        raise ConfigError(f"{name}.{suffix}: missing from the checkpoint{why}")
    return tensors[suffix]


def setting(raw: dict, key: str, default=None, *, method: str):
    value = raw.get(key, default)
    if value is None:
        raise ConfigError(f"quantization_config ({method}): missing {key!r}")
    return value


def group_count(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def check_group_index(name: str, index: torch.Tensor, in_features: int, groups: int,
                      suffix: str = "g_idx") -> torch.Tensor:
    expect_shape(name, suffix, index, (in_features,), "one group per input column")
    index = index.to(torch.int64)
    if in_features and (int(index.min()) < 0 or int(index.max()) >= groups):
        raise ConfigError(f"{name}.{suffix}: group numbers must lie in [0, {groups}), "
                          f"found [{int(index.min())}, {int(index.max())}]")
    return index
