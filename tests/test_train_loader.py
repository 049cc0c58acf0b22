"""ConversationDataset + BudgetBatchSampler + collate in a DataLoader with two workers, under
fork and spawn: real image and video files, a corrupt image, an over-long conversation."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from vlutils.errors import DecodeError, SampleTooLongError
from vlutils.train import BudgetBatchSampler, ConversationDataset, collate, read_skip_log

from _tiny_tokenizer import tiny_qwen_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DEMO, VIDEO, BAD = ROOT / "fixtures" / "demo", ROOT / "fixtures" / "video", ROOT / "fixtures" / "bad"
SMALL = {"max_pixels": 128 * 28 * 28}


def _records():
    def conv(i, items, reply="A short answer."):
        return {"id": f"rec-{i}", "messages": [
            {"role": "user", "content": [*items, {"type": "text", "text": f"Question {i}?"}]},
            {"role": "assistant", "content": reply}]}

    images = ["landscape.jpg", "portrait_exif6.jpg", "logo_rgba.png", "chart_gray.png"]
    out = [conv(i, [{"type": "image", "image": str(DEMO / images[i % 4]), **SMALL}]) for i in range(6)]
    out.append(conv(6, [{"type": "video", "video": str(VIDEO / "h264_320x240_30fps.mp4"), "nframes": 4,
                         "min_pixels": 16 * 28 * 28, "max_pixels": 64 * 28 * 28}]))
    out.append(conv(7, [{"type": "image", "image": str(BAD / "img_truncated_half.png")}]))  # corrupt
    out.append(conv(8, [], reply="word " * 300))  # over max_length
    return out


def _write(tmp_path, records):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _loader(ds, sizes, context, **kw):
    sampler = BudgetBatchSampler(sizes, max_tokens=400, max_patches=2000, **kw)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2,
                                       multiprocessing_context=multiprocessing.get_context(context))


def _drain(loader):
    batches, error, iterator = [], None, iter(loader)
    try:
        for batch in iterator:
            batches.append(batch)
    except ValueError as exc:
        error = exc
    finally:
        iterator._shutdown_workers()
        del iterator
    return batches, error


def test_skip_mode_under_fork(tmp_path):
    path = _write(tmp_path, _records())
    log = tmp_path / "skipped.jsonl"
    ds = ConversationDataset(path, tiny_qwen_tokenizer(), "qwen2_vl", max_length=300, on_error="skip", skip_log=log)
    sizes = [(1, 1) if i in (7, 8) else None for i in range(len(ds))]  # bad ones reach the workers
    for i in range(7):
        sample = ds[i]
        sizes[i] = (sample["num_tokens"], sample["num_patches"])
    batches, error = _drain(_loader(ds, sizes, "fork"))
    assert error is None
    good = [b for b in batches if b]
    assert sum(int(b["cu_seqlens"].numel()) - 1 for b in good) == 7
    for b in good:
        assert b["input_ids"].shape[1] <= 400 and b["position_ids"].shape[:2] == (3, 1)
        assert b["cu_seqlens"].dtype == torch.int32 and int(b["cu_seqlens"][-1]) == b["input_ids"].shape[1]
    skipped = sorted((s for b in batches for s in b.skipped), key=lambda s: s.index)
    assert [s.index for s in skipped] == [7, 8]
    assert skipped[0].error == "DecodeError" and "rec-7" in skipped[0].sample_id and "img_truncated_half" in skipped[0].reason
    assert skipped[1].error == "SampleTooLongError" and "max_length 300" in skipped[1].reason
    assert sorted(s.index for s in read_skip_log(log)) == [7, 8]  # the workers' records, on disk


def test_raise_mode_under_spawn(tmp_path):
    records = _records()[:8]
    path = _write(tmp_path, records)
    ds = ConversationDataset(path, tiny_qwen_tokenizer(), "qwen2_5_vl", max_length=300)
    with pytest.raises(DecodeError, match="rec-7"):
        ds[7]
    with pytest.raises(SampleTooLongError, match=r"rec-8 \(.*train.jsonl:9\): \d+ tokens > max_length 300"):
        ConversationDataset(_write(tmp_path, _records()), tiny_qwen_tokenizer(), max_length=300)[8]
    sizes = [(s["num_tokens"], s["num_patches"]) for s in (ds[i] for i in range(7))] + [(400, 0)]
    batches, error = _drain(_loader(ds, sizes, "spawn"))
    assert isinstance(error, DecodeError), error
    assert "rec-7" in str(error) and "img_truncated_half.png" in str(error)
    assert sum(int(b["cu_seqlens"].numel()) - 1 for b in batches) == 7  # the good batches came first
    assert any("pixel_values_videos" in b for b in batches)


def test_dataset_from_a_list_and_padded_collate():
    records = _records()[:3]
    ds = ConversationDataset([r["messages"] for r in records], tiny_qwen_tokenizer(), "qwen3_vl")
    samples = [ds[i] for i in range(3)]
    batch = collate(samples, packed=False, pad_to_multiple_of=8)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert batch["attention_mask"].sum().item() == sum(s["num_tokens"] for s in samples)
    assert ds.sizes == [(s["num_tokens"], s["num_patches"]) for s in samples]
    assert ds.compute_sizes(num_workers=2) == ds.sizes
    with pytest.warns(DeprecationWarning, match="property"):  # the old method spelling still works
        assert ds.sizes() == list(ds.sizes)
