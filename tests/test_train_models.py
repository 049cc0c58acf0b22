"""Samples from build_sample, collated, through real models, for Qwen2-VL, Qwen2.5-VL and Qwen3-VL
(tiny random checkpoints written by save_pretrained): vlmodel packed == each sample alone
(logits, loss, gradients); vlmodel padded == packed == transformers 5.23 padded; transformers'
own packed path (4-row positions from to_transformers) == its per-sample results."""

from __future__ import annotations

import random

import pytest
import torch

import vlmodel
from vlutils.train import build_sample, collate, to_transformers

from _refs import ROOT, run_python
from _tiny_checkpoints import hf_model
from _tiny_tokenizer import SMALL_SPECIAL, tiny_qwen_tokenizer
from _train_cases import conversation

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
RUNNER = ROOT / "tests" / "reference_train_runner.py"


def _samples(family: str, tok) -> list[dict]:
    """Four short conversations; between them at least one image and one video."""
    rng = random.Random(f"models-{family}")
    while True:
        out = []
        for _ in range(4):
            messages, images, videos, kwargs = conversation(rng, family, max_turns=2)
            out.append(build_sample(messages, tok, family, images=images, videos=videos, video_kwargs=kwargs,
                                    pad_token_id=SMALL_SPECIAL["<|endoftext|>"]))
        if any(s["pixel_values"] is not None for s in out) and any(s["pixel_values_videos"] is not None for s in out):
            return out


def _counts(samples):
    return [int((s["labels"][1:] != -100).sum()) for s in samples]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_models")
    tok = tiny_qwen_tokenizer(SMALL_SPECIAL)
    samples, ours, cases = {}, {}, {}
    for family in FAMILIES:
        samples[family] = _samples(family, tok)
        checkpoint = None
        if family != "qwen3_vl":  # Qwen3-VL: the runner builds it with transformers 5.23 and saves it
            checkpoint = str(root / family)
            hf_model(family, seed=5).save_pretrained(checkpoint)
        cases[family] = {"checkpoint": checkpoint, "save_to": str(root / family), "samples": samples[family],
                         "padded": dict(collate(samples[family], packed=False)),
                         "packed": dict(to_transformers(collate(samples[family])))}
    torch.save(cases, root / "cases.pt")
    run_python("tf523", [str(RUNNER), str(root / "cases.pt"), str(root / "out.pt")], timeout=600)
    out = torch.load(root / "out.pt", weights_only=False)
    assert out["version"].startswith("5.23")
    for family in FAMILIES:
        ours[family] = vlmodel.from_pretrained(root / family, dtype=torch.float32)
    return samples, ours, out["results"]


def _weighted(losses, counts):
    return sum(l * n for l, n in zip(losses, counts)) / sum(counts)


@pytest.mark.parametrize("family", FAMILIES)
def test_vlmodel_packed_equals_each_sample_alone(setup, family):
    samples, ours, _ = setup
    model, ss = ours[family], samples[family]
    batch = collate(ss)
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["cu_seqlens"].tolist() == [0, *torch.tensor([s["num_tokens"] for s in ss]).cumsum(0).tolist()]
    wanted = ("visual.blocks.0.", "layers.1.self_attn.k_proj", "embed_tokens", "lm_head")
    params = [p for name, p in model.named_parameters() if name.endswith("weight") and any(w in name for w in wanted)]
    assert len(params) >= 4
    packed = model(**batch)
    packed_grads = torch.autograd.grad(packed.loss, params)
    alone = [model(**collate([s])) for s in ss]  # one sample: a packed row of one segment
    ref = torch.cat([o.logits for o in alone], dim=1)
    assert (packed.logits - ref).abs().max() <= 1e-4 * ref.abs().max()
    counts = _counts(ss)
    total = sum(o.loss * n for o, n in zip(alone, counts)) / sum(counts)
    assert abs(packed.loss.item() - total.item()) <= 1e-5 * abs(total.item())
    for got, want in zip(packed_grads, torch.autograd.grad(total, params)):
        assert want.abs().max() > 0 and (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_loss_equals_transformers_and_packed(setup, family):
    samples, ours, results = setup
    model, ss = ours[family], samples[family]
    padded = collate(ss, packed=False, pad_to_multiple_of=16)
    assert padded["input_ids"].shape[1] % 16 == 0
    with torch.no_grad():
        got = model(**padded)
        packed = model(**collate(ss, pad_to_multiple_of=16))  # a padding segment at the end changes nothing
    ref_loss, ref_logits = results[family]["padded"]
    assert abs(got.loss.item() - ref_loss) <= 1e-4 * abs(ref_loss)
    assert abs(packed.loss.item() - ref_loss) <= 1e-4 * abs(ref_loss)
    width = ref_logits.shape[1]
    real = padded["attention_mask"][:, :width].bool()
    assert (got.logits[:, :width][real] - ref_logits[real]).abs().max() <= 1e-4 * ref_logits[real].abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_padded_and_packed_paths_agree_with_samples_alone(setup, family):
    samples, _, results = setup
    r = results[family]
    counts = _counts(samples[family])
    expected = _weighted([loss for loss, _ in r["alone"]], counts)
    for layout in ("padded", "packed"):
        assert abs(r[layout][0] - expected) <= 1e-4 * abs(expected), layout
    alone_logits = torch.cat([logits for _, logits in r["alone"]], dim=1)
    packed_logits = r["packed"][1]
    assert (packed_logits - alone_logits).abs().max() <= 1e-4 * alone_logits.abs().max()
