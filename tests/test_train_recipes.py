"""The training recipes of docs/distributed-training.md, run on tiny models: transformers' Trainer
with a budget batch sampler (vlmodel, packed rows, gradient accumulation: parameters equal to a
hand-written loop normalising by the global label count), TRL 1.16's SFTTrainer on a tiny
Qwen2-VL (index dataset, skip_prepare_dataset, remove_unused_columns=False, processing class;
pixel values reach the model; packed rows log their real token count), and the errors that say
what to do."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from vlutils.errors import InvalidOptionError
from vlutils.train import (BudgetBatchSampler, IndexCollator, build_sample, collate, index_dataset,
                           num_label_tokens, trainer_class)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import ddp_train  # noqa: E402

from _tiny_checkpoints import hf_model  # noqa: E402
from _tiny_tokenizer import SMALL_SPECIAL, tiny_qwen_tokenizer  # noqa: E402
from _train_cases import conversation  # noqa: E402

pytest.importorskip("transformers")


def _args(tmp_path, **overrides):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path), report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                remove_unused_columns=False, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    base.update(overrides)
    return TrainingArguments(**base)


class RecordingSampler(BudgetBatchSampler):
    """Remembers the epochs it was set to."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)
        super().set_epoch(epoch)


class RecordingCollator(IndexCollator):
    """Remembers the batches (dataset indices) it collated, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def __call__(self, rows):
        self.batches.append([row["index"] for row in rows])
        return super().__call__(rows)


@pytest.mark.slow  # ~50 s on the loaded 2-core machine, most of it importing and starting Trainer
def test_trainer_with_a_budget_sampler_equals_a_hand_written_loop(tmp_path):
    model = ddp_train.tiny_model(seed=4)
    gen = torch.Generator().manual_seed(5)
    samples = [ddp_train.make_sample(model, gen, (4, 6) if i % 3 == 0 else None) for i in range(14)]
    sizes = [(int(s["input_ids"].shape[0]), int(s.get("pixel_values", torch.empty(0, 1)).shape[0])) for s in samples]
    sampler = RecordingSampler(sizes, max_tokens=64, shuffle=True, seed=3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    collator = RecordingCollator(samples, packed=True, for_transformers=False)
    trainer = trainer_class()(model=model, args=_args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=2),
                              train_dataset=[{"index": i} for i in range(len(samples))], data_collator=collator,
                              train_batch_sampler=sampler)
    trainer.train()
    assert sampler.epochs == [0, 1]  # Trainer's set_epoch reached the sampler: epoch 1 is another order
    batches = collator.batches
    per_epoch = len(batches) // 2
    assert per_epoch == len(sampler) and len(batches) == 2 * per_epoch
    assert batches[:per_epoch] != batches[per_epoch:]
    assert sorted(i for b in batches[:per_epoch] for i in b) == list(range(len(samples)))

    # the same batches by hand: one SGD step per 2 micro-batches, loss = sum / global label count
    reference = ddp_train.tiny_model(seed=4)
    reference.load_state_dict(start)
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    for epoch_batches in (batches[:per_epoch], batches[per_epoch:]):
        for k in range(0, len(epoch_batches), 2):
            micro = [collate([samples[i] for i in b]) for b in epoch_batches[k:k + 2]]
            n = sum(num_label_tokens(b) for b in micro)
            for b in micro:
                reference(**b, num_items_in_batch=n).loss.backward()
            opt.step()
            opt.zero_grad()
    moved, _ = ddp_train.max_relative_difference(model.state_dict(), start)
    assert moved > 1e-2
    diff, name = ddp_train.max_relative_difference(model.state_dict(), reference.state_dict())
    assert diff <= 1e-5, (diff, name)


def test_trainer_refuses_what_would_go_wrong_silently(tmp_path):
    model = ddp_train.tiny_model(seed=4)
    samples = [ddp_train.make_sample(model, torch.Generator().manual_seed(i), None) for i in range(4)]
    sampler = BudgetBatchSampler([(int(s["input_ids"].shape[0]), 0) for s in samples], max_tokens=64)
    with pytest.raises(InvalidOptionError, match="remove_unused_columns=False"):
        trainer_class()(model=model, args=_args(tmp_path, remove_unused_columns=True), train_dataset=samples,
                        data_collator=IndexCollator(packed=True, for_transformers=False), train_batch_sampler=sampler)
    hf = hf_model("qwen2_vl", seed=1)
    trainer = trainer_class()(model=hf, args=_args(tmp_path, max_steps=1), train_dataset=samples,
                              data_collator=IndexCollator(packed=True, for_transformers=False),
                              train_batch_sampler=sampler)
    with pytest.raises(InvalidOptionError, match=r"to_transformers\(batch\)"):
        trainer.train()


# -- TRL ------------------------------------------------------------------------------------------------------


def _vl_samples(count: int, seed: int = 0) -> list[dict]:
    tok = tiny_qwen_tokenizer(SMALL_SPECIAL)
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        messages, images, videos, kwargs = conversation(rng, "qwen2_vl", max_turns=2)
        out.append(build_sample(messages, tok, "qwen2_vl", images=images, videos=videos, video_kwargs=kwargs))
    return out


def _processing_class():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tiny_qwen_tokenizer(SMALL_SPECIAL), pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")


@pytest.mark.parametrize("packed", [pytest.param(False, marks=pytest.mark.slow), True])
def test_trl_sft_trainer_recipe(tmp_path, packed):
    pytest.importorskip("trl")
    from trl import SFTConfig, SFTTrainer

    samples = _vl_samples(6)
    assert any(s.get("pixel_values") is not None for s in samples)
    model = hf_model("qwen2_vl", seed=2).train()
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True)
    sizes = [(s["num_tokens"], s["num_patches"]) for s in samples]
    sampler = BudgetBatchSampler(sizes, max_tokens=max(n for n, _ in sizes) * 2)
    config = SFTConfig(output_dir=str(tmp_path), report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                       max_steps=len(sampler), learning_rate=1e-3, disable_tqdm=True,
                       dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, max_length=None)
    pad = SMALL_SPECIAL["<|endoftext|>"]
    trainer = trainer_class(SFTTrainer)(
        model=model, args=config, train_dataset=index_dataset(len(samples)), processing_class=_processing_class(),
        data_collator=IndexCollator(samples, packed=packed, pad_token_id=pad), train_batch_sampler=sampler)
    trainer.train()
    batches = list(sampler)
    assert len(seen) == len(batches)
    with_images = [any(samples[i].get("pixel_values") is not None for i in b) for b in batches]
    assert [("pixel_values" in keys) for keys in seen] == with_images  # nothing stripped on the way
    logged = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    # every token of every row: padded rows count their attention mask, packed rows their length
    expected = sum(sum(samples[i]["num_tokens"] for i in b) for b in batches)
    assert logged[-1] == expected
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == len(batches) and all(0 < loss < 20 for loss in losses)
