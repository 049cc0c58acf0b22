"""Generate fixtures/qwen_vl/: a tiny random Qwen-VL checkpoint and the ORIGINAL remote code's outputs on it.

The reference is the remote code published with the Qwen/Qwen-VL-Chat checkpoints
(``modeling_qwen.py``, ``visual.py``, ``qwen_generation_utils.py``, ``tokenization_qwen.py``,
``configuration_qwen.py``).  It cannot be installed from PyPI and needs an old transformers,
so it is NOT part of the project and does not run in CI: this script runs it once, from a
folder given on the command line, and stores what it computed.  The tests compare vlmodel
with the stored outputs (tests/test_vlmodel_qwen_vl.py).

Where the reference came from (recorded again in fixtures/qwen_vl/SOURCE.json):

* repository ``github.com/x1ngzai/Qwen-VL-Chat-Int4`` (a copy of the Hugging Face
  ``Qwen/Qwen-VL-Chat-Int4`` folder; its fp32/fp16 code paths are the Qwen-VL-Chat ones),
  commit ``1cd721a27dd000fc4cf688c6ad58e614da1d600d``; sha256 of each file below;
* transformers 4.32.0 (what its config.json and requirements.txt name), tokenizers 0.13.3,
  huggingface_hub 0.16.4, einops, transformers_stream_generator 0.0.4, matplotlib, in a
  ``pip install --target`` folder; torch/numpy/tiktoken/Pillow/torchvision from the venv;
* edits: none (the five files import unmodified under torch 2.14); the prompts' "Picture N: <img>"
  spacing follows the current Qwen/Qwen-VL-Chat revision (see :func:`list_format`).

Run it (the reference environment is the target folder first on PYTHONPATH):

    git -C <mirror of x1ngzai/Qwen-VL-Chat-Int4> archive HEAD | tar -x -C /tmp/ref/qwen_vl_chat
    bash scripts/install_qwen_vl_ref.sh      # .refs/qwenvl_ref
    PYTHONPATH=.refs/qwenvl_ref .venv/bin/python scripts/make_qwen_vl_fixtures.py /tmp/ref/qwen_vl_chat

What it writes (all float32, a few MB):

* ``checkpoint/``: config.json in the original layout, ``save_pretrained`` safetensors
  shards with the original names (``transformer.h.N.attn.c_attn.weight``,
  ``transformer.visual.*``), generation_config.json, a tiny ``qwen.tiktoken`` (256 byte
  tokens + BPE merges learned from a few sentences; the special tokens are the original's);
* ``images/``: small generated PNGs the prompts refer to (paths relative to this folder);
* ``reference.safetensors`` + ``reference.json``: per case the prompt ids, the original
  transform's pixel values, the Resampler's image embeddings, logits at sampled positions,
  the greedy tokens, and chat() results; per variant the config overrides
  (dynamic NTK / log-n with a short ``seq_length``).
"""

from __future__ import annotations

import argparse
import base64
import collections
import gzip
import hashlib
import importlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("make_qwen_vl_fixtures")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "qwen_vl"
SOURCE_REPO = "github.com/x1ngzai/Qwen-VL-Chat-Int4"
SOURCE_COMMIT = "1cd721a27dd000fc4cf688c6ad58e614da1d600d"
FILES = ("modeling_qwen.py", "visual.py", "qwen_generation_utils.py", "tokenization_qwen.py", "configuration_qwen.py")

CORPUS = (
    "What is in the picture? Describe the image in detail. There is a red box and a blue circle "
    "on the table. Where is the dog? The dog is next to the tree. Generate the caption in English "
    "with grounding. Picture 1: Picture 2: Compare the two pictures. What color is the car? "
    "The answer is yes. A man is riding a horse on the beach at sunset."
)
N_MERGES = 120
# Decoder: hidden 128 (the Resampler has hidden // 128 heads), 2 heads of 64, 2 layers.
TEXT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, kv_channels=64, intermediate_size=192,
            max_position_embeddings=8192, seq_length=2048, rotary_emb_base=10000, rotary_pct=1.0,
            layer_norm_epsilon=1e-6, no_bias=True, use_dynamic_ntk=False, use_logn_attn=False)
