"""Random training conversations (with in-memory media) for the vlutils.train tests and bench.

Text is drawn from pieces that stress label boundaries: the word "assistant" in user text,
replies holding special-looking text ("<|im_start|>assistant", "<|im_end|>"), replies that
start or end with whitespace or newlines (which BPE merges with the turn header's newline).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

WORDS = ["the", "assistant", "user", "cat", " dog", "seconds", "Picture 1:", "é", "漢字", "🙂", "42", ".", "?"]
TRICKY = ["<|im_start|>assistant\n", "<|im_end|>", "<|im_start|>", "\n", "\n\n", " ", "  ", "\t", "assistant\n",
          "<|endoftext|>", "user\n"]
FACTOR_LCM = 224  # a multiple of 28 (Qwen2-VL / 2.5-VL) and 32 (Qwen3-VL)


def text(rng: random.Random, tricky: bool = True) -> str:
    n = rng.randint(0, 8)
    out = "".join(rng.choice(WORDS) + rng.choice(["", " ", "\n"]) for _ in range(n))
    if tricky and rng.random() < 0.5:
        at = rng.choice(["start", "end", "middle"])
        piece = rng.choice(TRICKY)
        out = piece + out if at == "start" else out + piece if at == "end" else out[: len(out) // 2] + piece + out[len(out) // 2:]
    return out


def image(rng: random.Random) -> Image.Image:
    h, w = FACTOR_LCM * rng.randint(1, 2), FACTOR_LCM * rng.randint(1, 2)
    pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def video(rng: random.Random, model_type: str):
    """A (T, 3, H, W) float video; for Qwen3-VL a (frames, metadata) pair."""
    n = rng.choice([2, 4, 6])
    frames = torch.from_numpy(
        np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (n, 3, FACTOR_LCM, FACTOR_LCM), dtype=np.uint8)
    ).float()
    if model_type != "qwen3_vl":
        return frames
    step = rng.randint(1, 15)
    return frames, {"fps": 30.0, "frames_indices": list(range(0, n * step, step)), "total_num_frames": n * step,
                    "video_backend": "test"}


def conversation(rng: random.Random, model_type: str, media: bool = True, max_turns: int = 4):
    """(messages, images, videos, video_kwargs): 1-4 turns, maybe a system prompt, media in any turn."""
    messages, images, videos, fps = [], [], [], []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": text(rng, tricky=False) or "Be brief."})
    for _ in range(rng.randint(1, max_turns)):
        for role in ("user", "assistant"):
            if role == "assistant" and rng.random() < 0.1 and len(messages) > 1:
                continue  # two user turns in a row now and then
            if rng.random() < 0.4:
                lead = rng.choice(["\n\n", " \n", "\n\n\n", "  "]) if role == "assistant" and rng.random() < 0.3 else ""
                messages.append({"role": role, "content": lead + text(rng)})
                continue
            items = []
            for _ in range(rng.randint(1, 3)):
                kind = rng.choice(["text", "text", "image", "video"]) if media else "text"
                if kind == "image" and (role == "user" or rng.random() < 0.3):
                    images.append(image(rng))
                    items.append({"type": "image", "image": "in-memory"})
                elif kind == "video" and (role == "user" or rng.random() < 0.3):
                    videos.append(video(rng, model_type))
                    fps.append(rng.choice([1.0, 2.0, 4.0]))
                    items.append({"type": "video", "video": "in-memory"})
                else:
                    items.append({"type": "text", "text": text(rng)})
            messages.append({"role": role, "content": items})
    if messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant", "content": text(rng)})
    return messages, images or None, videos or None, {"fps": fps, "do_sample_frames": False}
