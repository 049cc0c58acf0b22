"""Qwen3.5 and Qwen3.5-MoE: vlmodel against transformers 5.23 on checkpoints it wrote itself.

transformers builds tiny random models (several hybrid ``layer_types`` patterns and
unusual sizes, partial rotary 0.25 and 0.5, tied and untied heads, sharded and not, MoE
with a shared expert), writes them with ``save_pretrained`` and records float32 logits and
greedy tokens, in one subprocess (``tests/reference_model_runner.py``, shared with the
Qwen3-VL tests, as are the inputs of ``_qwen3_cases``: images, several images, videos with
one timestamped block per temporal patch, a left-padded batch) plus a prompt longer than
the 64-token DeltaNet chunk.  vlmodel loads the files and must give logits within 1e-4 of
the largest logit (real tokens) and the same greedy tokens with its KV cache + recurrent
state.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest
import torch

import vlmodel
from _qwen3_cases import IDS, MEDIA, VOCAB, _image, _inputs, assert_close, inputs, media
from _refs import ROOT, reference_env

RUNNER = ROOT / "tests" / "reference_model_runner.py"


def _text(pattern, hidden, heads, kv, head_dim, partial, section, linear, **extra):
    """``pattern``: one letter per layer, L = linear_attention (gated DeltaNet), F = full_attention.
    ``partial=None``: no rope_parameters at all (transformers' defaults: 0.25, no mrope_section)."""
    rope = {} if partial is None else {"rope_parameters": {
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial, "mrope_section": section,
        "mrope_interleaved": True}}
    return dict(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=len(pattern), num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=head_dim, rms_norm_eps=1e-6,
        layer_types=["linear_attention" if c == "L" else "full_attention" for c in pattern], **rope,
        linear_num_key_heads=linear[0], linear_num_value_heads=linear[1], linear_key_head_dim=linear[2],
        linear_value_head_dim=linear[3], linear_conv_kernel_dim=linear[4], **extra,
    )


def _vision(depth, width, heads, out, table):
    return dict(depth=depth, hidden_size=width, intermediate_size=2 * width, num_heads=heads, out_hidden_size=out,
                patch_size=16, num_position_embeddings=table)


MODELS = [
    # the released pattern (3 DeltaNet + 1 full), partial rotary 0.25, two value heads per key head
    dict(name="q35-base-sharded", family="qwen3_5", shard="200KB", tie=False, top={"tie_word_embeddings": False},
         text=_text("LLLF", 64, 4, 2, 32, 0.25, [2, 1, 1], (2, 4, 8, 16, 4), intermediate_size=96),
         vision=_vision(2, 32, 2, 64, 64)),
    # odd sizes: full attention first, conv kernel 3, one key head for three value heads, tied head,
    # transformers' default rope parameters (partial 0.25 of head_dim 40, mrope_section left out)
    dict(name="q35-odd-tied", family="qwen3_5", shard=None, tie=True, top={"tie_word_embeddings": True},
         text=_text("FLFLL", 48, 3, 1, 40, None, None, (1, 3, 12, 8, 3), intermediate_size=80),
         vision=_vision(1, 24, 3, 48, 36)),
    # MoE with a shared expert in every layer
    dict(name="q35-moe", family="qwen3_5_moe", shard=None, tie=False, top={"tie_word_embeddings": False},
         text=_text("LFLF", 64, 4, 2, 16, 0.5, [2, 1, 1], (2, 2, 8, 8, 4), num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=32, shared_expert_intermediate_size=48),
         vision=_vision(2, 32, 2, 64, 64)),
]
NAMES = [m["name"] for m in MODELS]


@functools.lru_cache(maxsize=None)
def _cases() -> dict:
    # greedy decoding (the costly part) on the padded image+video batch and the long prompt only
    cases = {key: dict(inp, greedy=16 if key == "batch" else 0) for key, inp in inputs().items()}
    rng = np.random.default_rng(1)
    words = "The quick brown fox jumps over the lazy dog. A cat sits on the mat. " * 7
    cases["long"] = _inputs([[{"role": "user", "content": [{"type": "image", "image": "x"},
                                                          {"type": "text", "text": words}]}]],
                            images=[_image(rng, 64, 64)], greedy=16)
    assert cases["long"]["input_ids"].shape[1] > 128  # into a third 64-token chunk
    return cases


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("qwen35_ref")
    cases = _cases()
    models = [dict(spec, seed=i + 11, dir=str(work / spec["name"]), inputs=list(cases),
                   top=dict(spec["top"], **IDS)) for i, spec in enumerate(MODELS)]
    torch.save({"models": models, "inputs": cases}, work / "cases.pt")
    proc = subprocess.run([sys.executable, str(RUNNER), str(work / "cases.pt"), str(work / "out.pt")],
                          env=reference_env("tf523"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"transformers 5.23 reference failed:\n{proc.stderr[-4000:]}"
    out = torch.load(work / "out.pt", weights_only=False)
    assert out["version"] == "5.23.0"
    return cases, out["results"], {m["name"]: m["dir"] for m in models}


@functools.lru_cache(maxsize=None)
def _load(path: str, dtype: torch.dtype = torch.float32):
    return vlmodel.from_pretrained(path, dtype=dtype)


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(reference, name):
    cases, results, dirs = reference
    model = _load(dirs[name])
    spec = next(m for m in MODELS if m["name"] == name)
    assert model.config.text.layer_types == spec["text"]["layer_types"]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == spec["tie"]
    for key, inp in cases.items():
        with torch.no_grad():
            got = model(inp["input_ids"], attention_mask=inp["attention_mask"], **media(inp)).logits
        assert got.shape == results[name][key]["logits"].shape, key
        assert_close(got, results[name][key]["logits"], inp["attention_mask"])


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_match_transformers(reference, name):
    cases, results, dirs = reference
    model = _load(dirs[name])
    checked = 0
    for key, inp in cases.items():
        if not inp.get("greedy"):
            continue
        got = model.generate(inp["input_ids"], attention_mask=inp["attention_mask"], max_new_tokens=inp["greedy"],
                             stop_token_ids=[], **media(inp))
        assert got.shape[1] >= 16 and got.tolist() == results[name][key]["tokens"].tolist(), key
        checked += 1
    assert checked == 2


def test_prefill_equals_step_by_step_decoding(reference):
    """The hybrid cache (KV + conv/recurrent states): N one-token steps give the prefill's logits.

    In float64, where the chunked and the recurrent delta rule agree to rounding (in float32
    these random weights make the chunked triangular solve lose ~1e-4, transformers' too)."""
    _, _, dirs = reference
    model = _load(dirs["q35-base-sharded"], torch.float64)
    ids = torch.randint(10, 400, (2, 70), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 70)
        first = model(ids[:, :1], cache=cache)
        steps = [first.logits] + [model(ids[:, i : i + 1], cache=cache, rope_deltas=first.rope_deltas).logits
                                  for i in range(1, 70)]
    assert_close(torch.cat(steps, dim=1), full, rel=1e-10)


@pytest.mark.parametrize("name", ["q35-base-sharded", "q35-moe"])
def test_packed_rows_equal_samples_alone_with_gradients(reference, name):
    """Packed training rows: the DeltaNet conv and state restart at each sample; logits, loss and
    gradients equal each sample run alone."""
    cases, _, dirs = reference
    model = vlmodel.from_pretrained(dirs[name], dtype=torch.float32)
    samples = [cases["image"], cases["video"], cases["text"]]
    ids = torch.cat([s["input_ids"] for s in samples], dim=1)
    lengths = torch.tensor([s["input_ids"].shape[1] for s in samples])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).int()
    joined = {k: torch.cat([s[k] for s in samples if k in s]) for k in MEDIA}
    packed = model(ids, cu_seqlens=cu, labels=ids, **joined)
    weight = model.model.layers[0].linear_attn.in_proj_qkv.weight
    grad_packed = torch.autograd.grad(packed.loss, weight)[0]
    alone = [model(s["input_ids"], labels=s["input_ids"], **media(s)) for s in samples]
    assert_close(packed.logits.detach(), torch.cat([a.logits.detach() for a in alone], dim=1))
    counts = lengths - 1
    expected = sum(a.loss * n for a, n in zip(alone, counts)) / counts.sum()
    assert abs(packed.loss.item() - expected.item()) <= 1e-5 * expected.item()
    grad_alone = torch.autograd.grad(expected, weight)[0]
    assert_close(grad_packed, grad_alone, rel=1e-4)


def test_config_defaults_follow_transformers():
    """What a Qwen3.5 config.json may leave out: mrope_section ([11, 11, 10]), partial rotary (0.25),
    layer_types (every full_attention_interval-th layer is full attention)."""
    from vlmodel.config import ModelConfig

    raw = {"model_type": "qwen3_5", "vision_config": _vision(1, 16, 2, 32, 16),
           "text_config": {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 6,
                           "head_dim": 16, "full_attention_interval": 3, "rope_parameters": {"rope_theta": 1e4}}}
    text = ModelConfig.from_dict(raw).text
    assert text.mrope_section == [11, 11, 10] and text.partial_rotary_factor == 0.25 and text.rotary_dim == 4
    assert text.layer_types == ["linear_attention", "linear_attention", "full_attention"] * 2
    assert text.norm_zero_centered and text.attn_output_gate and text.mrope_interleaved


def test_multi_token_prediction_weights_are_skipped(reference, tmp_path):
    """Released Qwen3.5 files also hold an ``mtp.*`` head that the model does not use (transformers
    skips it too); any other unknown tensor is still an error."""
    import shutil

    from safetensors.torch import load_file, save_file

    _, _, dirs = reference
    for extra, ok in (("mtp.layers.0.mlp.down_proj.weight", True), ("model.extra.weight", False)):
        path = tmp_path / extra
        shutil.copytree(dirs["q35-odd-tied"], path)
        state = load_file(path / "model.safetensors")
        save_file({**state, extra: torch.zeros(2, 2)}, path / "model.safetensors", metadata={"format": "pt"})
        if ok:
            assert vlmodel.from_pretrained(path).config.model_type == "qwen3_5"
        else:
            with pytest.raises(vlmodel.CheckpointError, match="model.extra.weight"):
                vlmodel.from_pretrained(path)


def test_cli_builds_qwen35_prompts_and_answers(reference, tmp_path, capsys):
    """python -m vlmodel on a Qwen3.5 checkpoint: Qwen3.5's chat template (no system prompt, an open
    thinking block), patch-16 image tokens, a streamed greedy answer."""
    import re
    import shutil

    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers

    import vlmodel.__main__
    from vlmodel.__main__ import messages_for, model_inputs

    _, _, dirs = reference
    path = tmp_path / "ckpt"
    shutil.copytree(dirs["q35-odd-tied"], path)
    specials = {"<|image_pad|>": IDS["image_token_id"], "<|video_pad|>": IDS["video_token_id"],
                "<|vision_start|>": IDS["vision_start_token_id"], "<|vision_end|>": IDS["vision_end_token_id"],
                "<|im_start|>": 401, "<|im_end|>": 402, "[UNK]": 403}
    words = {"user\n": 300, "assistant\n<think>\n": 301}
    vocab = {f"w{i}": i for i in range(VOCAB) if i not in {*specials.values(), *words.values()}} | words | specials
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.add_special_tokens(list(specials))
    tok.save(str(path / "tokenizer.json"))
    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(img)
    config = vlmodel.ModelConfig.from_file(path)
    ids = model_inputs(messages_for([str(img)], [], "Describe this image"), tok, config)["input_ids"][0].tolist()
    assert ids[:2] == [401, 300] and ids.count(401) == 2  # no system turn
    assert ids.count(IDS["image_token_id"]) == 6 and ids[-2:] == [401, 301]  # 64x96 -> 4x6 patches; open thinking
    assert vlmodel.__main__.main(["--model", str(path), "--image", str(img), "--prompt", "Describe this image",
                                  "--max-new-tokens", "4"]) == 0
    assert re.search(r"visual tokens: 6\)", capsys.readouterr().err)