# ViT: 56 x 56 images, patch 14 -> a 4 x 4 grid, so the 16 x 16 position tables are interpolated as in 448 x 448.
VISUAL = dict(heads=4, image_size=56, layers=2, mlp_ratio=2.5, output_dim=128, patch_size=14, width=64)
# Variants: the same weights under different config flags.  "long": dynamic NTK + log-n with a
# seq_length shorter than the prompts, so both change the outputs (prefill and decode).
VARIANTS = {"base": {}, "long": {"use_dynamic_ntk": True, "use_logn_attn": True, "seq_length": 128}}
SAMPLED_POSITIONS = 48  # logits stored at this many random positions + the last 8 of each prompt
GREEDY_TOKENS = 8


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def learn_tiktoken(corpus: str, merges: int) -> dict[bytes, int]:
    """Byte tokens (rank = byte value, as Qwen's image-path encoding requires) + greedy BPE merges."""
    import regex

    pat = importlib.import_module("qwen_vl_chat.tokenization_qwen").PAT_STR
    words = [[bytes([b]) for b in w.encode()] for w in regex.findall(pat, corpus)]
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs = collections.Counter((a, b) for w in words for a, b in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        merged = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged.append(out)
        words = merged
    return ranks


def write_tiktoken(ranks: dict[bytes, int], path: Path) -> None:
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda x: x[1])))


