"""Reference outputs of the original Qwen-VL-Chat input code, for tests/test_qwen_vl_*.py.

The original code is not part of this project and cannot be downloaded by CI; this script runs
it from a local folder and stores only its outputs in ``fixtures/qwen_vl_inputs/``::

    # 1. the reference code: the Qwen-VL-Chat remote code, as vendored at
    #    github.com/x1ngzai/Qwen-VL-Chat-Int4 @ 1cd721a27dd000fc4cf688c6ad58e614da1d600d
    #    (tokenization_qwen.py, qwen_generation_utils.py, visual.py), and Qwen-VL's finetune.py
    #    from github.com/QwenLM/Qwen-VL @ aa00ed04091eea5fcdd32985e7915f1c53e7d599
    # 2. its environment: transformers 4.32.0 (the version its requirements.txt pins) + tiktoken
    #    + matplotlib (imported by tokenization_qwen.py), torch/torchvision from the venv:
    .venv/bin/pip install --target .refs/qwenvl_inputs_ref --no-deps transformers==4.32.0 \\
        tokenizers==0.13.3 matplotlib==3.9.2 contourpy==1.3.0 cycler==0.12.1 fonttools==4.54.1 \\
        kiwisolver==1.4.7 pyparsing==3.1.4 python-dateutil==2.9.0.post0 six==1.16.0
    #    e.g. from clones of both repositories:
    #    git -C Qwen-VL-Chat-Int4 show 1cd721a2:tokenization_qwen.py > DIR/tokenization_qwen.py  (same for
    #    qwen_generation_utils.py and visual.py); git -C Qwen-VL show aa00ed04:finetune.py > finetune.py
    # 3. run (the files are copied to a temporary folder and edited there, see EDITS):
    PYTHONPATH=$PWD .venv/bin/python scripts/make_qwen_vl_input_fixtures.py \\
        --reference DIR_WITH_THE_THREE_FILES --finetune PATH/TO/finetune.py

What is stored (all generated here from fixed seeds):

* ``tiny.tiktoken``: a small byte-level BPE vocabulary in the qwen.tiktoken format (256 byte
  tokens + merges learned on a generated corpus); the special tokens follow it exactly as in the
  real vocabulary. The real ``qwen.tiktoken`` is not redistributed.
* ``images/``: generated image files (PNG/JPEG/WebP/GIF/BMP; RGB, RGBA, L, LA, P, CMYK, I;16).
* ``cases.json``: the generated inputs;
* ``reference.json.gz``: the reference tokenizer's ids (encode, decode, errors), ``from_list_format``
  strings, ``make_context`` prompts and ids, ``finetune.py`` ``preprocess`` ids and labels,
  grounding boxes (``_fetch_all_box_with_ref``, ``_fetch_latest_picture`` and the pixel boxes
  ``draw_bbox_on_latest_picture`` draws), and per image the original transform's tensor hash.
* ``tensors.npz``: the original transform's tensors in full for the small image sizes.
* ``PROVENANCE.json``: where the code came from, file hashes, versions and the edits.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "qwen_vl_inputs"
REF_ENV = ROOT / ".refs" / "qwenvl_inputs_ref"
SOURCES = {
    "remote_code": {
        "repository": "https://github.com/x1ngzai/Qwen-VL-Chat-Int4",
        "commit": "1cd721a27dd000fc4cf688c6ad58e614da1d600d",
        "what": "a vendored copy of the Qwen-VL-Chat(-Int4) Hugging Face folder (Oct 2023); its "
                "modeling_qwen.py, qwen_generation_utils.py and visual.py equal the Qwen-VL-Chat copy in "
                "github.com/Robot-MA/QWen-VL-MA (Qwen-VL-Chat/, commit 3452c31e) up to line endings",
        "files": ["tokenization_qwen.py", "qwen_generation_utils.py", "visual.py"],
    },
    "finetune": {
        "repository": "https://github.com/QwenLM/Qwen-VL",
        "commit": "aa00ed04091eea5fcdd32985e7915f1c53e7d599",
        "files": ["finetune.py"],
    },
}
# Edits applied to the temporary copy (never to the project): why each was needed.
EDITS = [
    {
        "file": "tokenization_qwen.py",
        "old": "text += f'Picture {num_images}:'",
        "new": "text += f'Picture {num_images}: '",
        "why": "the current Qwen/Qwen-VL-Chat revision writes 'Picture N: <img>' with a space (as the issue and "
               "Qwen-VL's README/finetune data do); this Oct 2023 copy predates that change",
    },
]
FINETUNE_NOTE = ("finetune.py imports deepspeed, peft and accelerate at module level; only its preprocess() "
                 "function is taken (by its source text, with IGNORE_TOKEN_ID = -100, LabelSmoother.ignore_index) "
                 "and run with tokenizer.pad_token_id = tokenizer.eod_id, as finetune.py's train() sets it")
IMAGE_SIZES = (28, 56, 112, 448)
FULL_TENSOR_MAX_SIZE = 56  # tensors up to this size are stored whole, bigger ones by hash

log = logging.getLogger("make_qwen_vl_input_fixtures")

# --- generated text ---------------------------------------------------------------------

WORDS = ["Hello", "hello", " world", "the", " dog", " playing", " on", " beach", "What's", " this", "?", "!",
         "It's", " they're", " we'll", " I'd", "caption", " grounding", "Generate", " English", "box", "image",
         "12345", "2023", "3.14", " 0.5", "(", ")", ",", "...", "--", "\t", "  ", "   ", "\n", "\n\n", "\r\n",
         " \n", "\n ", "你好", "世界", "图中的狗是什么品种", "击掌", "框出图中击掌的位置", "こんにちは", "안녕하세요",
         "Привет", "مرحبا", "🐶", "👍🏽", "e\u0301", "\u212b", "A\u030a", "ﬁ", "ß", "Ünïcödé", "\u00a0",
         "https://", "example.com/", "a/b_c-d.png", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL",
         "x=1;", "{\"k\": [1, 2]}", "<", ">", "</", "<|", "|>", "<im", "img>", "<imgx>"]
SPECIAL_TEXT = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|extra_0|>", "<|extra_204|>", "<ref>", "</ref>",
                "<box>", "</box>", "<quad>", "</quad>", "<imgpad>"]
REFS = ["fixtures/qwen_vl_inputs/images/rgb_0.png", "https://qianwen-res.oss-cn-beijing.aliyuncs.com/Qwen-VL/"
        "assets/demo.jpeg", "/tmp/图片/狗.jpg", "C:\\images\\a b.png", "file:///data/x.webp", "", "a" * 200,
        "é" * 128, "e\u0301.png", "img with spaces.png", "s3://bucket/key.png"]


def random_text(rng: random.Random, specials: bool, images: bool, pieces: int | None = None) -> str:
    out = []
    for _ in range(pieces if pieces is not None else rng.randint(0, 12)):
        roll = rng.random()
        if specials and roll < 0.12:
            out.append(rng.choice(SPECIAL_TEXT))
        elif images and roll < 0.2:
            out.append(f"<img>{rng.choice(REFS)}</img>")
        elif specials and roll < 0.26:
            out.append("<box>(%d,%d),(%d,%d)</box>" % tuple(rng.randint(0, 999) for _ in range(4)))
        else:
            out.append(rng.choice(WORDS))
    return "".join(out)


def train_tiny_vocabulary(merges: int = 700) -> dict[bytes, int]:
    """Byte-level BPE: 256 byte tokens (rank = byte value), then merges learned greedily on a
    generated corpus, each merge the most frequent adjacent pair (ties: smallest bytes)."""
    import regex

    from vlutils.tiktoken_qwen import PAT_STR

    rng = random.Random(7)
    corpus = "".join(random_text(rng, specials=False, images=False, pieces=30) for _ in range(400))
    corpus += " ".join(WORDS * 20) + "".join(SPECIAL_TEXT) * 5 + "Picture 1: \n" * 50 + "".join(REFS) * 5
    words = collections.Counter(tuple(bytes([b]) for b in m.encode("utf-8")) for m in regex.findall(PAT_STR, corpus))
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs: collections.Counter = collections.Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        candidates = [(count, pair) for pair, count in pairs.items() if pair[0] + pair[1] not in ranks]
        if not candidates:
            break
        best = max(count for count, _ in candidates)
        pair = min(p for count, p in candidates if count == best)
        token = pair[0] + pair[1]
        ranks[token] = len(ranks)
        merged = collections.Counter()
        for word, count in words.items():
            new, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
                    new.append(token)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            merged[tuple(new)] += count
        words = merged
    return ranks


# --- generated images -------------------------------------------------------------------


def make_images(folder: Path) -> list[dict]:
    """Small generated image files of many modes and formats; returns their descriptions."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20)
    specs = [  # (name, mode, width, height, format)
        ("rgb_0", "RGB", 64, 48, "PNG"), ("rgb_1", "RGB", 1, 1, "PNG"), ("rgb_2", "RGB", 3, 97, "PNG"),
        ("rgb_3", "RGB", 448, 448, "PNG"), ("rgb_4", "RGB", 450, 130, "JPEG"), ("rgb_5", "RGB", 111, 113, "JPEG"),
        ("rgb_6", "RGB", 900, 20, "PNG"), ("rgb_7", "RGB", 28, 28, "BMP"), ("rgb_8", "RGB", 200, 300, "WEBP"),
        ("rgba_0", "RGBA", 50, 70, "PNG"), ("rgba_1", "RGBA", 300, 40, "PNG"), ("l_0", "L", 80, 60, "PNG"),
        ("l_1", "L", 33, 500, "JPEG"), ("la_0", "LA", 45, 45, "PNG"), ("p_0", "P", 120, 90, "GIF"),
        ("p_1", "P", 64, 64, "PNG"), ("cmyk_0", "CMYK", 60, 40, "JPEG"), ("i16_0", "I;16", 40, 30, "PNG"),
        ("rgb_9", "RGB", 1000, 750, "JPEG"), ("rgb_10", "RGB", 224, 448, "PNG"),
    ]
    described = []
    for name, mode, width, height, fmt in specs:
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
        noise = rng.integers(0, 64 if width * height < 50_000 else 6, size=(height, width, 3))  # keep files small
        rgb = ((base + noise) % 256).astype(np.uint8)
        image = Image.fromarray(rgb, "RGB")
        if mode == "RGBA" or mode == "LA":
            alpha = Image.fromarray(rng.integers(0, 256, size=(height, width), dtype=np.uint8), "L")
            image = image.convert(mode[:-1])
            image.putalpha(alpha)
        elif mode == "P":
            image = image.quantize(colors=32)
        elif mode == "I;16":
            image = Image.fromarray(rgb[..., 0].astype("<u2") * 257)
        elif mode != "RGB":
            image = image.convert(mode)
        suffix = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "GIF": "gif"}[fmt]
        path = folder / f"{name}.{suffix}"
        image.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        described.append({"file": path.name, "mode": mode, "size": [width, height]})
    return described


