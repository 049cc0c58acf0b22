"""Data-parallel training of vlmodel over gloo, checked against one process accumulating gradients.

    python examples/ddp_train.py [--world-size 2] [--steps 3] [--accum 2] [--find-unused-parameters]

The recipe, on every rank:

- ``BudgetBatchSampler(sizes, max_tokens, rank=rank, world_size=world_size, shuffle=True)``: this
  rank's budget batches; every rank gets the same number, so no rank waits for a collective
  that another never reaches (per-rank samplers over a ``DistributedSampler`` split do not);
- ``DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)``: packed rows; a batch
  whose samples were all skipped comes out as a one-token filler (no labels), so this rank
  still runs forward and backward and joins the gradient all-reduce;
- per optimizer step, ``accum`` micro-batches; ``n = global_num_label_tokens(micro_batches)``
  (one all_reduce: the label tokens of the whole global batch); each micro-batch runs
  ``model(**batch, num_items_in_batch=n, touch_vision=True)`` and backpropagates
  ``loss * world_size`` (DDP averages gradients over ranks; the loss is already the global
  mean's share), ``no_sync`` on all but the last micro-batch.

``touch_vision`` keeps the vision tower in the graph of a text-only batch (zero gradient), so DDP
runs without ``find_unused_parameters`` (which walks the graph every step);
``--find-unused-parameters`` runs the other way instead.

The check: one process runs every rank's sampler, and for each step every micro-batch of every
rank with the same ``n``, then one optimizer step. The script exits 0 when every parameter
matches (float32, relative difference of each tensor <= 1e-5) and prints the largest difference.
The tiny dataset has text-only samples (so some ranks get text-only batches) and samples that are
skipped when loaded (as ``ConversationDataset(on_error="skip")`` does), each filling a batch alone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vlmodel
from vlutils.train import BudgetBatchSampler, Skipped, collate, global_num_label_tokens

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


MAX_TOKENS = 64


class ToyDataset(torch.utils.data.Dataset):
    """``count`` samples: every third has an image, the rest are text-only; every ``skip_every``-th
    is skipped when loaded (a :class:`~vlutils.train.Skipped` record, as a broken image would be)
    and is sized to fill a batch alone, so its batch is all-skipped."""

    def __init__(self, count: int = 40, seed: int = 1, skip_every: int = 13):
        model = tiny_model()
        gen = torch.Generator().manual_seed(seed)
        self.samples = [make_sample(model, gen, (4, 6) if i % 3 == 0 else None) for i in range(count)]
        self.skipped = {i for i in range(count) if skip_every and i % skip_every == skip_every - 1}
        self.sizes = [(MAX_TOKENS if i in self.skipped else int(s["input_ids"].shape[0]),
                       int(s["pixel_values"].shape[0]) if "pixel_values" in s else 0)
                      for i, s in enumerate(self.samples)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        if i in self.skipped:
            return Skipped(i, f"#{i}", "DecodeError", "a broken image")
        return self.samples[i]


def rank_loader(dataset: ToyDataset, rank: int, world: int, epoch: int = 0) -> torch.utils.data.DataLoader:
    """This rank's DataLoader: its budget batches, packed by collate."""
    sampler = BudgetBatchSampler(dataset.sizes, MAX_TOKENS, rank=rank, world_size=world, shuffle=True, seed=0)
    sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)


def steps_of(loader, accum: int, steps: int) -> list[list[dict]]:
    """The first ``steps`` optimizer steps: lists of ``accum`` micro-batches."""
    batches = list(loader)
    if len(batches) < steps * accum:
        raise SystemExit(f"only {len(batches)} batches per rank; ask for fewer --steps or a smaller --accum")
    return [batches[k * accum:(k + 1) * accum] for k in range(steps)]


def train_reference(steps: int, world: int, accum: int, lr: float) -> dict[str, torch.Tensor]:
    """One process: every micro-batch of every rank, one optimizer step per global batch."""
    model = tiny_model()
    dataset = ToyDataset()
    per_rank = [steps_of(rank_loader(dataset, rank, world), accum, steps) for rank in range(world)]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        micro = [batch for rank in range(world) for batch in per_rank[rank][step]]
        n = global_num_label_tokens(micro)
        for batch in micro:
            model(**batch, num_items_in_batch=n).loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ddp_worker(rank: int, world: int, steps: int, accum: int, lr: float, port: int, out_dir: str,
                find_unused: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        model = tiny_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
        opt = torch.optim.SGD(ddp.parameters(), lr=lr)
        text_only = fillers = 0
        for micro in steps_of(rank_loader(ToyDataset(), rank, world), accum, steps):
            n = global_num_label_tokens(micro)  # a collective: every rank, every step
            for i, batch in enumerate(micro):
                text_only += "pixel_values" not in batch
                fillers += batch.filler
                last = i == len(micro) - 1
                with ddp.no_sync() if not last else contextlib.nullcontext():
                    loss = ddp(**batch, num_items_in_batch=n, touch_vision=not find_unused).loss
                    (loss * world).backward()  # DDP averages over ranks; the sum over ranks is wanted
            opt.step()
            opt.zero_grad()
        logger.info("rank %d: %d steps, %d text-only micro-batches, %d all-skipped (filler) micro-batches",
                    rank, steps, text_only, fillers)
        torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "text_only": text_only, "fillers": fillers}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_ddp(steps: int, world: int, accum: int, lr: float, find_unused: bool = False) -> dict:
    """``world`` gloo processes; returns rank 0's parameters after ``steps`` steps (``"state"``) and
    the number of text-only and filler micro-batches over all ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(world, steps, accum, lr, _free_port(), tmp, find_unused), nprocs=world, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    return {"state": ranks[0]["state"], "text_only": sum(r["text_only"] for r in ranks),
            "fillers": sum(r["fillers"] for r in ranks)}


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
    parser.add_argument("--steps", type=int, default=3)  # the toy data set has ~7 batches per rank at 2 ranks
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
    diff, name = max_relative_difference(ddp["state"], ref)
    logger.info("%d steps, %d ranks x %d micro-batches: parameters moved by up to %.3g (relative); "
                "DDP vs one process: max relative difference %.3g (%s)",
                args.steps, args.world_size, args.accum, moved, diff, name)
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
