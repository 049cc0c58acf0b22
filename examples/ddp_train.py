"""Data-parallel training of vlmodel over gloo, checked against one process accumulating gradients.

    python examples/ddp_train.py [--world-size 2] [--steps 3] [--accum 2] [--find-unused-parameters]

Each optimizer step has a global batch: ``world_size`` ranks x ``accum`` micro-batches (packed rows
from ``vlutils.train.collate``). Rank 1's first micro-batches are text-only, so the vision tower
gets no gradient there, and one micro-batch holds only skipped samples (a filler batch).
Two runs from the same initial weights:

- DDP: ``world_size`` processes (``torch.multiprocessing.spawn``, gloo), each calling
  ``model(**batch, num_items_in_batch=n, touch_vision=True)`` with ``n`` the label tokens of the
  whole global batch (``global_num_label_tokens``: one all_reduce per step) and scaling the loss by
  ``world_size`` (DDP averages gradients); ``no_sync`` on all but the last micro-batch;
- reference: one process running every micro-batch of every rank with the same ``n`` and one
  optimizer step per global batch.

The script exits 0 when every parameter matches (float32, relative difference of each tensor <= 1e-5)
and prints the largest difference. ``touch_vision`` keeps the vision tower in the graph of a
text-only batch (zero gradient), so DDP runs without ``find_unused_parameters`` (which costs a
graph walk every step); ``--find-unused-parameters`` runs the other way instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vlmodel
from vlutils.train import Skipped, collate, global_num_label_tokens

logger = logging.getLogger("ddp_train")

IMAGE, VIDEO, START, END, PAD = 500, 501, 502, 503, 0
TINY = {  # a tiny Qwen2.5-VL in the released checkpoints' flat config layout
    "model_type": "qwen2_5_vl", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "tie_word_embeddings": False,
    "image_token_id": IMAGE, "video_token_id": VIDEO, "vision_start_token_id": START, "vision_end_token_id": END,
    "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64, "num_heads": 2,
                      "fullatt_block_indexes": [1], "window_size": 112, "tokens_per_second": 2},
}


def tiny_model(seed: int = 0) -> vlmodel.VLModel:
    """A random tiny model, identical for a given seed in every process."""
    torch.manual_seed(seed)
    model = vlmodel.VLModel(vlmodel.ModelConfig.from_dict(TINY))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def make_sample(model: vlmodel.VLModel, gen: torch.Generator, image: tuple[int, int] | None) -> dict:
    """A build_sample-like dict: <|im_start|>, optional image block, text; the last tokens labeled."""
    ids = [3] + torch.randint(10, 400, (int(torch.randint(4, 12, (1,), generator=gen)),), generator=gen).tolist()
    sample: dict = {}
    if image is not None:
        h, w = image
        ids += [START] + [IMAGE] * (h * w // 4) + [END]
        grid = torch.tensor([[1, h, w]])
        sample.update(pixel_values=torch.randn(h * w, model.config.vision.patch_dim, generator=gen), image_grid_thw=grid)
    ids += torch.randint(10, 400, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen).tolist()
    input_ids = torch.tensor(ids)
    labels = torch.full_like(input_ids, -100)
    answer = int(torch.randint(2, 6, (1,), generator=gen))
    labels[-answer:] = input_ids[-answer:]
    positions, _ = model.rope_index(input_ids[None], sample.get("image_grid_thw"))
    sample.update(input_ids=input_ids, labels=labels, position_ids=positions[:, 0])
    return sample


def global_batches(model: vlmodel.VLModel, steps: int, world: int, accum: int, seed: int = 1) -> list:
    """batches[step][rank][micro] -> a collated packed batch. Rank 1 (or 0 alone) is text-only in
    step 0; rank 0's last micro-batch of step 1 has only skipped samples."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        ranks = []
        for rank in range(world):
            micros = []
            for micro in range(accum):
                text_only = step == 0 and rank == min(1, world - 1)
                n = int(torch.randint(1, 4, (1,), generator=gen))
                samples = [make_sample(model, gen, None if text_only or i % 2 else (4, 6)) for i in range(n)]
                if step == 1 and rank == 0 and micro == accum - 1:
                    samples = [Skipped(i, f"#{i}", "DecodeError", "a broken image") for i in range(n)]
                micros.append(collate(samples))
            ranks.append(micros)
        out.append(ranks)
    return out


def train_reference(steps: int, world: int, accum: int, lr: float) -> dict[str, torch.Tensor]:
    """One process: every micro-batch of every rank, one optimizer step per global batch."""
    model = tiny_model()
    batches = global_batches(model, steps, world, accum)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in batches:
        n = global_num_label_tokens([b for rank in step for b in rank])
        for rank in step:
            for batch in rank:
                model(**batch, num_items_in_batch=n).loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ddp_worker(rank: int, world: int, steps: int, accum: int, lr: float, port: int, out_dir: str,
                find_unused: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from datetime import timedelta

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        model = tiny_model()
        batches = global_batches(model, steps, world, accum)
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
        opt = torch.optim.SGD(ddp.parameters(), lr=lr)
        for step in batches:
            mine = step[rank]
            n = global_num_label_tokens(mine)  # collective: every rank, every step
            for i, batch in enumerate(mine):
                last = i == len(mine) - 1
                with (ddp.no_sync() if not last else contextlib.nullcontext()):
                    loss = ddp(**batch, num_items_in_batch=n, touch_vision=not find_unused).loss
                    (loss * world).backward()  # DDP averages over ranks; the sum over ranks is wanted
            opt.step()
            opt.zero_grad()
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, "ddp.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_ddp(steps: int, world: int, accum: int, lr: float, find_unused: bool = False) -> dict[str, torch.Tensor]:
    """``world`` gloo processes; returns rank 0's parameters after ``steps`` steps."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(world, steps, accum, lr, _free_port(), tmp, find_unused), nprocs=world, join=True)
        return torch.load(os.path.join(tmp, "ddp.pt"))


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """Largest ||a - b|| / ||b|| over the tensors, and its name."""
    worst, name = 0.0, ""
    for key in b:
        diff = float((a[key] - b[key]).norm() / b[key].norm().clamp(min=1e-30))
        if diff > worst:
            worst, name = diff, key
    return worst, name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--find-unused-parameters", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    initial = tiny_model().state_dict()
    ddp = train_ddp(args.steps, args.world_size, args.accum, args.lr, args.find_unused_parameters)
    ref = train_reference(args.steps, args.world_size, args.accum, args.lr)
    moved, _ = max_relative_difference(ref, initial)
    diff, name = max_relative_difference(ddp, ref)
    logger.info("%d steps, %d ranks x %d micro-batches: parameters moved by up to %.3g (relative); "
                "DDP vs one process: max relative difference %.3g (%s)",
                args.steps, args.world_size, args.accum, moved, diff, name)
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
