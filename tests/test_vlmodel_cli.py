"""python -m vlmodel: inputs through vlutils.build_inputs; the CLI streams the same answer as
model.generate and reports token counts and speed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

import vlmodel
from vlmodel.__main__ import messages_for, model_inputs, stop_ids

from _tiny_checkpoints import END, IMAGE, START, VIDEO, hf_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_model_inputs_put_the_images_in_the_chat_template(tmp_path):
    hf_model("qwen2_vl").save_pretrained(tmp_path)
    tok = _tokenizer(tmp_path)
    config = vlmodel.ModelConfig.from_file(tmp_path)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((56, 84, 3), dtype=np.uint8)).save(img)
    inputs = model_inputs(messages_for([str(img), str(img)], [], "what"), tok, config)
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(IMAGE) == 2 * 6 and inputs["image_grid_thw"].tolist() == [[1, 4, 6]] * 2
    i = ids.index(START)
    assert ids[i: i + 8] == [START] + [IMAGE] * 6 + [END]
    assert ids[0] == 504 and inputs["position_ids"].shape == (3, 1, len(ids))


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
    # the streamed answer is the greedy answer of the same inputs
    model = vlmodel.from_pretrained(tmp_path)
    tok = _tokenizer(tmp_path)
    inputs = model_inputs(messages_for([str(img)], [], "Describe this image"), tok, model.config)
    stops = stop_ids(str(tmp_path), model.config)
    new = model.generate(inputs.pop("input_ids"), max_new_tokens=6, stop_token_ids=stops, pad_token_id=-1, **{
        k: inputs[k] for k in ("attention_mask", "pixel_values", "image_grid_thw", "position_ids", "rope_deltas")})
    answer = [t for t in new[0].tolist() if t != -1 and t not in stops]
    assert int(report.group(3)) == len(answer)
    assert out.stdout.strip() == tok.decode(answer, skip_special_tokens=True).strip()
