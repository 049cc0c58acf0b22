"""Exact resume through a real DataLoader with workers (fork and spawn): a training loop is
SIGKILLed mid-epoch and restarted from its checkpoint with another worker count; the batches it
received over both runs equal an uninterrupted run's, on every rank. Both ways of keeping the
position: ResumableLoader (plain DataLoader) and torchdata's StatefulDataLoader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _resume_child import EPOCHS, make_sampler  # noqa: E402

CHILD = Path(__file__).parent / "_resume_child.py"
ROOT = Path(__file__).parent.parent


def _uninterrupted(rank: int, world: int) -> list:
    sampler = make_sampler(rank, world)
    out = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        out += [[epoch, batch] for batch in sampler]
    return out


def _run(out: Path, rank: int, world: int, workers: int, context: str, loader: str, kill_after: int | None):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, str(CHILD), str(out), "--rank", str(rank), "--world", str(world), "--workers",
               str(workers), "--context", context, "--loader", loader]
    child = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.PIPE)
    log = out / "batches.jsonl"
    deadline = time.monotonic() + 240
    try:
        while kill_after is not None and time.monotonic() < deadline:
            if child.poll() is not None:
                break
            if log.exists() and sum(1 for _ in open(log)) >= kill_after:
                os.killpg(child.pid, signal.SIGKILL)  # the loop and its DataLoader workers, mid-epoch
                child.wait(30)
                assert child.returncode == -signal.SIGKILL
                return
            time.sleep(0.02)
        _, err = child.communicate(timeout=max(deadline - time.monotonic(), 1))
        assert child.returncode == 0, err.decode()[-3000:]
        assert kill_after is None, "the run finished before it could be killed"
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(30)


@pytest.mark.parametrize("context,loader,rank,workers", [
    ("fork", "plain", 1, (2, 0)),
    pytest.param("spawn", "plain", 0, (1, 2), marks=pytest.mark.slow),  # spawned workers import torch: ~1 min
    ("fork", "stateful", 0, (2, 3)),  # torchdata refuses the new count: the sampler state restores it
])
def test_sigkill_and_resume_with_another_worker_count(tmp_path, context, loader, rank, workers):
    if loader == "stateful":
        pytest.importorskip("torchdata.stateful_dataloader")
    world = 2
    expected = _uninterrupted(rank, world)
    per_epoch = len(expected) // EPOCHS
    kill_after = per_epoch // 2 + rank  # mid first epoch
    _run(tmp_path, rank, world, workers[0], context, loader, kill_after)
    with open(tmp_path / "batches.jsonl") as handle:
        before = [json.loads(line) for line in handle]
    assert kill_after <= len(before) < len(expected)
    _run(tmp_path, rank, world, workers[1], context, loader, None)
    with open(tmp_path / "batches.jsonl") as handle:
        got = [json.loads(line) for line in handle]
    assert got == expected


def test_stateful_dataloader_own_resume_with_the_same_worker_count():
    """torchdata's own load_state_dict (same worker count) continues exactly too."""
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    from _resume_child import IndexDataset, identity

    expected = list(make_sampler(1, 2))
    sampler = make_sampler(1, 2)
    loader = stateful.StatefulDataLoader(IndexDataset(1200), batch_sampler=sampler, num_workers=2,
                                         collate_fn=identity, multiprocessing_context="fork")
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    del it
    again = stateful.StatefulDataLoader(IndexDataset(1200), batch_sampler=make_sampler(1, 2), num_workers=2,
                                        collate_fn=identity, multiprocessing_context="fork")
    again.load_state_dict(state)
    assert head + list(again) == expected
    with pytest.raises(AssertionError):  # why sampler_state exists: another count is refused
        other = stateful.StatefulDataLoader(IndexDataset(1200), batch_sampler=make_sampler(1, 2), num_workers=1,
                                            collate_fn=identity, multiprocessing_context="fork")
        other.load_state_dict(state)
        next(iter(other))
