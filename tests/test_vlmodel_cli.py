"""python -m vlmodel: patches equal transformers' processors; the CLI answers and reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import vlmodel
from vlmodel.__main__ import build_prompt, patchify

from _tiny_checkpoints import END, IMAGE, START, VIDEO, hf_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_patchify_matches_transformers_image_processor():
    from transformers import Qwen2VLImageProcessor

    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, (84, 140, 3), dtype=np.uint8)  # already a multiple of 28: no resize
    ref = Qwen2VLImageProcessor()(images=[Image.fromarray(pic)], return_tensors="pt")
    got, grid = patchify(torch.from_numpy(pic).permute(2, 0, 1)[None], 14, 2, 2)
    assert grid == ref["image_grid_thw"][0].tolist()
    assert torch.allclose(got, ref["pixel_values"], atol=1e-5)


def test_patchify_matches_transformers_video_processor():
    from transformers import Qwen2VLVideoProcessor

    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (6, 3, 56, 84), generator=g, dtype=torch.uint8)
    ref = Qwen2VLVideoProcessor()(videos=[video], return_tensors="pt", do_resize=False, do_sample_frames=False)
    got, grid = patchify(video.float(), 14, 2, 2)
    assert grid == ref["video_grid_thw"][0].tolist()
    assert torch.allclose(got, ref["pixel_values_videos"], atol=1e-5)


def _tokenizer(path):
    """A word-level tokenizer.json whose special tokens sit at the tiny checkpoint's ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(486)}
    for i, word in enumerate(["system", "user", "assistant", "You", "are", "a", "helpful", ".", "\n",
                              "Describe", "this", "image", "video", "what"]):
        vocab[word] = 486 + i
    specials = {"<|image_pad|>": IMAGE, "<|video_pad|>": VIDEO, "<|vision_start|>": START,
                "<|vision_end|>": END, "<|im_start|>": 504, "<|im_end|>": 505, "[UNK]": 506}
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(list(specials))
    tok.save(str(path / "tokenizer.json"))
    return tok


def test_build_prompt_template(tmp_path):
    tok = _tokenizer(tmp_path)
    cfg = hf_model("qwen2_vl").config
    hf_model("qwen2_vl").save_pretrained(tmp_path)
    config = vlmodel.ModelConfig.from_file(tmp_path)
    ids = build_prompt(tok, config, [("image", 3), ("video", 2)], "what")
    assert ids.count(IMAGE) == 3 and ids.count(VIDEO) == 2
    i = ids.index(START)
    assert ids[i: i + 5] == [START, IMAGE, IMAGE, IMAGE, END]
    tail = [504] + tok.encode("assistant\n", add_special_tokens=False).ids
    assert ids[0] == 504 and ids[-len(tail):] == tail
    assert cfg.image_token_id == config.image_token_id


def test_cli_answers_and_reports(tmp_path):
    hf_model("qwen2_5_vl", seed=3).save_pretrained(tmp_path)
    _tokenizer(tmp_path)
    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(img)
    out = subprocess.run(
        [sys.executable, "-m", "vlmodel", "--model", str(tmp_path), "--image", str(img),
         "--prompt", "Describe this image", "--max-new-tokens", "6"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = re.search(r"prompt tokens: (\d+) \(visual tokens: (\d+)\).*?(\d+) new tokens, ([\d.]+|nan) tokens/s",
                       out.stderr)
    assert report, out.stderr
    # 120x200 -> smart_resize to 112x196 -> 8x14 patches -> 4x7 = 28 merged tokens
    assert int(report.group(2)) == 28
    assert int(report.group(3)) <= 6 and out.stdout.strip()
