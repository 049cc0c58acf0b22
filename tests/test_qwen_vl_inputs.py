"""Qwen-VL inputs end to end: the image transform against the original torchvision transform's
stored tensors, build_inputs / build_sample / count_tokens / collate with model_type="qwen_vl"."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from _qwen_vl_fixtures import FIXTURES, IMAGES, cases, reference, tokenizer
from vlutils import build_inputs, count_tokens
from vlutils.errors import InvalidOptionError, SampleTooLongError, SourceNotFoundError
from vlutils.image_qwen_vl import qwen_vl_transform
from vlutils.train import build_sample, collate

ROOT = FIXTURES.parent.parent


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.numpy().astype("<f4").tobytes()).hexdigest()


def test_transform_is_bit_identical_to_the_original_on_generated_images():
    stored = np.load(FIXTURES / "tensors.npz")
    refs = reference()["images"]
    assert len(refs) >= 20
    whole = 0
    for i, (case, ref) in enumerate(zip(cases()["images"], refs)):
        with Image.open(IMAGES / case["file"]) as image:
            ours = qwen_vl_transform(image, case["image_size"])
        assert list(ours.shape) == ref["shape"] and ours.dtype == torch.float32
        if f"image_{i}" in stored:  # small sizes are stored whole: exact values
            whole += 1
            np.testing.assert_array_equal(ours.numpy(), stored[f"image_{i}"], err_msg=case["file"])
        assert _digest(ours) == ref["sha256"], case
    assert whole >= 8


def test_build_inputs_ids_pixels_and_positions(monkeypatch):
    monkeypatch.chdir(ROOT)
    tok = tokenizer()
    files = [f"fixtures/qwen_vl_inputs/images/{name}" for name in ("rgba_0.png", "p_0.gif", "rgb_5.jpg")]
    first = [{"role": "user", "content": [{"type": "image", "image": files[0]}, {"type": "text", "text": "What is it?"}]}]
    second = [
        {"role": "user", "content": [{"type": "image", "image": files[1]}, {"type": "text", "text": "Box the dog"}]},
        {"role": "assistant", "content": "<ref>dog</ref><box>(1,2),(300,400)</box>"},
        {"role": "user", "content": f"Picture 2: <img>{files[2]}</img>\nAnd this?"},
    ]
    out = build_inputs([first, second], tok, model_type="qwen_vl", image_size=56)
    from vlutils.chat_qwen_vl import DEFAULT_SYSTEM_PROMPT, make_context

    expected = [
        make_context(tok, f"Picture 1: <img>{files[0]}</img>\nWhat is it?", [], DEFAULT_SYSTEM_PROMPT)[1],
        make_context(tok, f"Picture 2: <img>{files[2]}</img>\nAnd this?",
                     [(f"Picture 1: <img>{files[1]}</img>\nBox the dog", second[1]["content"])],
                     DEFAULT_SYSTEM_PROMPT)[1],
    ]
    width = max(map(len, expected))
    for row, ids in zip(out["input_ids"].tolist(), expected):
        assert row == [tok.eod_id] * (width - len(ids)) + ids  # left padding with <|endoftext|>
    assert out["attention_mask"].sum(1).tolist() == [len(e) for e in expected]
    mask = out["attention_mask"]
    assert torch.equal(out["position_ids"], (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1))
    assert out["pixel_values"].shape == (3, 3, 56, 56)
    for tensor, name in zip(out["pixel_values"], [files[0], files[1], files[2]]):
        with Image.open(ROOT / name) as image:
            assert torch.equal(tensor, qwen_vl_transform(image, 56))
    assert out["mm_token_type_ids"].sum().item() == 3 * 256
    assert out["image_grid_thw"] is None and out["rope_deltas"] is None


def test_build_inputs_drops_the_images_of_turns_past_the_window(monkeypatch):
    monkeypatch.chdir(ROOT)
    tok = tokenizer()
    image = [{"type": "image", "image": "fixtures/qwen_vl_inputs/images/rgb_0.png"}]
    messages = [
        {"role": "user", "content": image + [{"type": "text", "text": "old"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "image", "image": "fixtures/qwen_vl_inputs/images/l_0.png"}]},
    ]
    full = build_inputs(messages, tok, model_type="qwen_vl", image_size=28)
    short = build_inputs(messages, tok, model_type="qwen_vl", image_size=28, max_window_size=300)
    assert full["pixel_values"].shape[0] == 2 and short["pixel_values"].shape[0] == 1
    assert torch.equal(short["pixel_values"][0], full["pixel_values"][1])
    assert short["input_ids"].shape[1] < full["input_ids"].shape[1] - 258


def test_pil_images_and_pre_fetched_images(monkeypatch):
    tok = tokenizer()
    pil = Image.open(IMAGES / "rgb_8.webp")
    messages = [{"role": "user", "content": [{"type": "image", "image": pil}, {"type": "text", "text": "hi"}]}]
    out = build_inputs(messages, tok, model_type="qwen_vl", image_size=28)
    assert tok.image_references(out["input_ids"][0]) == [""]  # an object has no reference string
    again = build_inputs(messages, tok, model_type="qwen_vl", image_size=28, images=[pil])
    assert torch.equal(out["pixel_values"], again["pixel_values"])
    assert torch.equal(out["pixel_values"][0], qwen_vl_transform(pil, 28))
    import base64

    data = base64.b64encode((IMAGES / "rgba_0.png").read_bytes()).decode()
    for source in (f"data:image/png;base64,{data}", data):  # a data URI and a bare base64 string
        inline = build_inputs([{"role": "user", "content": [{"type": "image", "image": source}]}], tok,
                              model_type="qwen_vl", image_size=28)
        assert tok.image_references(inline["input_ids"][0]) == [""]  # longer than 256 bytes
        with Image.open(IMAGES / "rgba_0.png") as image:
            assert torch.equal(inline["pixel_values"][0], qwen_vl_transform(image, 28))


def test_build_inputs_errors_are_typed(tmp_path):
    tok = tokenizer()
    missing = [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "nope.png")}]}]
    with pytest.raises(SourceNotFoundError, match="image 0"):
        build_inputs(missing, tok, model_type="qwen_vl")
    with pytest.raises(SourceNotFoundError, match="conversation 1, image 0"):
        build_inputs([[{"role": "user", "content": "fine"}], missing], tok, model_type="qwen_vl")
    with pytest.raises(InvalidOptionError, match="1 image\\(s\\) given but the messages hold 0"):
        build_inputs([{"role": "user", "content": "hi"}], tok, model_type="qwen_vl", images=[Image.new("RGB", (2, 2))])
    text = [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidOptionError, match="image_size"):
        build_inputs(text, tok, model_type="qwen_vl", image_size=0)
    with pytest.raises(InvalidOptionError, match="not \\['patch_size'\\]"):
        build_inputs(text, tok, model_type="qwen_vl", patch_size=14)
    from tokenizers import Tokenizer, models

    with pytest.raises(InvalidOptionError, match="qwen.tiktoken"):
        build_inputs(text, Tokenizer(models.WordLevel({"a": 0}, unk_token="a")), model_type="qwen_vl")


def test_build_sample_equals_finetune_preprocess_and_collates(monkeypatch):
    monkeypatch.chdir(ROOT)
    tok = tokenizer()
    refs = reference()["finetune"]
    samples = []
    for ref in refs[:12]:
        messages = [{"role": t["from"], "content": t["value"].replace("<img>", "<im g>")} for t in ref["conversation"]]
        if messages != [{"role": t["from"], "content": t["value"]} for t in ref["conversation"]]:
            continue  # conversations with image spans need their files: checked below
        sample = build_sample(messages, tok, "qwen_vl")
        assert sample["input_ids"].tolist() == ref["input_ids"] and sample["labels"].tolist() == ref["labels"]
        assert torch.equal(sample["position_ids"], torch.arange(len(ref["input_ids"])))
        samples.append(sample)
    assert len(samples) >= 2
    image = "fixtures/qwen_vl_inputs/images/rgb_1.png"
    with_image = build_sample([{"role": "user", "content": [{"type": "image", "image": image}]},
                               {"role": "assistant", "content": "a dot"}], tok, "qwen_vl", image_size=28)
    assert with_image["pixel_values"].shape == (1, 3, 28, 28) and with_image["num_patches"] == 4
    samples.append(with_image)
    packed = collate(samples)
    total = sum(s["num_tokens"] for s in samples)
    assert packed["position_ids"].shape == (1, total) and packed["cu_seqlens"][-1].item() == total
    assert packed["pixel_values"].shape[0] == 1
    padded = collate(samples, packed=False, pad_token_id=tok.eod_id)
    assert padded["position_ids"].shape == padded["input_ids"].shape


def test_training_layout_without_generation_prompt():
    tok = tokenizer()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<ref>x</ref><box>(1,2),(3,4)</box>"}]
    inputs = build_inputs(messages, tok, model_type="qwen_vl", add_generation_prompt=False)
    sample = build_sample(messages, tok, "qwen_vl")
    assert inputs["input_ids"][0].tolist() == sample["input_ids"].tolist()
    assert tok.decode(sample["input_ids"]).endswith("<|im_end|>\n")


def test_build_sample_length_limits():
    tok = tokenizer()
    messages = [{"role": "user", "content": "hello " * 20}, {"role": "assistant", "content": "hi"}]
    assert build_sample(messages, tok, "qwen_vl", max_length=10, truncation="drop") is None
    for mode in ("error", "shrink"):
        with pytest.raises(SampleTooLongError, match="max_length 10") as info:
            build_sample(messages, tok, "qwen_vl", max_length=10, truncation=mode)
        assert info.value.max_length == 10
    assistant = build_sample(messages, tok, "qwen_vl", label_style="assistant")
    assert (assistant["labels"] != -100).sum().item() == len(tok.encode("hi")) + 1


def test_count_tokens_is_256_per_image(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    messages = [{"role": "user", "content": [{"type": "image", "image": "fixtures/qwen_vl_inputs/images/rgb_9.jpg"},
                                             {"type": "image", "image": "fixtures/qwen_vl_inputs/images/rgb_1.png"}]}]
    entries = count_tokens(messages, model_type="qwen_vl")
    assert [e["tokens"] for e in entries] == [256, 256]
    assert entries[0]["grid_thw"] == (1, 32, 32) and entries[0]["resized"] == (448, 448)
    tok = tokenizer()
    ids = build_inputs(messages, tok, model_type="qwen_vl", image_size=28)["mm_token_type_ids"]
    assert ids.sum().item() == sum(e["tokens"] for e in entries)
    with pytest.raises(SourceNotFoundError, match="message 0, item 0"):
        count_tokens([{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "x.png")}]}],
                     model_type="qwen_vl")


def test_prepare_stores_qwen_vl_samples_that_read_back_bit_identical(tmp_path):
    """prepare(model_type="qwen_vl") on a JSONL with the tiny qwen.tiktoken: rows equal build_sample."""
    import json
    import shutil

    from vlutils.data import PreparedDataset
    from vlutils.data.prepare import prepare  # the package's lazy `prepare` is the submodule once imported

    pytest.importorskip("pyarrow")
    for name in ("rgb_0.png", "rgba_1.png"):
        shutil.copy(IMAGES / name, tmp_path / name)
    shutil.copy(FIXTURES / "tiny.tiktoken", tmp_path / "qwen.tiktoken")
    records = [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "rgb_0.png"}, {"type": "text", "text": "x"}]},
                      {"role": "assistant", "content": "<ref>a</ref><box>(1,2),(30,40)</box>"}]},
        {"messages": [{"role": "user", "content": "<image>what?"}, {"role": "assistant", "content": "z"}],
         "images": ["rgba_1.png"]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "missing.png"}]},
                      {"role": "assistant", "content": "?"}]},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    manifest = prepare(str(data), str(out), str(tmp_path), model_type="qwen_vl", workers=1)
    assert manifest["counts"]["samples"] == 2 and manifest["counts"]["rejected"] == 1
    dataset = PreparedDataset(str(out))
    tok = tokenizer()
    from vlutils.data import parse_record, load_spec
    from vlutils.data.spec import iter_lines

    source = load_spec(str(data)).sources[0]
    for item, (index, line, path) in zip(dataset, iter_lines(source)):
        expected = build_sample(parse_record(line, source, path), tok, "qwen_vl")
        for key in ("input_ids", "labels", "position_ids", "pixel_values"):
            assert torch.equal(item[key], expected[key]), key
        assert item["pixel_values"].shape == (1, 3, 448, 448)
    rows = [dataset._row(i) for i in range(len(dataset))]  # stored as resized uint8 images, not raw floats
    assert all(r["pixel_values"] is None and (r["images"][0]["height"], r["images"][0]["width"]) == (448, 448)
               for r in rows)


def test_cli_reports_qwen_vl_images(tmp_path, capsys):
    import json

    from vlutils.cli import main

    messages = [{"role": "user", "content": [{"type": "image", "image": str(IMAGES / "rgb_4.jpg")},
                                             {"type": "image", "image": str(tmp_path / "nope.png")}]}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(messages))
    assert main([str(path), "--model-type", "qwen_vl", "--image-size", "224", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    good, bad = report["items"]
    assert good["original_size"] == [450, 130] and good["resized_size"] == [224, 224] and good["visual_tokens"] == 256
    assert bad["kind"] == "error" and "SourceNotFoundError" in bad["error"]


def test_safe_mode_applies_to_qwen_vl_images(tmp_path):
    """Images go through vlutils' sources: a path outside the allowed roots is refused, the
    image formats and pixel limits of the policy hold, allowed ones load."""
    import shutil

    from vlutils import policy
    from vlutils.errors import UnsafeSourceError

    inside = tmp_path / "media"
    inside.mkdir()
    shutil.copy(IMAGES / "rgb_0.png", inside / "ok.png")
    shutil.copy(IMAGES / "rgb_7.bmp", inside / "old.bmp")
    tok = tokenizer()

    def messages(path):
        return [{"role": "user", "content": [{"type": "image", "image": str(path)}]}]

    with policy.use(policy.SafetyPolicy(allowed_roots=[str(inside)], image_formats=frozenset({"PNG"}))):
        assert build_inputs(messages(inside / "ok.png"), tok, model_type="qwen_vl", image_size=28)["pixel_values"].shape[0] == 1
        with pytest.raises(UnsafeSourceError, match="image 0"):
            build_inputs(messages(IMAGES / "rgb_0.png"), tok, model_type="qwen_vl", image_size=28)
        with pytest.raises(UnsafeSourceError, match="BMP"):
            build_inputs(messages(inside / "old.bmp"), tok, model_type="qwen_vl", image_size=28)


def test_get_rope_index_refuses_qwen_vl_clearly():
    from vlutils import get_rope_index

    with pytest.raises(InvalidOptionError, match="1-D position ids"):
        get_rope_index(torch.tensor([[1, 2, 3]]), model_type="qwen_vl")


def test_patchify_refuses_qwen_vl_clearly():
    from vlutils.processor import PRESETS, get_preset

    assert "qwen_vl" not in PRESETS
    with pytest.raises(InvalidOptionError, match="does not patchify"):
        get_preset("qwen_vl")