# --- cases ------------------------------------------------------------------------------


def make_cases(image_files: list[dict]) -> dict:
    rng = random.Random(11)
    encode = [{"text": random_text(rng, specials=True, images=True)} for _ in range(260)]
    encode += [{"text": w} for w in WORDS + SPECIAL_TEXT]
    encode += [{"text": f"<img>{r}</img>"} for r in REFS]
    for case in encode:
        case["allowed"] = "all" if rng.random() < 0.5 else "image_st"
    errors = [{"text": t, "allowed": a} for a in ("all", "image_st") for t in (
        "<img>abc", "x <img>a</img><img>b", "<img>" + "a" * 257 + "</img>", "<img>" + "é" * 129 + "</img>",
        "<img><ref>x</ref></img>")]
    list_formats = [random_list(rng) for _ in range(80)]
    contexts = []
    for i in range(90):
        history = []
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 4])):
            query = from_list_spec(rng) if rng.random() < 0.5 else random_text(rng, specials=True, images=True)
            response = None if rng.random() < 0.1 else random_answer(rng)
            history.append([query, response])
        system = rng.choice(["You are a helpful assistant.", "", "You are a helpful assistant.",
                             random_text(rng, specials=True, images=False)])
        window = 6144 if rng.random() < 0.6 else rng.randint(20, 1200)
        query = from_list_spec(rng) if rng.random() < 0.6 else random_text(rng, specials=True, images=True)
        contexts.append({"query": query, "history": history, "system": system, "max_window_size": window})
    finetune = []
    for _ in range(50):
        turns = []
        for t in range(rng.randint(1, 4)):
            turns.append({"from": "user", "value": from_list_spec(rng) if rng.random() < 0.5 else
                          random_text(rng, specials=True, images=True)})
            turns.append({"from": "assistant", "value": random_answer(rng)})
        finetune.append(turns)
    grounding = []
    for _ in range(40):
        response = random_answer(rng, boxes=True)
        image = rng.choice(image_files)
        history = [[f"Picture 1: <img>images/{image['file']}</img>\nBox the dog", "ok"]] if rng.random() < 0.7 else []
        grounding.append({"response": response, "history": history, "size": image["size"]})
    images = [{"file": img["file"], "image_size": IMAGE_SIZES[i % len(IMAGE_SIZES)]} for i, img in
              enumerate(image_files)]
    images += [{"file": img["file"], "image_size": 448} for img in image_files[:3]]
    return {"encode": encode, "errors": errors, "list_formats": list_formats, "contexts": contexts,
            "finetune": finetune, "grounding": grounding, "images": images}


