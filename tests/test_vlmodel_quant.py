"""vlmodel loads GPTQ, AWQ and compressed-tensors checkpoints with packed weights.

Each case writes a tiny quantized checkpoint (random codes, scales, zero points packed as
the format stores them, see ``_quant_checkpoints``), checks that the format's own reference
code dequantizes it to the weights the codes define, then compares vlmodel on the packed
checkpoint with transformers (the venv's 4.57) on the float checkpoint holding those
dequantized weights: float32 logits on images, several images and a video within 1e-4 of
the largest logit, and 16 greedy tokens identical.  Also: resident bytes of the packed
layers, and clear errors for bad checkpoints.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlmodel
from vlmodel import ConfigError
from vlmodel.quant import QuantLinear, quantized_layers

from _quant_checkpoints import write_dequantized, write_quantized
from _tiny_checkpoints import hf_config, images, prompt, save_hub_layout, video_patches

STEPS = 16


def quant_hf_model(family: str, seed: int):
    """A tiny transformers model, 128 wide so that group sizes up to 128 fit a row."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    cfg = hf_config(family, init=0.12)
    text = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    for key, value in text.items():
        setattr(cfg.text_config, key, value)
    cfg.text_config.rope_scaling = {"type": "mrope", "mrope_section": [4, 6, 6], "rope_type": "default"}
    if family == "qwen2_vl":
        cfg.vision_config.hidden_size = 128
    else:
        cfg.vision_config.out_hidden_size = 128
    torch.manual_seed(seed)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    return cls._from_config(cfg, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def float_dirs(tmp_path_factory):
    """One float hub-layout checkpoint per family (their weights: everything but the quantized layers)."""
    dirs = {}
    for i, family in enumerate(("qwen2_vl", "qwen2_5_vl")):
        path = tmp_path_factory.mktemp(family)
        save_hub_layout(quant_hf_model(family, seed=10 + i), str(path))
        dirs[family] = path
    return dirs


def _grid(g):
    return tuple(int(x) for x in g)


def _inputs(family: str) -> dict:
    """One prompt with two images and a video (positions from transformers' get_rope_index)."""
    pv, grid = images([(112, 140), (84, 112)], seed=3)
    vv, vgrid = video_patches([(2, 4, 6)], seed=4)
    parts = [3, ("image", _grid(grid[0])), 4, ("video", (2, 4, 6)), 2, ("image", _grid(grid[1])), 5]
    inp = dict(input_ids=prompt(parts, seed=5), pixel_values=pv, image_grid_thw=grid,
               pixel_values_videos=vv, video_grid_thw=vgrid)
    if family == "qwen2_5_vl":
        inp["second_per_grid_ts"] = torch.tensor([1.0])
    return inp


def _positions(hf, inp):
    args = [inp["input_ids"], inp.get("image_grid_thw"), inp.get("video_grid_thw")]
    if hf.config.model_type == "qwen2_5_vl":
        args.append(inp.get("second_per_grid_ts"))
    return hf.model.get_rope_index(*args, None)


SLOW = pytest.mark.slow  # the fast selection keeps one case per format and bit width; -m slow runs every option


def case(name: str, family: str, fmt: str, options: dict, slow: bool = False):
    return pytest.param(name, family, fmt, options, id=name, marks=[SLOW] if slow else [])


CASES = [
    case("gptq4-g32-sym", "qwen2_vl", "gptq", dict(bits=4, group=32, sym=True)),
    case("gptq4-g128-actorder-asym", "qwen2_5_vl", "gptq", dict(bits=4, group=128, act_order=True)),
    case("gptq4-g64-actorder-sym", "qwen2_vl", "gptq", dict(bits=4, group=64, act_order=True, sym=True), slow=True),
    case("gptq4-rowwise-asym", "qwen2_5_vl", "gptq", dict(bits=4, group=-1), slow=True),
    case("gptq8-g32-asym", "qwen2_vl", "gptq", dict(bits=8, group=32)),
    case("gptq8-g128-actorder-sym", "qwen2_5_vl", "gptq", dict(bits=8, group=128, act_order=True, sym=True),
         slow=True),
    case("gptq8-rowwise-v2", "qwen2_vl", "gptq", dict(bits=8, group=-1, v1=False), slow=True),
    case("awq-g128", "qwen2_5_vl", "awq", dict(group=128)),
    case("awq-g64-memory-names", "qwen2_vl", "awq", dict(group=64, ignore_spelling="memory"), slow=True),
    case("ct4-group32-sym", "qwen2_vl", "ct", dict(bits=4, group=32, sym=True), slow=True),
    case("ct4-group128-asym", "qwen2_5_vl", "ct", dict(bits=4, group=128, sym=False)),
    case("ct4-channel-asym", "qwen2_5_vl", "ct", dict(bits=4, strategy="channel", sym=False), slow=True),
    case("ct8-channel-sym-memory-names", "qwen2_vl", "ct",
         dict(bits=8, strategy="channel", sym=True, ignore_spelling="memory")),
]


@pytest.mark.parametrize("name, family, fmt, options", CASES)
def test_quantized_matches_dequantized_float_model(name, family, fmt, options, float_dirs, tmp_path):
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    refs = write_quantized(float_dirs[family], tmp_path / "q", fmt, seed=len(name), **options)
    write_dequantized(tmp_path / "q", refs, tmp_path / "f")
    ours = vlmodel.from_pretrained(tmp_path / "q", dtype=torch.float32)
    layers = quantized_layers(ours)
    assert sorted(layers) == sorted(refs), "exactly the decoder linears are packed (vision tower, lm_head float)"
    for layer_name, layer in layers.items():  # our unpacking equals the format's own reference code
        assert torch.equal(layer.dequantize(), refs[layer_name]), layer_name
    assert isinstance(ours.visual.blocks[0].attn.qkv, torch.nn.Linear)
    assert not isinstance(ours.visual.blocks[0].attn.qkv, QuantLinear)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    config = AutoConfig.from_pretrained(tmp_path / "f")
    hf = cls.from_pretrained(tmp_path / "f", config=config, attn_implementation="sdpa", dtype=torch.float32).eval()
    inp = _inputs(family)
    pos, deltas = _positions(hf, inp)
    with torch.no_grad():
        ref = hf(**inp).logits
        got = ours(**inp, position_ids=pos).logits
        hf.generation_config.eos_token_id = None  # no stop token (min_new_tokens would forbid EOS instead)
        want = hf.generate(**inp, do_sample=False, max_new_tokens=STEPS, pad_token_id=0)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    got = ours.generate(**inp, position_ids=pos, rope_deltas=deltas, max_new_tokens=STEPS, stop_token_ids=[])
    assert got.tolist() == want[:, inp["input_ids"].shape[1]:].tolist()
    bits = options.get("bits", 4)
    for layer_name, layer in layers.items():  # packed: at most bits/16 + 0.10 of the bfloat16 layer, still
        bf16 = 2 * layer.in_features * layer.out_features
        assert layer.resident_bytes() <= (bits / 16 + 0.10) * bf16, (layer_name, layer.resident_bytes() / bf16)
        assert {k for k, v in vars(layer).items() if isinstance(v, torch.Tensor)} == set(), "no cached tensors"


def test_resident_bytes_and_layouts_at_realistic_width():
    """A 1024 x 1024 layer: 4 bits in torch's CPU int4 layout (group 32 and 128), 8 bits as bytes."""
    from vlmodel.quant import UnpackedWeight

    g = torch.Generator().manual_seed(0)
    for bits, group, layout in ((4, 32, "cpu_int4"), (4, 128, "cpu_int4"), (4, 1024, "cpu_int4"), (8, 32, "bytes")):
        n = 1024
        w = UnpackedWeight(codes=torch.randint(0, 2**bits, (n, n), generator=g),
                           scales=torch.rand(n, n // group, generator=g).half(),
                           zeros=torch.randint(0, 2**bits, (n, n // group), generator=g), bits=bits, group_size=group,
                           bias=torch.zeros(n, dtype=torch.float16))
        layer = QuantLinear(w)
        assert layer.layout == layout
        before = layer.resident_bytes()
        x = torch.randn(3, n)
        for dtype in (torch.float32, torch.bfloat16):
            y = layer(x.to(dtype))
            ref = x @ w.dequantize().t()
            tol = 1e-5 if dtype == torch.float32 else 3e-2
            assert (y.float() - ref).abs().max() <= tol * ref.abs().max(), (bits, group, dtype)
        assert layer.resident_bytes() == before <= (bits / 16 + 0.10) * 2 * n * n, (bits, group, before / (2 * n * n))
        # the input gradient through the packed layer (what LoRA trains through) is grad @ W
        rows = x.bfloat16().requires_grad_()
        layer(rows).float().sum().backward()
        want = w.dequantize().sum(0).expand(3, -1)
        assert (rows.grad.float() - want).abs().max() <= 3e-2 * want.abs().max()


def test_small_act_order_layer_stays_within_the_bound():
    """Fixed costs (column permutation, bias) fit even a 32 x 64 layer (a tiny model's k_proj)."""
    from vlmodel.quant import UnpackedWeight

    g = torch.Generator().manual_seed(2)
    index = torch.randperm(64, generator=g) // 32
    w = UnpackedWeight(codes=torch.randint(0, 16, (32, 64), generator=g), scales=torch.rand(32, 2, generator=g).half(),
                       zeros=torch.randint(0, 17, (32, 2), generator=g), bits=4, group_size=32, group_index=index,
                       bias=torch.randn(32, generator=g).half())
    layer = QuantLinear(w, bias_dtype=torch.float32)
    assert layer.perm is not None and layer.layout == "cpu_int4"
    assert layer.resident_bytes() <= 0.35 * 2 * 32 * 64
    x = torch.randn(5, 64, generator=g)
    ref = x @ w.dequantize().t() + w.bias.float()
    assert torch.allclose(layer(x), ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(layer(x.bfloat16()).float(), ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())


def test_cpu_int4_layout_round_trip():
    from vlmodel.quant.packing import cpu_int4_layout_ok, pack_cpu_int4, unpack_cpu_int4

    assert cpu_int4_layout_ok()
    g = torch.Generator().manual_seed(1)
    for rows, cols in ((16, 32), (48, 64), (64, 128), (80, 96), (1536, 512)):
        codes = torch.randint(0, 16, (rows, cols), generator=g)
        assert torch.equal(unpack_cpu_int4(pack_cpu_int4(codes), rows, cols).long(), codes), (rows, cols)


# ---- bad checkpoints --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gptq_dir(float_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("gptq_bad")
    write_quantized(float_dirs["qwen2_vl"], path, "gptq", bits=4, group=32, act_order=True)
    return path


def _copy(src, dst, edit_config=None, edit_tensors=None):
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (dst / "config.json").write_text(json.dumps(config))
    state = load_file(src / "model.safetensors")
    if edit_tensors:
        edit_tensors(state)
    save_file(state, dst / "model.safetensors")
    return dst


def test_unknown_quant_method_and_bits(gptq_dir, tmp_path):
    bad = _copy(gptq_dir, tmp_path / "m", lambda c: c["quantization_config"].update(quant_method="hqq"))
    with pytest.raises(ConfigError, match="quant_method 'hqq' is not supported"):
        vlmodel.from_pretrained(bad)
    bad = _copy(gptq_dir, tmp_path / "b", lambda c: c["quantization_config"].update(bits=3))
    with pytest.raises(ConfigError, match=r"gptq.*bits=3 is not allowed"):
        vlmodel.from_pretrained(bad)
    awq = {"quant_method": "awq", "bits": 8, "group_size": 128, "version": "gemm", "zero_point": True}
    bad = _copy(gptq_dir, tmp_path / "a", lambda c: c.update(quantization_config=awq))
    with pytest.raises(ConfigError, match=r"awq.*bits=8 is not allowed"):
        vlmodel.from_pretrained(bad)
    from _quant_checkpoints import ct_config
    bad = _copy(gptq_dir, tmp_path / "c", lambda c: c.update(quantization_config=ct_config(2, "group", 32, True, [])))
    with pytest.raises(ConfigError, match=r"num_bits=2 is not allowed"):
        vlmodel.from_pretrained(bad)


def test_shape_mismatch_names_the_tensor(gptq_dir, tmp_path):
    def cut(state):
        name = "model.layers.1.mlp.down_proj.qweight"
        state[name] = state[name][:-1].clone()
    bad = _copy(gptq_dir, tmp_path / "s", edit_tensors=cut)
    with pytest.raises(ConfigError, match=r"model\.layers\.1\.mlp\.down_proj\.qweight: shape \(31, 128\) does not "
                                          r"match the config: expected \(32, 128\)"):
        vlmodel.from_pretrained(bad)
    bad = _copy(gptq_dir, tmp_path / "g", lambda c: c["quantization_config"].update(group_size=64))
    with pytest.raises(ConfigError, match=r"model\.layers\.\d\.\w+\.\w+_proj\.qzeros: shape \(8, \d+\) does not match "
                                          r"the config: expected \(4, \d+\) \(4 groups of 64"):
        vlmodel.from_pretrained(bad)


def test_missing_g_idx_with_desc_act(gptq_dir, tmp_path):
    bad = _copy(gptq_dir, tmp_path / "x", edit_tensors=lambda s: s.pop("model.layers.0.self_attn.k_proj.g_idx"))
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.self_attn\.k_proj\.g_idx: missing .*desc_act"):
        vlmodel.from_pretrained(bad)


def test_quantized_tensors_on_a_non_linear(gptq_dir, tmp_path):
    def move(state):
        for suffix in ("qweight", "qzeros", "scales", "g_idx"):
            state[f"model.norm.{suffix}"] = state[f"model.layers.0.self_attn.q_proj.{suffix}"].clone()
    bad = _copy(gptq_dir, tmp_path / "n", edit_tensors=move)
    with pytest.raises(ConfigError, match=r"model\.norm\.qweight: model\.norm is a RMSNorm, not a linear layer"):
        vlmodel.from_pretrained(bad)


# ---- LoRA (peft) on a packed base -------------------------------------------------------------

def test_lora_trains_saves_reloads_and_merges(gptq_dir, tmp_path):
    """peft's usual CAUSAL_LM call wraps packed layers; the packed base stays frozen and unchanged."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from vlmodel.quant import dequantize_model

    model = vlmodel.from_pretrained(gptq_dir, dtype=torch.float32)
    packed_before = {n: m.qweight.clone() for n, m in quantized_layers(model).items()}
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    wrapped = [n for n, m in peft_model.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A")]
    assert len(wrapped) == 2 and isinstance(peft_model.get_submodule(wrapped[0]).base_layer, QuantLinear)
    ids = prompt([24], seed=1)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(4):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, m in quantized_layers(peft_model).items():
        assert torch.equal(m.qweight, packed_before[n.replace("base_model.model.", "").replace(".base_layer", "")])
    peft_model.eval()
    with torch.no_grad():
        trained = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(vlmodel.from_pretrained(gptq_dir, dtype=torch.float32), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, trained)
    # merging needs a float base: dequantize the packed layers, then peft merges as usual
    with pytest.raises(RuntimeError):
        reloaded.merge_adapter()
    dequantize_model(reloaded.base_model.model)
    merged = reloaded.merge_and_unload()
    assert not quantized_layers(merged)
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    assert (got - trained).abs().max() <= 1e-4 * trained.abs().max()


@pytest.mark.parametrize("fmt, options", [("gptq", dict(bits=4, group=32, act_order=True)),
                                          pytest.param("ct", dict(bits=4, group=32, sym=False), marks=SLOW)],
                         ids=["gptq4", "ct4"])
def test_qwen3_vl_quantized_matches_transformers(fmt, options, tmp_path):
    """Qwen3-VL (transformers 4.57 names: model.language_model.*): same formats, same checks."""
    import transformers

    from _qwen3_cases import IDS, MODELS, inputs, media

    spec = next(m for m in MODELS if m["family"] == "qwen3_vl")
    text = dict(spec["text"])
    rope = text.pop("rope_parameters")
    text.update(rope_theta=rope["rope_theta"], rope_scaling={"rope_type": "default", "mrope_section":
                                                             rope["mrope_section"], "mrope_interleaved": True})
    config = transformers.Qwen3VLConfig(text_config=text, vision_config=spec["vision"], **IDS)
    torch.manual_seed(5)
    hf = transformers.Qwen3VLForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p)) if p.ndim == 1 else p.copy_(0.1 * torch.randn_like(p))
    hf.eval().save_pretrained(tmp_path / "src")
    refs = write_quantized(tmp_path / "src", tmp_path / "q", fmt, ignore_spelling="memory", **options)
    assert all(name.startswith("model.language_model.layers.") for name in refs)
    write_dequantized(tmp_path / "q", refs, tmp_path / "f")
    ours = vlmodel.from_pretrained(tmp_path / "q", dtype=torch.float32)
    assert len(quantized_layers(ours)) == len(refs)
    hf = transformers.Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "f", attn_implementation="sdpa",
                                                                      dtype=torch.float32).eval()
    inp = inputs()["image"]
    kw = dict(input_ids=inp["input_ids"], **media(inp))
    with torch.no_grad():
        ref = hf(**kw).logits
        got = ours(**kw).logits
        hf.generation_config.eos_token_id = None
        want = hf.generate(**kw, do_sample=False, max_new_tokens=STEPS, pad_token_id=0)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    tokens = ours.generate(kw.pop("input_ids"), max_new_tokens=STEPS, stop_token_ids=[], **kw)
    assert tokens.tolist() == want[:, inp["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("options", [dict(bits=4, group=32),
                                     pytest.param(dict(bits=8, strategy="channel"), marks=pytest.mark.slow)],
                         ids=["w4-group32", "w8-channel"])
def test_compressed_tensors_matches_transformers_5(options, float_dirs, tmp_path):
    """transformers 5.23 + compressed-tensors 0.20 run the same packed checkpoint on CPU.

    Symmetric schemes only: 5.23 cannot load compressed-tensors 0.20's packed asymmetric zero
    points (it expects them unpacked: a size-mismatch error), and its ignore list must use
    the in-memory spelling (``re:.*visual.*``); vlmodel reads both (see the other tests).
    """
    from _refs import ROOT, run_python

    write_quantized(float_dirs["qwen2_vl"], tmp_path / "q", "ct", sym=True, ignore_spelling="memory",
                    float_dtype=torch.float32, **options)
    inp = _inputs("qwen2_vl")
    ids = inp["input_ids"]
    cfg = vlmodel.ModelConfig.from_file(tmp_path / "q")
    mm = (ids == cfg.image_token_id).long() + 2 * (ids == cfg.video_token_id).long()
    torch.save({**inp, "mm_token_type_ids": mm, "greedy": STEPS}, tmp_path / "inputs.pt")  # 5.x wants these
    run_python("tf523", [str(ROOT / "tests" / "reference_quant_runner.py"), str(tmp_path / "q"),
                         str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")])
    ref = torch.load(tmp_path / "out.pt", weights_only=False)
    assert ref["version"] == "5.23.0" and ref["layer_types"] == ["Linear", "Linear"]
    ours = vlmodel.from_pretrained(tmp_path / "q", dtype=torch.float32)
    with torch.no_grad():
        got = ours(**inp).logits
    assert (got - ref["logits"]).abs().max() <= 1e-4 * ref["logits"].abs().max()
    tokens = ours.generate(**inp, max_new_tokens=STEPS, stop_token_ids=[])
    assert tokens.tolist() == ref["tokens"].tolist()
