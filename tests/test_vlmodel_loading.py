"""vlmodel.from_pretrained: hub layout (flat config, tied head), transformers 5.x names and
nested config, shards, and clear errors for checkpoints that do not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlmodel
from vlmodel import CheckpointError, ConfigError, ModelConfig

from _tiny_checkpoints import hf_model, images, prompt, save_hub_layout, save_v5_sharded

HERE = os.path.dirname(__file__)


def _logits(model, ids, pv, grid, hf=None):
    pos = None
    if hf is not None:
        args = (ids, grid, None) if hf.config.model_type == "qwen2_vl" else (ids, grid, None, None)
        pos, _ = hf.model.get_rope_index(*args)
    with torch.no_grad():
        if hf is not None:
            return model(ids, pixel_values=pv, image_grid_thw=grid, position_ids=pos).logits
        return model(input_ids=ids, pixel_values=pv, image_grid_thw=grid).logits


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_hub_layout_tied_head_loads_and_matches(family, tmp_path):
    hf = hf_model(family, seed=3, tie=True)
    assert hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()
    save_hub_layout(hf, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert "text_config" not in raw and raw["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    ours = vlmodel.from_pretrained(tmp_path)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    pv, grid = images([(224, 196)], seed=1)
    ids = prompt([4, ("image", tuple(int(x) for x in grid[0])), 8], seed=1)
    ref = _logits(hf, ids, pv, grid)
    got = _logits(ours, ids, pv, grid, hf=hf)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    # transformers reads the same files the same way
    again = type(hf).from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert (_logits(again, ids, pv, grid) - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_v5_names_nested_config_and_shards(family, tmp_path):
    hf = hf_model(family, seed=4)
    save_v5_sharded(hf, tmp_path, shards=3)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert any(k.startswith("model.language_model.") for k in index["weight_map"])
    assert len(set(index["weight_map"].values())) == 3
    ours = vlmodel.from_pretrained(tmp_path, dtype=torch.float32)
    pv, grid = images([(168, 252)], seed=2)
    ids = prompt([3, ("image", tuple(int(x) for x in grid[0])), 5], seed=2)
    ref = _logits(hf, ids, pv, grid)
    assert (_logits(ours, ids, pv, grid, hf=hf) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_flat_and_nested_configs_agree(tmp_path):
    hf = hf_model("qwen2_5_vl", seed=5, tie=True)
    save_hub_layout(hf, tmp_path / "flat")
    save_v5_sharded(hf, tmp_path / "nested")
    flat = ModelConfig.from_file(tmp_path / "flat")
    nested = ModelConfig.from_file(tmp_path / "nested")
    assert flat.text == nested.text and flat.vision == nested.vision
    assert flat.vision.fullatt_block_indexes == [1, 3] and flat.text.mrope_section == [2, 3, 3]


def test_dtype_and_device_arguments(tmp_path):
    hf_model("qwen2_vl", seed=6).save_pretrained(tmp_path)
    m = vlmodel.from_pretrained(tmp_path, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in m.parameters()} == {"cpu"}
    assert not m.training


@pytest.fixture()
def saved(tmp_path):
    hf_model("qwen2_vl", seed=7).save_pretrained(tmp_path)
    return tmp_path


def test_unknown_and_missing_tensors_are_listed(saved):
    file = saved / "model.safetensors"
    state = load_file(file)
    state["visual.blocks.9.extra.weight"] = torch.zeros(2)
    del state["model.layers.1.mlp.up_proj.weight"]
    del state["visual.merger.ln_q.bias"]
    save_file(state, file)
    with pytest.raises(CheckpointError) as err:
        vlmodel.from_pretrained(saved)
    msg = str(err.value)
    assert "missing 2 tensors" in msg and "model.layers.1.mlp.up_proj.weight" in msg
    assert "visual.merger.ln_q.bias" in msg
    assert "unknown 1 tensors: visual.blocks.9.extra.weight" in msg


def test_missing_lm_head_without_tied_config_is_an_error(saved):
    file = saved / "model.safetensors"
    state = load_file(file)
    del state["lm_head.weight"]
    save_file(state, file)
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        vlmodel.from_pretrained(saved)


def test_wrong_shape_is_an_error(saved):
    file = saved / "model.safetensors"
    state = load_file(file)
    state["model.norm.weight"] = torch.ones(3)
    save_file(state, file)
    with pytest.raises(CheckpointError, match=r"model.norm.weight \(3,\) != \(64,\)"):
        vlmodel.from_pretrained(saved)


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        vlmodel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type"):
        vlmodel.from_pretrained(tmp_path)
    hf_model("qwen2_vl").config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        vlmodel.from_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["text_config"]["rope_scaling"]["mrope_section"] = [4, 4, 4]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="mrope_section"):
        vlmodel.from_pretrained(tmp_path)


def test_no_transformers_import_at_run_time(saved):
    code = (
        "import sys, torch, vlmodel\n"
        f"m = vlmodel.from_pretrained({str(saved)!r})\n"
        "ids = torch.tensor([[1, 2, 3, 502] + [500] * 4 + [503, 4]])\n"
        "pv = torch.randn(16, 3 * 2 * 14 * 14)\n"
        "pos = torch.arange(ids.shape[1]).expand(3, 1, -1)\n"
        "m(ids, pixel_values=pv, image_grid_thw=torch.tensor([[1, 4, 4]]), position_ids=pos)\n"
        "m.generate(ids[:, :3], max_new_tokens=3, position_ids=pos[:, :, :3], rope_deltas=torch.zeros(1, 1))\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


# Released hub configs (flat layout), as published for Qwen2-VL-7B-Instruct and Qwen2.5-VL-3B-Instruct.
_COMMON = {"attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
           "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
           "video_token_id": 151656, "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-06,
           "rope_theta": 1000000.0, "sliding_window": 32768, "torch_dtype": "bfloat16", "use_cache": True,
           "use_sliding_window": False, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
HUB_CONFIGS = {
    "Qwen2-VL-7B-Instruct": dict(
        _COMMON, architectures=["Qwen2VLForConditionalGeneration"], model_type="qwen2_vl", hidden_size=3584,
        intermediate_size=18944, max_position_embeddings=32768, max_window_layers=28, num_attention_heads=28,
        num_hidden_layers=28, num_key_value_heads=4, tie_word_embeddings=False, vocab_size=152064,
        vision_config={"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                       "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                       "temporal_patch_size": 2}),
    "Qwen2.5-VL-3B-Instruct": dict(
        _COMMON, architectures=["Qwen2_5_VLForConditionalGeneration"], model_type="qwen2_5_vl", hidden_size=2048,
        intermediate_size=11008, max_position_embeddings=128000, max_window_layers=70, num_attention_heads=16,
        num_hidden_layers=36, num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936,
        vision_config={"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                       "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
                       "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                       "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2}),
}


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_released_configs_give_transformers_tensor_names_and_shapes(name):
    """On the meta device (no memory): the released configs build exactly transformers' tensors."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig
    from transformers import Qwen2VLForConditionalGeneration

    raw = HUB_CONFIGS[name]
    ours_cfg = ModelConfig.from_dict(raw)
    hf_cls, cfg_cls = ((Qwen2VLForConditionalGeneration, Qwen2VLConfig) if raw["model_type"] == "qwen2_vl"
                       else (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig))
    with torch.device("meta"):
        hf = hf_cls._from_config(cfg_cls(**raw))
        ours = vlmodel.Qwen2VL(ours_cfg)
    theirs = {vlmodel.weights.canonical_name(k, raw["model_type"]): tuple(v.shape) for k, v in hf.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs
    hf_tied = hf.lm_head.weight is hf.model.language_model.embed_tokens.weight
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == hf_tied == raw["tie_word_embeddings"]
    assert ours_cfg.eos_token_id == [151645] and ours_cfg.text.mrope_section == [16, 24, 24]