def random_list(rng: random.Random) -> list[dict]:
    items = []
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.3:
            items.append({"image": rng.choice(REFS)})
        elif roll < 0.7:
            items.append({"text": random_text(rng, specials=False, images=False)})
        else:
            boxes = [[rng.choice([rng.randint(0, 999), round(rng.uniform(0, 999), 2)]) for _ in range(4)]
                     for _ in range(rng.randint(1, 3))]
            item = {"box": boxes}
            if rng.random() < 0.7:
                item["ref"] = rng.choice(["dog", "击掌", " Woman", "the red car", ""])
            items.append(item)
    return items


def from_list_spec(rng: random.Random) -> dict:
    return {"list": random_list(rng)}


def random_answer(rng: random.Random, boxes: bool = False) -> str:
    text = random_text(rng, specials=False, images=False, pieces=rng.randint(0, 5))
    if boxes or rng.random() < 0.4:
        for _ in range(rng.randint(1 if boxes else 0, 3)):
            if rng.random() < 0.7:
                text += f"<ref>{rng.choice(['dog', '击掌', ' Woman', 'car 2'])}</ref>"
            for _ in range(rng.randint(1, 2)):
                text += "<box>(%d,%d),(%d,%d)</box>" % tuple(rng.randint(0, 999) for _ in range(4))
            text += random_text(rng, specials=False, images=False, pieces=rng.randint(0, 2))
    return text


