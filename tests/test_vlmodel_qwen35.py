"""Qwen3.5 and Qwen3.5-MoE: vlmodel against transformers 5.23 on checkpoints it wrote itself.

transformers builds tiny random models (several hybrid layer patterns and unusual sizes,
tied and untied heads, sharded and not), writes them with ``save_pretrained``, and runs
them on images, several images and videos (one timestamped block per temporal patch),
left-padded batches, and greedy generation; all in one subprocess
(tests/reference_qwen35_runner.py). vlmodel loads the files and must give the same float32
logits (within 1e-4 of the largest logit, real tokens) and the same greedy tokens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vlmodel

from _refs import ROOT, reference_env
from _tiny_checkpoints import END, EOS, IMAGE, START, VIDEO, VOCAB, left_pad

RUNNER = Path(__file__).resolve().parent / "reference_qwen35_runner.py"
IDS = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
PATCH_DIM = 3 * 2 * 16 * 16


def _text(n_layers, hidden, heads, kv, head_dim, partial, section, linear, pattern, **extra):
    layer_types = [("linear_attention" if c == "L" else "full_attention") for c in pattern]
    assert len(layer_types) == n_layers
    return dict(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=head_dim, layer_types=layer_types, rms_norm_eps=1e-6,
        initializer_range=0.2, eos_token_id=EOS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial,
                         "mrope_section": section, "mrope_interleaved": True},
        linear_num_key_heads=linear[0], linear_num_value_heads=linear[1], linear_key_head_dim=linear[2],
        linear_value_head_dim=linear[3], linear_conv_kernel_dim=linear[4], **extra,
    )


def _vision(depth, width, heads, out, side):
    return dict(depth=depth, hidden_size=width, intermediate_size=2 * width, num_heads=heads, out_hidden_size=out,
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=side * side,
                initializer_range=0.2)


CONFIGS = {
    # 3 linear + 1 full (the released pattern), partial rotary 0.25, grouped value heads, sharded
    "qwen3_5": dict(family="qwen3_5", shard="200KB",
                    text=_text(4, 64, 4, 2, 32, 0.25, [2, 1, 1], (2, 4, 8, 16, 4), "LLLF", intermediate_size=96),
                    vision=_vision(2, 32, 2, 64, 8)),
    # unusual: odd widths, full attention first, kernel 3, one key head for three value heads, tied
    "qwen3_5_odd": dict(family="qwen3_5", shard=None,
                        text=_text(5, 48, 3, 1, 24, 0.5, [2, 2, 2], (1, 3, 12, 8, 3), "FLFLL", intermediate_size=80,
                                   tie_word_embeddings=True),
                        vision=_vision(1, 24, 3, 48, 6)),
    # MoE with a shared expert in every layer
    "qwen3_5_moe": dict(family="qwen3_5_moe", shard=None,
                        text=_text(4, 64, 4, 2, 16, 0.5, [2, 1, 1], (2, 2, 8, 8, 4), "LFLF", num_experts=4,
                                   num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48),
                        vision=_vision(2, 32, 2, 64, 8)),
}


def _prompt(parts: list, g: torch.Generator) -> torch.Tensor:
    """ints: random text; ("image", (h, w)): one block; ("video", (t, h, w)): a timestamp-like
    text run then a block per temporal patch (Qwen3 videos)."""
    ids: list[int] = []
    text = lambda n: torch.randint(10, IMAGE - 10, (n,), generator=g).tolist()  # noqa: E731
    for part in parts:
        if isinstance(part, int):
            ids += text(part)
        elif part[0] == "image":
            h, w = part[1]
            ids += [START] + [IMAGE] * (h * w // 4) + [END]
        else:
            t, h, w = part[1]
            for _ in range(t // 2):
                ids += text(3) + [START] + [VIDEO] * (h * w // 4) + [END]
    return torch.tensor([ids])


def _media(images, videos, g):
    out = {}
    if images:
        grid = torch.tensor([[1, h, w] for h, w in images])
        out.update(pixel_values=torch.randn(int(grid.prod(1).sum()), PATCH_DIM, generator=g), image_grid_thw=grid)
    if videos:
        grid = torch.tensor([[t // 2, h, w] for t, h, w in videos])
        out.update(pixel_values_videos=torch.randn(int(grid.prod(1).sum()), PATCH_DIM, generator=g),
                   video_grid_thw=grid)
    return out


def _inputs(seed: int) -> tuple[list[dict], list[dict]]:
    g = torch.Generator().manual_seed(seed)
    one_image = dict(input_ids=_prompt([5, ("image", (4, 6)), 9], g), **_media([(4, 6)], [], g))
    long_text = dict(input_ids=_prompt([70, ("image", (2, 2)), 80], g), **_media([(2, 2)], [], g))
    rows = [_prompt([4, ("image", (6, 4)), 3, ("video", (4, 4, 4)), 7], g), _prompt([2, ("image", (2, 4)), 60], g)]
    ids, mask = left_pad(rows)
    several = dict(input_ids=ids, attention_mask=mask,
                   pixel_values=None, image_grid_thw=None, pixel_values_videos=None, video_grid_thw=None)
    first, second = _media([(6, 4)], [(4, 4, 4)], g), _media([(2, 4)], [], g)
    several.update(pixel_values=torch.cat([first["pixel_values"], second["pixel_values"]]),
                   image_grid_thw=torch.cat([first["image_grid_thw"], second["image_grid_thw"]]),
                   pixel_values_videos=first["pixel_values_videos"], video_grid_thw=first["video_grid_thw"])
    video_only = dict(input_ids=_prompt([3, ("video", (6, 2, 4)), ("video", (2, 4, 2)), 5], g),
                      **_media([], [(6, 2, 4), (2, 4, 2)], g))
    forward = [one_image, long_text, several, video_only]
    generate = [dict(several, max_new_tokens=20), dict(one_image, max_new_tokens=16)]
    return forward, generate


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("qwen35")
    jobs = []
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        forward, generate = _inputs(seed=10 + i)
        jobs.append(dict(cfg, ids=IDS, eos=EOS, seed=i, path=str(work / name), forward=forward, generate=generate))
    torch.save(jobs, work / "jobs.pt")
    proc = subprocess.run([sys.executable, str(RUNNER), str(work / "jobs.pt"), str(work / "out.pt")],
                          env=reference_env("tf523"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = torch.load(work / "out.pt", weights_only=False)
    assert out["version"] == "5.23.0"
    return {name: (job, res) for name, job, res in zip(CONFIGS, jobs, out["results"])}


def _assert_close(ours, ref, mask=None, rel=1e-4):
    if mask is not None:
        ours, ref = ours[mask.bool()], ref[mask.bool()]
    scale = ref.abs().max().item()
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= rel * scale, f"max |diff| {diff:.3g} > {rel} * {scale:.3g}"


def _media_kwargs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "max_new_tokens") and v is not None}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(reference, name):
    job, res = reference[name]
    model = vlmodel.from_pretrained(job["path"], dtype=torch.float32)
    assert model.config.text.layer_types == job["text"]["layer_types"]
    for i, (inputs, ref) in enumerate(zip(job["forward"], res["logits"])):
        with torch.no_grad():
            ours = model(inputs["input_ids"], **_media_kwargs(inputs)).logits
        assert ours.shape == ref.shape, f"forward {i}"
        _assert_close(ours, ref, inputs.get("attention_mask"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_match_transformers(reference, name):
    job, res = reference[name]
    model = vlmodel.from_pretrained(job["path"], dtype=torch.float32)
    for inputs, ref in zip(job["generate"], res["tokens"]):
        ours = model.generate(inputs["input_ids"], max_new_tokens=inputs["max_new_tokens"], pad_token_id=0,
                              **_media_kwargs(inputs))
        assert ref.shape[1] >= 16 or bool((ref == EOS).any()), "the reference stopped early"
        assert torch.equal(ours, ref), f"ours {ours.tolist()} vs transformers {ref.tolist()}"


def test_prefill_equals_step_by_step_decoding(reference):
    """The hybrid cache (KV + conv/recurrent states): N decode steps give the prefill's logits.

    In float64, where the chunked and the recurrent delta rule agree to rounding (in float32
    these random weights make the chunked triangular solve lose ~1e-4, in transformers too)."""
    job, _ = reference["qwen3_5"]
    model = vlmodel.from_pretrained(job["path"], dtype=torch.float64)
    ids = torch.randint(10, 400, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 40)
        first = model(ids[:, :1], cache=cache)
        steps = [first.logits] + [model(ids[:, i : i + 1], cache=cache, rope_deltas=first.rope_deltas).logits
                                  for i in range(1, 40)]
    _assert_close(torch.cat(steps, dim=1), full, rel=1e-10)
