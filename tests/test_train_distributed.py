"""Loss normalisation across micro-batches and ranks (num_items_in_batch), filler batches for
all-skipped samples, collate's key errors, and the DDP recipe of examples/ddp_train.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vlutils.errors import InvalidOptionError
from vlutils.train import Skipped, collate, global_num_label_tokens, num_label_tokens

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import ddp_train  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return ddp_train.tiny_model(seed=3)


def _samples(model, n, seed, images=True):
    gen = torch.Generator().manual_seed(seed)
    return [ddp_train.make_sample(model, gen, (4, 6) if images and i % 2 == 0 else None) for i in range(n)]


@pytest.mark.parametrize("packed", [True, False])
def test_num_label_tokens_is_what_the_mean_divides_by(model, packed):
    for seed in range(2):
        batch = collate(_samples(model, 3, seed), packed=packed)
        n = num_label_tokens(batch)
        out_mean = model(**batch).loss
        out_sum = model(**batch, num_items_in_batch=n).loss
        torch.testing.assert_close(out_sum, out_mean, rtol=1e-6, atol=0)
        # independent count: per-sample shifted labels (no seams inside one sample)
        samples = _samples(model, 3, seed)
        assert n == sum(int((s["labels"][1:] != -100).sum()) for s in samples)


def test_accumulated_micro_batches_equal_one_big_batch(model):
    """sum over micro-batches of loss(num_items_in_batch=global count) == the mean loss of all
    samples in one batch; gradients too (what DDP + accumulation needs)."""
    samples = _samples(model, 6, seed=7)
    micro = [collate(samples[:1]), collate(samples[1:4]), collate(samples[4:])]
    n = global_num_label_tokens(micro)
    assert int(n) == num_label_tokens(collate(samples))
    model.zero_grad()
    total = sum(model(**b, num_items_in_batch=n).loss for b in micro)
    total.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    big = model(**collate(samples)).loss
    big.backward()
    torch.testing.assert_close(total.detach(), big.detach(), rtol=1e-5, atol=0)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    # the per-micro-batch mean (the old bug) is a different objective
    with torch.no_grad():
        wrong = sum(model(**b).loss for b in micro) / len(micro)
    assert abs(float(wrong) - float(big.detach())) > 1e-4


def test_num_items_in_batch_validated(model):
    batch = collate(_samples(model, 2, seed=1))
    with pytest.raises(ValueError, match="num_items_in_batch must be >= 1"):
        model(**batch, num_items_in_batch=0)
    with pytest.raises(TypeError, match="num_items_in_batch"):
        model(**batch, num_items_in_batch=2.5)


@pytest.mark.parametrize("packed", [True, False])
def test_all_skipped_batch_is_a_filler_that_trains_nothing(model, packed):
    skipped = [Skipped(4, "rec-4 (a.jsonl:5)", "DecodeError", "truncated"), None]
    batch = collate(skipped, packed=packed, pad_token_id=0)
    assert batch.filler and batch.skipped == [skipped[0]] and batch.dropped == 1
    assert batch["input_ids"].shape == (1, 1) and num_label_tokens(batch) == 0
    model.zero_grad()
    loss = model(**batch, touch_vision=True).loss
    assert float(loss.detach()) == 0.0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name  # every parameter is in the graph (DDP needs no find_unused_parameters)
        assert float(p.grad.abs().max()) == 0.0, name
    # a global count of 0 (every rank got a filler) gives 0, not 0/0
    assert float(model(**batch, num_items_in_batch=torch.tensor(0)).loss.detach()) == 0.0
    assert not collate(_samples(model, 1, seed=2)).filler


def test_text_only_batch_touch_vision(model):
    batch = collate(_samples(model, 2, seed=3, images=False))
    assert "pixel_values" not in batch
    plain = model(**batch).loss
    touched = model(**batch, touch_vision=True).loss
    assert float(plain.detach()) == float(touched.detach())
    model.zero_grad()
    touched.backward()
    assert model.visual.patch_embed.proj.weight.grad is not None
    assert float(model.visual.patch_embed.proj.weight.grad.abs().max()) == 0.0


def test_collate_names_missing_keys(model):
    sample = _samples(model, 1, seed=4)[0]
    stripped = {k: v for k, v in sample.items() if k not in ("pixel_values", "position_ids")}
    with pytest.raises(InvalidOptionError) as info:
        collate([sample, stripped])
    message = str(info.value)
    assert "sample 1 is missing 'position_ids', 'pixel_values'" in message
    assert "remove_unused_columns=False" in message
    with pytest.raises(InvalidOptionError, match="missing 'input_ids'"):
        collate([{"labels": sample["labels"]}])
    with pytest.raises(InvalidOptionError, match="at least one sample"):
        collate([])


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_process_accumulating():
    """examples/ddp_train.py: 2 gloo ranks, each with its own BudgetBatchSampler(rank, world_size), 2 micro-batches
    per step, 3 steps, text-only and all-skipped micro-batches among them: parameters equal (1e-5 relative) to one
    process accumulating the same global batches."""
    ref = ddp_train.train_reference(steps=3, world=2, accum=2, lr=0.5)
    ddp = ddp_train.train_ddp(steps=3, world=2, accum=2, lr=0.5)
    assert ddp["text_only"] > 0 and ddp["fillers"] > 0  # the cases DDP trips over are really exercised
    moved, _ = ddp_train.max_relative_difference(ref, ddp_train.tiny_model().state_dict())
    assert moved > 1e-2  # training did something
    diff, name = ddp_train.max_relative_difference(ddp["state"], ref)
    assert diff <= 1e-5, (diff, name)


def test_every_rank_gets_the_same_number_of_batches():
    """What keeps DDP ranks in step: equal batch counts per rank (a per-rank sampler over a DistributedSampler
    split does not guarantee it), every sample once over the ranks."""
    dataset = ddp_train.ToyDataset()
    for world in (2, 3):
        loaders = [ddp_train.rank_loader(dataset, rank, world) for rank in range(world)]
        counts = {len(loader.batch_sampler) for loader in loaders}
        assert len(counts) == 1
        seen = sorted(i for loader in loaders for batch in loader.batch_sampler for i in batch)
        assert seen == list(range(len(dataset)))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_vision_zero_loss_reaches_every_vision_parameter(family):
    """The dummy image of touch_vision covers every vision parameter (DeepStack mergers and the learned
    position table of Qwen3-VL too), with gradients of exactly zero."""
    import vlmodel
    from _qwen3_cases import IDS, _text, _vision

    if family == "qwen3_vl":
        raw = {"model_type": "qwen3_vl", "text_config": _text(), "vision_config": _vision(), **IDS}
        model = vlmodel.VLModel(vlmodel.ModelConfig.from_dict(raw))
    else:
        model = ddp_train.tiny_model()
    loss = model.vision_zero_loss()
    assert float(loss.detach()) == 0.0
    loss.backward()
    for name, p in model.visual.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad.abs().max()) == 0.0, name


def test_num_items_in_batch_matches_transformers(tmp_path):
    """The same tiny Qwen2.5-VL checkpoint in transformers 4.57 and vlmodel: with num_items_in_batch both
    return sum of token losses / that number (padded rows, images and videos, several counts)."""
    import random

    import vlmodel
    from _tiny_checkpoints import hf_model
    from _tiny_tokenizer import SMALL_SPECIAL, tiny_qwen_tokenizer
    from _train_cases import conversation
    from vlutils.train import build_sample

    hf = hf_model("qwen2_5_vl", seed=7)
    hf.save_pretrained(tmp_path)
    ours = vlmodel.from_pretrained(tmp_path, dtype=torch.float32)
    tok, rng = tiny_qwen_tokenizer(SMALL_SPECIAL), random.Random(3)
    samples = []
    for _ in range(3):
        messages, images, videos, kwargs = conversation(rng, "qwen2_5_vl", max_turns=2)
        samples.append(build_sample(messages, tok, "qwen2_5_vl", images=images, videos=videos, video_kwargs=kwargs))
    batch = collate(samples, packed=False, pad_token_id=SMALL_SPECIAL["<|endoftext|>"])
    n = num_label_tokens(batch)
    with torch.no_grad():
        for items in (n, 3 * n + 1, torch.tensor(17)):
            ref = hf(**batch, num_items_in_batch=items).loss
            got = ours(**batch, num_items_in_batch=items).loss
            assert abs(float(got) - float(ref)) <= 1e-4 * abs(float(ref)), (items, float(got), float(ref))
        # and the count is the one transformers' own mean divides by
        torch.testing.assert_close(ours(**batch, num_items_in_batch=n).loss, hf(**batch).loss, rtol=1e-4, atol=0)
