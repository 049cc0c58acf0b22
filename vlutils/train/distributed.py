"""Loss normalisation across micro-batches and ranks: count label tokens, sum them globally.

A mean loss per micro-batch (or per rank) weights every micro-batch equally, whatever its number
of label tokens, so gradient accumulation and data parallelism train on a different objective than
one big batch (transformers' "gradient accumulation loss bug"). The fix, as in transformers: every
forward returns the *sum* of its token losses divided by the number of label tokens of the whole
global batch (all micro-batches of all ranks), passed as ``num_items_in_batch``::

    n = global_num_label_tokens(micro_batches)          # one all_reduce per optimizer step
    for batch in micro_batches:
        loss = ddp_model(**batch, num_items_in_batch=n, touch_vision=True).loss
        (loss * world_size).backward()                   # DDP averages gradients over ranks

``world_size`` undoes DDP's averaging, so the gradient is exactly that of the global batch's mean.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from .labels import IGNORE_INDEX

__all__ = ["global_num_label_tokens", "num_label_tokens"]


def num_label_tokens(batch: dict[str, Any]) -> int:
    """Tokens that a next-token loss on ``batch`` is computed for: labels other than -100 after
    the shift by one, without the first token of each later segment of a packed row (the last
    token of a sample never predicts the next sample's first). This is exactly the count
    vlmodel's loss divides by when ``num_items_in_batch`` is not given."""
    labels = batch["labels"]
    count = int((labels[..., 1:] != IGNORE_INDEX).sum())
    cu = batch.get("cu_seqlens")
    if cu is not None and len(cu) > 2:
        seams = torch.as_tensor(cu, dtype=torch.long)[1:-1].to(labels.device)
        count -= int((labels[0, seams] != IGNORE_INDEX).sum())
    return count


def global_num_label_tokens(
    batches: Iterable[dict[str, Any]],
    *,
    group: Any = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Label tokens of ``batches`` (this rank's micro-batches of one optimizer step) summed over
    every rank of ``group`` when ``torch.distributed`` is initialised: a 0-d int64 tensor on
    ``device`` (the process group's device: CPU for gloo, this rank's GPU for NCCL).

    Every rank must call it once per optimizer step (it is a collective)."""
    total = torch.tensor(sum(num_label_tokens(b) for b in batches), dtype=torch.long, device=device)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, group=group)
    return total