# --- the reference side (runs in the reference environment) -------------------------------


def run_reference(out: Path) -> None:
    """Import the original modules (from PYTHONPATH) and compute every case's outputs."""
    import ast

    import numpy as np
    import torch
    import torchvision
    import transformers
    from PIL import Image

    import qwen_generation_utils
    import tiktoken
    import tokenization_qwen
    import visual

    cases = json.loads((out / "cases.json").read_text())
    tokenizer = tokenization_qwen.QWenTokenizer(str(out / "tiny.tiktoken"))
    image_st = set(tokenizer.IMAGE_ST)

    def query_text(query):
        return tokenizer.from_list_format(query["list"]) if isinstance(query, dict) else query

    results: dict = {"versions": {"transformers": transformers.__version__, "tiktoken": tiktoken.__version__,
                                  "torch": torch.__version__, "torchvision": torchvision.__version__,
                                  "pillow": Image.__version__, "python": sys.version.split()[0]}}
    encoded = []
    for case in cases["encode"]:
        allowed = "all" if case["allowed"] == "all" else image_st
        ids = tokenizer.encode(case["text"], allowed_special=allowed)
        entry = {"ids": ids}
        try:
            entry["decoded"] = tokenizer.decode(ids)
            entry["decoded_skip"] = tokenizer.decode(ids, skip_special_tokens=True)
        except ValueError as exc:  # a 256-byte reference has no pad to stop at
            entry["decode_error"] = str(exc)
        encoded.append(entry)
    results["encode"] = encoded
    errors = []
    for case in cases["errors"]:
        allowed = "all" if case["allowed"] == "all" else image_st
        try:
            tokenizer.encode(case["text"], allowed_special=allowed)
            errors.append({"raises": None})
        except (ValueError, TypeError) as exc:
            errors.append({"raises": type(exc).__name__})
    results["errors"] = errors
    results["list_formats"] = [tokenizer.from_list_format(items) for items in cases["list_formats"]]
    contexts = []
    for case in cases["contexts"]:
        history = [(query_text(q), r) for q, r in case["history"]]
        raw, ids = qwen_generation_utils.make_context(
            tokenizer, query_text(case["query"]), history=history, system=case["system"],
            max_window_size=case["max_window_size"], chat_format="chatml")
        contexts.append({"history": history, "query": query_text(case["query"]), "raw_text": raw, "ids": ids})
    results["contexts"] = contexts

    preprocess = _finetune_preprocess(Path(os.environ["QWEN_VL_FINETUNE"]), ast)
    tokenizer.pad_token_id = tokenizer.eod_id
    finetune = []
    for turns in cases["finetune"]:
        source = [{"from": t["from"], "value": query_text(t["value"])} for t in turns]
        data = preprocess([source], tokenizer, 8192)
        ids, labels = data["input_ids"][0].tolist(), data["labels"][0].tolist()
        while ids and ids[-1] == tokenizer.pad_token_id and labels[-1] == -100:
            ids.pop()
            labels.pop()
        finetune.append({"conversation": source, "input_ids": ids, "labels": labels})
    results["finetune"] = finetune

    grounding = []
    for case in cases["grounding"]:
        boxes = tokenizer._fetch_all_box_with_ref(case["response"])
        width, height = case["size"]
        pixels = [[int(b["box"][0] / 1000 * width), int(b["box"][1] / 1000 * height),
                   int(b["box"][2] / 1000 * width), int(b["box"][3] / 1000 * height)] for b in boxes]
        latest = tokenizer._fetch_latest_picture(case["response"], [tuple(h) for h in case["history"]])
        grounding.append({"boxes": [{"box": list(b["box"]), **({"ref": b["ref"]} if "ref" in b else {})}
                                    for b in boxes], "pixel_boxes": pixels, "latest_picture": latest})
    results["grounding"] = grounding

    vit = {size: visual.VisionTransformer(image_size=size, patch_size=14, width=32, layers=1, heads=2, mlp_ratio=2.0,
                                          n_queries=256, output_dim=128) for size in sorted({c["image_size"] for c in
                                                                                           cases["images"]})}
    hashes, full = [], {}
    for i, case in enumerate(cases["images"]):
        image = Image.open(out / "images" / case["file"]).convert("RGB")  # VisionTransformer.encode's loading
        tensor = vit[case["image_size"]].image_transform(image)
        array = tensor.numpy().astype("<f4")
        hashes.append({"shape": list(array.shape), "sha256": hashlib.sha256(array.tobytes()).hexdigest()})
        if case["image_size"] <= FULL_TENSOR_MAX_SIZE:
            full[f"image_{i}"] = array
    results["images"] = hashes
    np.savez_compressed(out / "tensors.npz", **full)
    data = json.dumps(results, ensure_ascii=False).encode("utf-8")
    with open(out / "reference.json.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(data)  # mtime=0: the same outputs give the same bytes


def _finetune_preprocess(path: Path, ast):
    """finetune.py's preprocess() alone (the module imports deepspeed/peft/accelerate)."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "preprocess")
    namespace = {"IGNORE_TOKEN_ID": -100}
    exec("import torch\nimport transformers\nfrom typing import Dict\n" + ast.get_source_segment(path.read_text(), node),
         namespace)
    return namespace["preprocess"]


# --- driver -----------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="folder with the original tokenization_qwen.py, "
                                            "qwen_generation_utils.py and visual.py")
    parser.add_argument("--finetune", help="Qwen-VL's finetune.py")
    parser.add_argument("--ref-env", default=str(REF_ENV), help="pip --target folder with transformers 4.32.0")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--run-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    if args.run_reference:
        run_reference(out)
        return
    if not args.reference or not args.finetune:
        parser.error("--reference and --finetune are required")
    from vlutils.tiktoken_qwen import write_tiktoken_ranks

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ranks = train_tiny_vocabulary()
    write_tiktoken_ranks(ranks, out / "tiny.tiktoken")
    log.info("tiny vocabulary: %d ranks", len(ranks))
    image_files = make_images(out / "images")
    (out / "cases.json").write_text(json.dumps(make_cases(image_files), ensure_ascii=False, indent=0))

    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(args.reference)
        files = {}
        for name in SOURCES["remote_code"]["files"]:
            files[name] = sha256(reference / name)
            shutil.copy(reference / name, Path(tmp) / name)
        for edit in EDITS:
            target = Path(tmp) / edit["file"]
            text = target.read_text()
            if text.count(edit["old"]) != 1:
                raise SystemExit(f"edit not applicable to {edit['file']}: {edit['old']!r}")
            target.write_text(text.replace(edit["old"], edit["new"]))
        files["finetune.py"] = sha256(Path(args.finetune))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.ref_env, tmp]), QWEN_VL_FINETUNE=args.finetune,
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        subprocess.run([sys.executable, __file__, "--run-reference", "--out", str(out)], env=env, check=True,
                       cwd=tmp, timeout=1800)
    with gzip.open(out / "reference.json.gz", "rt", encoding="utf-8") as handle:
        versions = json.load(handle)["versions"]
    provenance = {"sources": SOURCES, "sha256": files, "edits": EDITS, "finetune_note": FINETUNE_NOTE,
                  "versions": versions, "script": "scripts/make_qwen_vl_input_fixtures.py"}
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("wrote %s (%.2f MB)", out, total / 1e6)


if __name__ == "__main__":
    main()
