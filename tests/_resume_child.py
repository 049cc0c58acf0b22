"""A training loop that checkpoints its data position after every step (run by test_train_resume).

    python tests/_resume_child.py OUT --rank R --world W --workers N --context fork|spawn --loader plain|stateful

Appends each batch it receives to OUT/batches.jsonl and saves OUT/checkpoint.pkl (atomically)
after it; on start it resumes from the checkpoint, cutting the log back to the checkpointed
batches, as a real job redoes the steps after its last checkpoint. Two epochs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import time

import numpy as np
import torch.utils.data

from vlutils.train import BudgetBatchSampler, ResumableLoader, sampler_state

EPOCHS = 2


class IndexDataset(torch.utils.data.Dataset):
    """Item i is i, after a short pause (so the loader prefetches ahead of the loop)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        time.sleep(0.0005)
        return int(i)


def identity(batch):
    return batch


def make_sampler(rank: int, world: int) -> BudgetBatchSampler:
    rng = np.random.default_rng(0)
    n = 1200
    patches = rng.choice([0, 576, 2304, 9000], n)
    tokens = rng.integers(50, 3000, n) + patches // 4
    sources = rng.integers(0, 3, n)
    return BudgetBatchSampler(np.stack([tokens, patches], 1), 24000, 40000, rank=rank, world_size=world,
                              sources=sources, weights=[1.0, 0.5, 1.5], shuffle=True, seed=5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--context", default="fork")
    parser.add_argument("--loader", default="plain")
    args = parser.parse_args()
    log_path = os.path.join(args.out, "batches.jsonl")
    ckpt_path = os.path.join(args.out, "checkpoint.pkl")
    sampler = make_sampler(args.rank, args.world)
    dataset = IndexDataset(len(sampler._sizes))
    kwargs = dict(num_workers=args.workers, collate_fn=identity)
    if args.workers:
        kwargs["multiprocessing_context"] = multiprocessing.get_context(args.context)
        kwargs["persistent_workers"] = True  # workers start once per run, not once per epoch
    checkpoint = None
    if os.path.exists(ckpt_path):
        with open(ckpt_path, "rb") as handle:
            checkpoint = pickle.load(handle)
        with open(log_path) as handle:
            kept = handle.readlines()[:checkpoint["logged"]]
        with open(log_path, "w") as handle:
            handle.writelines(kept)
    logged = checkpoint["logged"] if checkpoint else 0
    if args.loader == "plain":
        loader = ResumableLoader(dataset, sampler, state=checkpoint and checkpoint["data"], **kwargs)
    else:
        from torchdata.stateful_dataloader import StatefulDataLoader

        loader = StatefulDataLoader(dataset, batch_sampler=sampler, **kwargs)
        if checkpoint is not None:
            if checkpoint["workers"] == args.workers:
                loader.load_state_dict(checkpoint["data"])  # torchdata's own path
            else:  # torchdata refuses another worker count: restore the sampler from the state it saved
                sampler.load_state_dict(sampler_state(checkpoint["data"]))
    start_epoch = sampler_state(checkpoint["data"])["epoch"] if checkpoint else 0
    with open(log_path, "a") as log:
        for epoch in range(start_epoch, EPOCHS):
            sampler.set_epoch(epoch)
            for batch in loader:
                log.write(json.dumps([epoch, batch]) + "\n")
                log.flush()
                logged += 1
                state = {"data": loader.state_dict(), "logged": logged, "workers": args.workers}
                with open(ckpt_path + ".tmp", "wb") as handle:
                    pickle.dump(state, handle)
                os.replace(ckpt_path + ".tmp", ckpt_path)


if __name__ == "__main__":
    main()
