"""Qwen3-VL and Qwen3-VL-MoE: vlmodel reproduces transformers 5.23 (and 4.57.6).

transformers 5.23 runs once per session in a subprocess (tests/reference_model_runner.py):
it builds every tiny variant of ``_qwen3_cases.MODELS``, ``save_pretrained``s it (sharded
or not, tied or not) and records float32 logits and 16 greedy tokens (KV cache) for every
input.  Here vlmodel loads those files and must give logits within 1e-4 of the largest
logit (real tokens only) and the same tokens.  Positions: transformers computes its own
(from ``mm_token_type_ids``), vlmodel asks ``vlutils.get_rope_index``.
"""

from __future__ import annotations

import functools
import json
import sys

import pytest
import torch

import vlmodel
from _qwen3_cases import IDS, MEDIA, MODELS, assert_close, inputs, media
from _refs import ROOT, reference_env

RUNNER = ROOT / "tests" / "reference_model_runner.py"


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """(inputs, results, checkpoint dirs) from one transformers 5.23 run over every variant."""
    import subprocess

    work = tmp_path_factory.mktemp("qwen3_ref")
    cases = inputs()
    models = []
    for spec in MODELS:
        spec = dict(spec, seed=len(models) + 3, dir=str(work / spec["name"]), inputs=list(cases))
        spec["top"] = dict(spec["top"], **IDS)
        models.append(spec)
    torch.save({"models": models, "inputs": cases}, work / "cases.pt")
    proc = subprocess.run([sys.executable, str(RUNNER), str(work / "cases.pt"), str(work / "out.pt")],
                          env=reference_env("tf523"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"transformers 5.23 reference failed:\n{proc.stderr[-4000:]}")
    out = torch.load(work / "out.pt", weights_only=False)
    assert out["version"] == "5.23.0"
    return cases, out["results"], {m["name"]: m["dir"] for m in models}


@functools.lru_cache(maxsize=None)
def _load(path: str):
    return vlmodel.from_pretrained(path, dtype=torch.float32)


NAMES = [m["name"] for m in MODELS]
INPUTS = ["text", "image", "images", "video", "videos", "batch"]


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers_5(reference, name):
    cases, results, dirs = reference
    model = _load(dirs[name])
    assert model.config.model_type == next(m["family"] for m in MODELS if m["name"] == name)
    for key in INPUTS:
        inp = cases[key]
        with torch.no_grad():
            got = model(inp["input_ids"], attention_mask=inp["attention_mask"], **media(inp)).logits
        assert_close(got, results[name][key]["logits"], inp["attention_mask"])


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_match_transformers_5(reference, name):
    cases, results, dirs = reference
    model = _load(dirs[name])
    for key in INPUTS:
        inp = cases[key]
        if not inp.get("greedy"):
            continue
        got = model.generate(inp["input_ids"], attention_mask=inp["attention_mask"], max_new_tokens=inp["greedy"],
                             stop_token_ids=[], **media(inp))
        assert got.tolist() == results[name][key]["tokens"].tolist(), key


@pytest.mark.parametrize("name", NAMES)
def test_loss_and_gradients_match_transformers_5(reference, name):
    """Training: the same loss and the same gradients (vision tower, DeepStack, q/k norm, experts, head)."""
    from vlmodel.weights import canonical_name

    cases, results, dirs = reference
    model = vlmodel.from_pretrained(dirs[name], dtype=torch.float32).train()
    inp, ref = cases["train"], results[name]["train"]
    loss = model(inp["input_ids"], attention_mask=inp["attention_mask"], labels=inp["labels"], **media(inp)).loss
    assert abs(loss.item() - ref["loss"].item()) <= 1e-4 * abs(ref["loss"].item())
    loss.backward()
    params = dict(model.named_parameters())
    assert len(ref["grads"]) >= 7
    for hf_name, theirs in ref["grads"].items():
        mine = params[canonical_name(hf_name, model.config.model_type)].grad
        assert mine is not None and theirs.abs().max() > 0, hf_name
        assert (mine - theirs).abs().max() <= 1e-3 * theirs.abs().max(), hf_name


def test_files_cover_sharded_and_tied_layouts(reference):
    _, _, dirs = reference
    for spec in MODELS:
        files = {p.name for p in (ROOT / dirs[spec["name"]]).iterdir()}
        assert ("model.safetensors.index.json" in files) == bool(spec["shard"]), files
        model = _load(dirs[spec["name"]])
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == spec["tie"]
        if spec["shard"]:
            index = json.loads((ROOT / dirs[spec["name"]] / "model.safetensors.index.json").read_text())
            assert len(set(index["weight_map"].values())) > 1
            if spec["tie"]:
                assert "lm_head.weight" not in index["weight_map"]


def test_moe_layout_follows_sparse_step_and_mlp_only_layers(reference):
    _, _, dirs = reference
    for spec in MODELS:
        if spec["family"] != "qwen3_vl_moe":
            continue
        t = spec["text"]
        model = _load(dirs[spec["name"]])
        for i, layer in enumerate(model.model.layers):
            sparse = i not in t["mlp_only_layers"] and (i + 1) % t["decoder_sparse_step"] == 0
            assert isinstance(layer.mlp, vlmodel.moe.SparseMoE) == sparse
            if sparse:
                assert layer.mlp.experts.gate_up_proj.shape == (t["num_experts"], 2 * t["moe_intermediate_size"],
                                                                t["hidden_size"])


def test_packed_rows_with_deepstack_equal_samples_alone(reference):
    """Qwen3-VL packed training rows: DeepStack and per-sample positions stay inside each sample."""
    cases, _, dirs = reference
    model = _load(dirs["vl-base"])
    samples = [cases["image"], cases["video"], cases["text"]]
    ids = torch.cat([s["input_ids"] for s in samples], dim=1)
    lengths = torch.tensor([s["input_ids"].shape[1] for s in samples])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).int()
    joined = {k: torch.cat([s[k] for s in samples if k in s]) for k in MEDIA}
    with torch.no_grad():
        packed = model(ids, cu_seqlens=cu, labels=ids, **joined)
        alone = [model(s["input_ids"], labels=s["input_ids"], **media(s)) for s in samples]
    assert_close(packed.logits, torch.cat([a.logits for a in alone], dim=1))
    counts = lengths - 1
    expected = sum(a.loss * n for a, n in zip(alone, counts)) / counts.sum()
    assert abs(packed.loss.item() - expected.item()) <= 1e-5 * expected.item()


