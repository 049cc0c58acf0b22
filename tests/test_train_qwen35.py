"""build_sample for Qwen3.5 / Qwen3.5-MoE: ids and positions equal build_inputs', labels equal an
independent computation (the Qwen3.5 template restated here, rendered turn by turn with expanded
vision blocks, prefixes tokenized), and a packed row of such samples trains in vlmodel on a tiny
checkpoint written by transformers 5.23 (loss == token-weighted mean of the per-sample losses)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

import vlmodel
from vlutils import build_inputs
from vlutils.train import build_sample, collate

from _qwen3_cases import TOKENS
from _refs import ROOT, reference_env
from _tiny_tokenizer import QWEN35_SPECIAL, tiny_qwen_tokenizer
from _train_cases import image, text, video
from test_train_sample import _qwen3_timestamps

TOK = tiny_qwen_tokenizer(QWEN35_SPECIAL)


def conversation(rng: random.Random, max_turns: int = 4):
    """(messages, images, videos, video_kwargs): maybe a system prompt, 1-4 user/assistant rounds
    (now and then two user turns in a row), reasoning_content on some replies, media in any turn."""
    messages, images, videos = [], [], []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": text(rng) or "Be brief."})
    for _ in range(rng.randint(1, max_turns)):
        for role in ("user", "assistant"):
            if role == "assistant" and rng.random() < 0.1:
                continue
            if rng.random() < 0.4:
                message = {"role": role, "content": text(rng)}
            else:
                items = []
                for _ in range(rng.randint(1, 3)):
                    kind = rng.choice(["text", "text", "image", "video"])
                    if kind == "image":
                        images.append(image(rng))
                        items.append({"type": "image", "image": "in-memory"})
                    elif kind == "video":
                        videos.append(video(rng, "qwen3_vl"))  # (frames, metadata with frame indices)
                        items.append({"type": "video", "video": "in-memory"})
                    else:
                        items.append({"type": "text", "text": text(rng)})
                message = {"role": role, "content": items}
            if role == "assistant" and rng.random() < 0.6:
                message["reasoning_content"] = rng.choice(["", text(rng), "let me think: assistant <|im_end|>"])
            messages.append(message)
    if messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant", "content": text(rng), "reasoning_content": text(rng, tricky=False)})
    return messages, images or None, videos or None, {"do_sample_frames": False}


def _render(messages, sample, timestamps):
    """The Qwen3.5 template as its Jinja source reads, written independently of vlutils:
    every message's content stripped; no default system prompt; an assistant turn after the
    last user query is ``<think>\\n{reasoning.strip()}\\n</think>\\n\\n{content}``, earlier ones
    the content only. Returns the full text and, per assistant turn, (text through its
    ``<|im_start|>assistant\\n``, text through its ``<|im_end|>``), and how many thinking blocks."""
    grids = {k: [] if sample[f"{k}_grid_thw"] is None else sample[f"{k}_grid_thw"].tolist() for k in ("image", "video")}
    counters = {"image": 0, "video": 0}

    def block(kind):
        i = counters[kind]
        counters[kind] += 1
        t, h, w = grids[kind][i]
        if kind == "image":
            return "<|vision_start|>" + "<|image_pad|>" * (t * h * w // 4) + "<|vision_end|>"
        frame = "<|vision_start|>" + "<|video_pad|>" * (h * w // 4) + "<|vision_end|>"
        return "".join(f"<{timestamps[i][k]:.1f} seconds>" + frame for k in range(t))

    def content(message):
        c = message["content"]
        rendered = c if isinstance(c, str) else "".join(
            item["text"] if item["type"] == "text" else block(item["type"]) for item in c)
        return rendered.strip()

    last_query = max(m for m, message in enumerate(messages) if message["role"] == "user")
    out, replies, thinking = "", [], 0
    for m, message in enumerate(messages):
        out += f"<|im_start|>{message['role']}\n"
        before = out
        body = content(message)
        if message["role"] == "assistant" and m > last_query:
            body = f"<think>\n{message.get('reasoning_content', '').strip()}\n</think>\n\n{body}"
            thinking += 1
        out += body + "<|im_end|>"
        if message["role"] == "assistant":
            replies.append((before, out))
        out += "\n"
    return out, replies, thinking


def _expected_labels(full_ids, replies):
    """Ids of the tokens from the end of each reply's header through its <|im_end|> (a first
    token merged with the header's newline counts as the reply's), found by tokenizing prefixes."""
    expected = [-100] * len(full_ids)
    for before, through in replies:
        before_ids, through_ids = TOK.encode(before).ids, TOK.encode(through).ids
        assert full_ids[: len(through_ids)] == through_ids  # <|im_end|> ends on a token boundary
        start = 0
        while start < len(before_ids) and before_ids[start] == full_ids[start]:
            start += 1
        for i in range(start, len(through_ids)):
            expected[i] = full_ids[i]
    return expected


@pytest.mark.parametrize("model_type", ["qwen3_5", "qwen3_5_moe"])
def test_random_conversations_ids_positions_and_labels(model_type):
    rng = random.Random(f"labels35-{model_type}")
    seen = {"thinking": 0, "dropped_reasoning": 0, "media_in_reply": 0}
    for case in range(20):
        messages, images, videos, kwargs = conversation(rng)
        train_on = "last" if case % 5 == 4 else "all"
        sample = build_sample(messages, TOK, model_type, images=images, videos=videos, video_kwargs=kwargs,
                              train_on=train_on, sample_id=case)
        ref = build_inputs(messages, TOK, model_type, images=images, videos=videos, video_kwargs=kwargs,
                           add_generation_prompt=False)
        assert torch.equal(sample["input_ids"], ref["input_ids"][0])
        assert torch.equal(sample["position_ids"], ref["position_ids"][:, 0])
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            assert (sample[key] is None and ref[key] is None) or torch.equal(sample[key], ref[key]), key

        full, replies, thinking = _render(messages, sample, _qwen3_timestamps(videos))
        full_ids = TOK.encode(full).ids
        assert full_ids == sample["input_ids"].tolist(), case  # the restated template is faithful
        if train_on == "last":
            replies = replies[-1:]
        assert sample["labels"].tolist() == _expected_labels(full_ids, replies), (case, messages)
        seen["thinking"] += thinking
        last_query = max(m for m, x in enumerate(messages) if x["role"] == "user")
        seen["dropped_reasoning"] += any(x.get("reasoning_content") for x in messages[:last_query])
        seen["media_in_reply"] += any(x["role"] == "assistant" and not isinstance(x["content"], str)
                                      and any(i["type"] != "text" for i in x["content"]) for x in messages)
    assert all(v > 0 for v in seen.values()), seen  # every rendering rule was exercised


def test_system_prompt_option_and_labels_on_the_thinking_block():
    messages = [{"role": "user", "content": "Is the assistant here?"},
                {"role": "assistant", "content": "Yes.", "reasoning_content": "old thought"},
                {"role": "user", "content": "And now?"},
                {"role": "assistant", "content": "Still <|im_start|>assistant", "reasoning_content": "new"}]
    sample = build_sample(messages, TOK, "qwen3_5", system_prompt="Sys")
    ref = build_inputs(messages, TOK, "qwen3_5", system_prompt="Sys", add_generation_prompt=False)
    assert torch.equal(sample["input_ids"], ref["input_ids"][0])
    labeled = [i for i, l in zip(sample["input_ids"].tolist(), sample["labels"].tolist()) if l != -100]
    assert TOK.decode(labeled, skip_special_tokens=False) == (
        "Yes.<|im_end|><think>\nnew\n</think>\n\nStill <|im_start|>assistant<|im_end|>")
    last = build_sample(messages, TOK, "qwen3_5", train_on="last")
    labeled = [i for i, l in zip(last["input_ids"].tolist(), last["labels"].tolist()) if l != -100]
    assert TOK.decode(labeled, skip_special_tokens=False).startswith("<think>\nnew")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Qwen3.5 (3 DeltaNet layers + 1 full attention) written by transformers 5.23."""
    from test_vlmodel_qwen35 import MODELS

    from _qwen3_cases import IDS

    work = tmp_path_factory.mktemp("train_qwen35")
    spec = next(m for m in MODELS if m["name"] == "q35-base-sharded")
    model = dict(spec, seed=3, dir=str(work / "ckpt"), inputs=[], top=dict(spec["top"], **IDS))
    torch.save({"models": [model], "inputs": {}}, work / "cases.pt")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "reference_model_runner.py"), str(work / "cases.pt"),
                           str(work / "out.pt")], env=reference_env("tf523"), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"transformers 5.23 failed:\n{proc.stderr[-4000:]}"
    return work / "ckpt"


def test_packed_row_trains_in_vlmodel(checkpoint):
    tok = tiny_qwen_tokenizer(TOKENS)  # special tokens inside the checkpoint's 512-token vocabulary
    rng = random.Random("packed35")
    samples = []
    while len(samples) < 3 or not any(s["pixel_values"] is not None for s in samples):
        messages, images, videos, kwargs = conversation(rng, max_turns=2)
        samples = samples[-2:] + [build_sample(messages, tok, "qwen3_5", images=images, videos=videos,
                                               video_kwargs=kwargs, pad_token_id=TOKENS["<|endoftext|>"])]
    model = vlmodel.from_pretrained(checkpoint, dtype=torch.float32)
    with torch.no_grad():
        packed = model(**collate(samples))
        alone = [model(**collate([s])) for s in samples]
    assert torch.isfinite(packed.loss)
    ref = torch.cat([o.logits for o in alone], dim=1)
    assert (packed.logits - ref).abs().max() <= 1e-4 * ref.abs().max()
    counts = [int((s["labels"][1:] != -100).sum()) for s in samples]
    expected = sum(o.loss * n for o, n in zip(alone, counts)) / sum(counts)
    assert abs(packed.loss.item() - expected.item()) <= 1e-5 * abs(expected.item())