def make_images(folder: Path, seed: int) -> list[str]:
    """Small PNGs with structure (gradients, shapes, noise), odd sizes so the resize matters."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i, (w, h) in enumerate([(71, 53), (40, 90), (56, 56)]):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
        img = Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        draw.ellipse([w // 5, h // 4, w // 2, h // 2 + 5], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        name = f"images/img{i}.png"
        img.save(folder / name)
        names.append(name)
    return names


def list_format(tok, items: list[dict]) -> str:
    """``tok.from_list_format`` with the current Qwen/Qwen-VL-Chat revision's "Picture N: <img>" (this
    Oct 2023 copy writes "Picture N:<img>", without the space; the issue, Qwen-VL's README and vlutils use
    the space).  Only the prompt text changes; the model code is the same in both revisions."""
    import re

    return re.sub(r"Picture (\d+):<img>", r"Picture \1: <img>", tok.from_list_format(items))


def near_length_query(tok, gen_utils, system: str, target: int) -> str:
    """A text query whose chat prompt is ``target`` tokens or a little less."""
    words = CORPUS.split()
    query = ""
    for i in range(10_000):
        longer = (query + " " + words[i % len(words)]).strip()
        if len(gen_utils.make_context(tok, longer, history=[], system=system)[1]) > target:
            return query
        query = longer
    raise AssertionError("unreachable")


def perturb(model, seed: int) -> None:
    """Random biases and norm weights too (the original initialises them to 0 / 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed"):
                continue  # fixed 2-D sin-cos table
            if name.endswith("bias") or "ln" in name.split(".")[-2]:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(2.0)  # larger weights: less uniform logits, clearer greedy choices


# --sweep: architectures the stored checkpoint leaves at one setting, each checked live (reference and
# vlmodel in this process; vlmodel does not import transformers).  Overrides of TEXT / VISUAL.
SWEEP = {
    "kv_proj_identity": ({}, {"width": 128}),
    "biases": ({"no_bias": False}, {}),
    "rotary_pct_0.5": ({"rotary_pct": 0.5}, {}),
    "grid_16_no_interpolation": ({}, {"image_size": 224}),
    "grid_6_8_vit_heads": ({"num_attention_heads": 4, "kv_channels": 32}, {"image_size": 84, "heads": 8}),
    "hidden_256_2_resampler_heads": ({"hidden_size": 256, "kv_channels": 128, "intermediate_size": 256},
                                     {"output_dim": 256}),
}


def sweep(modeling, configuration, tok, image: str, seed: int) -> list[str]:
    """Original vs vlmodel on each SWEEP architecture (1 layer, NTK + log-n active): logits and greedy tokens."""
    import tempfile

    import torch
    from PIL import Image
    from transformers import GenerationConfig

    import vlmodel

    query = list_format(tok, [{"image": image}, {"text": "and"}, {"image": image}, {"text": "Which?"}])
    ids = torch.tensor([importlib.import_module("qwen_vl_chat.qwen_generation_utils").make_context(tok, query)[1]])
    rows = []
    for name, (text, visual) in SWEEP.items():
        torch.manual_seed(seed)
        config = configuration.QWenConfig(
            vocab_size=(len(tok) + 63) // 64 * 64, fp32=True, use_flash_attn=False,
            visual={**VISUAL, "layers": 1, **visual, "image_start_id": tok.img_start_id},
            **{**TEXT, "num_hidden_layers": 1, "use_dynamic_ntk": True, "use_logn_attn": True, "seq_length": 64, **text})
        model = modeling.QWenLMHeadModel(config).float().eval()
        perturb(model, seed)
        model.generation_config.eos_token_id = None
        with tempfile.TemporaryDirectory() as folder, torch.no_grad():
            model.save_pretrained(folder, safe_serialization=True)
            ref = model(ids).logits
            ref_tokens = model.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=tok.eod_id,
                                        generation_config=GenerationConfig(chat_format="chatml"))[0, ids.shape[1]:]
            ours = vlmodel.from_pretrained(folder)
            pixels = model.transformer.visual.image_transform(Image.open(image).convert("RGB"))[None].repeat(2, 1, 1, 1)
            got = ours(ids, pixel_values=pixels).logits
            tokens = ours.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=GREEDY_TOKENS, stop_token_ids=[])[0]
        rel = ((got - ref).abs().max() / ref.abs().max()).item()
        same = tokens.tolist() == ref_tokens.tolist()
        rows.append(f"{name:32} {ids.shape[1]} tokens  max |diff| / max |logit| = {rel:.1e}  greedy identical: {same}")
        if rel > 1e-4 or not same:
            raise SystemExit("sweep failed:\n" + "\n".join(rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="folder holding the five remote-code files (+ tokenizer_config.json)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--sweep", action="store_true",
                        help="only check vlmodel live against the reference on SWEEP architectures (writes nothing)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    ref = args.reference.resolve()
    missing = [f for f in FILES if not (ref / f).exists()]
    if missing:
        raise SystemExit(f"{ref}: missing {missing}")
    # import the folder as a package (its files use relative imports), unmodified
    pkg_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "qwen_vl_ref_pkg"
    shutil.rmtree(pkg_dir, ignore_errors=True)
    (pkg_dir / "qwen_vl_chat").mkdir(parents=True)
    for f in FILES:
        shutil.copy(ref / f, pkg_dir / "qwen_vl_chat" / f)
    (pkg_dir / "qwen_vl_chat" / "__init__.py").write_text("")
    sys.path.insert(0, str(pkg_dir))

    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    modeling = importlib.import_module("qwen_vl_chat.modeling_qwen")
    tokenization = importlib.import_module("qwen_vl_chat.tokenization_qwen")
    configuration = importlib.import_module("qwen_vl_chat.configuration_qwen")
    gen_utils = importlib.import_module("qwen_vl_chat.qwen_generation_utils")

    if args.sweep:
        sys.path.insert(0, str(ROOT))
        with tempfile.TemporaryDirectory() as folder:
            write_tiktoken(learn_tiktoken(CORPUS, N_MERGES), Path(folder) / "qwen.tiktoken")
            tok = tokenization.QWenTokenizer(str(Path(folder) / "qwen.tiktoken"))
            os.chdir(folder)
            make_images(Path(folder), args.seed)
            for row in sweep(modeling, configuration, tok, "images/img0.png", args.seed):
                log.info("%s", row)
        return

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    write_tiktoken(learn_tiktoken(CORPUS, N_MERGES), ckpt / "qwen.tiktoken")
    tok = tokenization.QWenTokenizer(str(ckpt / "qwen.tiktoken"))
    vocab = (len(tok) + 63) // 64 * 64
    log.info("tiny vocabulary: %d tokens (%d specials), vocab_size %d", len(tok), len(tok.special_tokens), vocab)

    config = configuration.QWenConfig(
        vocab_size=vocab, fp32=True, bf16=False, fp16=False, use_flash_attn=False,
        visual={**VISUAL, "image_start_id": tok.img_start_id}, **TEXT,
    )
    config.architectures = ["QWenLMHeadModel"]
    config.auto_map = {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}
    model = modeling.QWenLMHeadModel(config).float().eval()
    perturb(model, args.seed)
    model.save_pretrained(ckpt, safe_serialization=True, max_shard_size="400KB")
    GenerationConfig(chat_format="chatml", eos_token_id=tok.eod_id, pad_token_id=tok.eod_id, max_window_size=6144,
                     max_new_tokens=512, do_sample=True, top_k=0, top_p=0.5).save_pretrained(ckpt)
    shards = sorted(p.name for p in ckpt.glob("*.safetensors"))
    log.info("checkpoint: %d shards", len(shards))

    names = make_images(out, args.seed)
    os.chdir(out)  # the model opens the <img> paths itself, relative to the fixture folder

    system = "You are a helpful assistant."
    cases = {
        "one_image": dict(query=list_format(tok, [{"image": names[0]}, {"text": "What is in the picture?"}]),
                          history=[]),
        "two_images": dict(
            query=list_format(tok, [{"image": names[2]}, {"text": "Compare with the first picture."}]),
            history=[(list_format(tok, [{"image": names[1]}, {"text": "Where is the dog?"}]),
                      "<ref>the dog</ref><box>(120,340),(560,900)</box>")]),
        "text_only": dict(query="Describe a red car on the beach.", history=[]),
        # prefill just under the "long" variant's seq_length (NTK alpha 1), decoding past it (log-n on)
        "near_seq_length": dict(query=near_length_query(tok, gen_utils, system, 124), history=[]),
    }

    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"variants": VARIANTS, "cases": {}, "images": names, "system": system}
    transform = model.transformer.visual.image_transform
    for i, name in enumerate(names):
        tensors[f"pixel_values.{i}"] = transform(Image.open(name).convert("RGB")).contiguous()
    with torch.no_grad():
        embeds = model.transformer.visual.encode(names)
    tensors["image_embeds"] = embeds.contiguous()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(args.seed)
    sampled: dict[str, list[int]] = {}
    for variant, overrides in VARIANTS.items():
        cfg = configuration.QWenConfig.from_pretrained(ckpt)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        ref_model = modeling.QWenLMHeadModel.from_pretrained(ckpt, config=cfg, torch_dtype=torch.float32).eval()
        missing = [k for k in state if not torch.equal(state[k], ref_model.state_dict()[k])]
        assert not missing, f"reloaded weights differ: {missing[:5]}"
        for case, spec in cases.items():
            raw_text, ids = gen_utils.make_context(tok, spec["query"], history=spec["history"], system=system,
                                                   max_window_size=6144, chat_format="chatml")
            input_ids = torch.tensor([ids])
            key = f"{case}.{variant}"
            with torch.no_grad():
                logits = ref_model(input_ids).logits[0]
            n = logits.shape[0]
            if case not in sampled:  # the same positions in every variant
                sampled[case] = sorted(set(rng.choice(n, size=min(SAMPLED_POSITIONS, n), replace=False).tolist())
                                       | set(range(max(0, n - 8), n)))
            positions = sampled[case]
            tensors[f"{key}.positions"] = torch.tensor(positions)
            tensors[f"{key}.logits"] = logits[positions].contiguous()
            # no stop token (transformers 4.32's greedy search falls back to the model's eos when the
            # call gives none): always GREEDY_TOKENS tokens, each the argmax of the logits
            ref_model.generation_config.eos_token_id = None
            with torch.no_grad():
                gen = ref_model.generate(input_ids, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                         pad_token_id=tok.eod_id, generation_config=GenerationConfig(chat_format="chatml"))
            tensors[f"{key}.greedy"] = gen[0, n:].contiguous()
            tensors[f"{key}.input_ids"] = input_ids[0]
            meta["cases"].setdefault(case, {"query": spec["query"], "history": spec["history"], "raw_text": raw_text,
                                            "length": n})
            log.info("%s: %d tokens, greedy %s", key, n, gen[0, n:].tolist())
        if variant == "base":  # training forward (dropout 0): the mean next-token loss with some labels ignored
            ids = tensors["two_images.base.input_ids"][None]
            labels = ids.clone()
            labels[:, :20] = -100
            ref_model.train()
            tensors["train.labels"] = labels[0]
            tensors["train.loss"] = ref_model(ids, labels=labels).loss.detach().reshape(1)
            ref_model.eval()
            log.info("train loss %.6f", tensors["train.loss"].item())
        ref_model.generation_config.eos_token_id = tok.eod_id
        # chat(): two turns, greedy, with the original's stop words and history handling
        gcfg = GenerationConfig(chat_format="chatml", eos_token_id=tok.eod_id, pad_token_id=tok.eod_id,
                                max_window_size=6144, max_new_tokens=GREEDY_TOKENS, do_sample=False)
        first = cases["one_image"]["query"]
        second = list_format(tok, [{"image": names[2]}, {"text": "And this one?"}])
        with torch.no_grad():
            r1, history = ref_model.chat(tok, first, history=None, generation_config=gcfg)
            r2, history = ref_model.chat(tok, second, history=history, generation_config=gcfg)
        meta.setdefault("chat", {})[variant] = {"queries": [first, second], "responses": [r1, r2],
                                                "history": [list(t) for t in history]}
        log.info("chat %s: %r / %r", variant, r1, r2)

    # the released Qwen-VL-Chat-Int4 layout (tensor names + config) for tests/test_vlmodel_qwen_vl.py
    if (ref / "model.safetensors.index.json").exists() and (ref / "config.json").exists():
        (out / "int4_index.json.gz").write_bytes(gzip.compress((ref / "model.safetensors.index.json").read_bytes(), 9, mtime=0))
        shutil.copy(ref / "config.json", out / "int4_config.json")

    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    source = {
        "repository": SOURCE_REPO, "commit": SOURCE_COMMIT,
        "files": {f: sha256(ref / f) for f in FILES},
        "transformers": transformers.__version__, "torch": torch.__version__,
        "tokenizers": importlib.import_module("tokenizers").__version__,
        "edits": "none: the five files are imported unmodified (copied into a package folder); prompts written "
                 "'Picture N: <img>' as the current Qwen-VL-Chat revision's from_list_format (this copy omits the space)",
        "generated_by": "scripts/make_qwen_vl_fixtures.py", "seed": args.seed,
    }
    (out / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("wrote %s (%.1f MB)", out, size / 2**20)


if __name__ == "__main__":
    main()