def test_moe_block_equals_a_per_token_computation():
    """Router (softmax, top-k, renormalise) and experts against a plain loop over tokens."""
    from vlmodel.config import TextConfig
    from vlmodel.moe import SparseMoE

    cfg = TextConfig(vocab_size=8, hidden_size=12, intermediate_size=0, num_layers=1, num_heads=1, num_kv_heads=1,
                     head_dim=12, rms_norm_eps=1e-6, rope_theta=1e4, mrope_section=[2, 2, 2], num_experts=5,
                     num_experts_per_tok=2, moe_intermediate_size=7, shared_expert_intermediate_size=9)
    torch.manual_seed(0)
    moe = SparseMoE(cfg)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 9, 12)
    got = moe(x)
    flat = x.reshape(-1, 12)
    want = []
    for token in flat:
        probs = torch.softmax(moe.gate.weight @ token, dim=-1)
        top = probs.topk(2)
        y = torch.zeros(12)
        for w, e in zip(top.values / top.values.sum(), top.indices):
            gate, up = (moe.experts.gate_up_proj[e] @ token).chunk(2)
            y += w * (moe.experts.down_proj[e] @ (torch.nn.functional.silu(gate) * up))
        shared = moe.shared_expert.down_proj.weight @ (torch.nn.functional.silu(moe.shared_expert.gate_proj.weight @ token)
                                                       * (moe.shared_expert.up_proj.weight @ token))
        want.append(y + torch.sigmoid(moe.shared_expert_gate.weight @ token) * shared)
    assert torch.allclose(got.reshape(-1, 12), torch.stack(want), atol=1e-5, rtol=1e-4)
    # two tokens x top-2 <= 5 experts: the gathered (decoding) path
    few = moe(x[:, :1])
    assert torch.allclose(few.reshape(-1, 12), torch.stack(want).view(2, 9, 12)[:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_logits_match_transformers_4_57(family, tmp_path):
    """The venv's transformers 4.57.6 (in-process): its save_pretrained layout (MoE experts
    stored transposed, (E, D, 2I)) loads and gives the same logits."""
    import transformers

    spec = next(m for m in MODELS if m["family"] == family)
    text = dict(spec["text"])
    rope = text.pop("rope_parameters")
    text.update(rope_theta=rope["rope_theta"], rope_scaling={"rope_type": "default", "mrope_section":
                                                             rope["mrope_section"], "mrope_interleaved": True})
    cls = {"qwen3_vl": "Qwen3VL", "qwen3_vl_moe": "Qwen3VLMoe"}[family]
    config = getattr(transformers, cls + "Config")(text_config=text, vision_config=spec["vision"], **IDS)
    torch.manual_seed(5)
    hf = getattr(transformers, cls + "ForConditionalGeneration")._from_config(config, attn_implementation="sdpa")
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.2 * torch.randn_like(p)) if p.ndim == 1 else p.copy_(0.2 * torch.randn_like(p))
    hf.eval().save_pretrained(tmp_path)
    ours = vlmodel.from_pretrained(tmp_path, dtype=torch.float32)
    for key in ("image", "video", "batch"):
        inp = inputs_cached()[key]
        kw = dict(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"], **media(inp))
        with torch.no_grad():
            ref = hf(**kw).logits
            got = ours(**kw).logits
        assert_close(got, ref, inp["attention_mask"])


@functools.lru_cache(maxsize=None)
def inputs_cached():
    return inputs()


def test_cli_answers_with_a_qwen3_moe_checkpoint(reference, tmp_path):
    """python -m vlmodel on a transformers-5.23 Qwen3-VL-MoE checkpoint: Qwen3 inputs (patch 16),
    and the streamed answer is model.generate's."""
    import re
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from _qwen3_cases import TOKENS
    from vlmodel.__main__ import messages_for, model_inputs, stop_ids

    _, _, dirs = reference
    shutil.copytree(dirs["moe-step2-tied"], tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt"
    vocab = {f"w{i}": i for i in range(380)}
    for i, word in enumerate(["user", "assistant", "Describe", "this", "image", "\n"]):
        vocab[word] = 380 + i
    vocab.update({k: v for k, v in TOKENS.items()})
    vocab["[UNK]"] = 420
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(TOKENS))
    tok.save(str(ckpt / "tokenizer.json"))
    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(img)
    out = subprocess.run([sys.executable, "-m", "vlmodel", "--model", str(ckpt), "--image", str(img),
                          "--prompt", "Describe this image", "--max-new-tokens", "5"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    report = re.search(r"visual tokens: (\d+)\).*?(\d+) new tokens.*qwen3_vl_moe", out.stderr)
    assert report, out.stderr
    assert int(report.group(1)) == (128 // 32) * (192 // 32)  # 120x200 -> 128x192 at factor 32
    model = _load(str(ckpt))
    inputs = model_inputs(messages_for([str(img)], [], "Describe this image"), tok, model.config)
    stops = stop_ids(str(ckpt), model.config)
    new = model.generate(inputs.pop("input_ids"), max_new_tokens=5, stop_token_ids=stops, pad_token_id=-1,
                         **{k: inputs[k] for k in ("attention_mask", "pixel_values", "image_grid_thw")})
    answer = [t for t in new[0].tolist() if t != -1 and t not in stops]
    assert int(report.group(2)) == len(answer)
    assert out.stdout.strip() == tok.decode(answer, skip_special_tokens=True).strip()
