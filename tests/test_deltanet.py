"""vlmodel.deltanet against transformers 5.23's own Qwen3.5 gated-DeltaNet layer, and its own invariants.

The reference runs in one subprocess (tests/reference_deltanet_runner.py) on random
dimensions, prompt lengths across the 64-token chunk boundary, left padding, and decode
steps after a cached prefill.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._refs import ROOT, reference_env
from vlmodel.deltanet import DeltaNetState, GatedDeltaNet, chunked_delta_rule, recurrent_delta_rule

RUNNER = Path(__file__).resolve().parent / "reference_deltanet_runner.py"


def _cases() -> list[dict]:
    rng = random.Random(11)
    cases = []
    for i in range(6):
        kh = rng.choice([1, 2, 3])
        vh = kh * rng.choice([1, 2])
        batch = rng.choice([1, 2])
        prompt = rng.choice([1, 2, 5, 63, 64, 65, 131])
        case = dict(dims=(rng.choice([24, 40, 56]), kh, vh, rng.choice([4, 8, 12]), rng.choice([4, 8, 16]),
                          rng.choice([2, 3, 4])), seed=i, batch=batch, prompt=prompt, steps=rng.choice([1, 3, 6]))
        if i % 2 and batch == 2 and prompt > 3:  # left padding on the first row
            mask = torch.ones(batch, prompt, dtype=torch.long)
            mask[0, : rng.randrange(1, prompt - 1)] = 0
            case["mask"] = mask
        cases.append(case)
    return cases


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("deltanet")
    cases = _cases()
    torch.save(cases, work / "cases.pt")
    proc = subprocess.run([sys.executable, str(RUNNER), str(work / "cases.pt"), str(work / "out.pt")],
                          env=reference_env("tf523"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = torch.load(work / "out.pt", weights_only=False)
    assert out["version"].startswith("5.23")
    return cases, out["results"]


def _layer(dims, state_dict=None) -> GatedDeltaNet:
    hidden, kh, vh, kd, vd, kernel = dims
    layer = GatedDeltaNet(hidden, kh, vh, kd, vd, kernel, eps=1e-6).eval()
    if state_dict is not None:
        layer.load_state_dict(state_dict, strict=True)
    return layer


def _close(ours, theirs, tol=1e-5):
    ours, theirs = ours.detach(), theirs.detach()
    scale = theirs.abs().max().clamp_min(1e-6)
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max() / scale) < tol


@torch.no_grad()
def test_matches_transformers_prefill_and_decode(reference):
    """Prefill without cache, prefill with cache, then one-token decode steps: all equal transformers'."""
    for case, ref in zip(*reference):
        layer = _layer(case["dims"], ref["state_dict"])
        n, x = case["prompt"], ref["x"]
        mask = case.get("mask")
        _close(layer.mix(x[:, :n], padding_mask=mask), ref["full"])
        state = DeltaNetState()
        _close(layer.mix(x[:, :n], state, padding_mask=mask), ref["prefill"])
        steps = [layer.mix(x[:, n + i : n + i + 1], state) for i in range(case["steps"])]
        _close(torch.cat(steps, dim=1), ref["decode"])


def _random_rule_inputs(b, n, kh, vh, dk, dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, n, kh, dk, generator=g), torch.randn(b, n, kh, dk, generator=g)
    v = torch.randn(b, n, vh, dv, generator=g)
    decay = -torch.rand(b, n, vh, generator=g) * 3
    beta = torch.rand(b, n, vh, generator=g)
    return q, k, v, decay, beta


@pytest.mark.parametrize("n,chunk", [(1, 64), (7, 4), (64, 64), (100, 64), (33, 8)])
def test_chunked_equals_recurrent(n, chunk):
    """Both forms compute the same recurrence, from zero or from a given state."""
    q, k, v, decay, beta = _random_rule_inputs(2, n, 2, 4, 8, 6, seed=n)
    start = torch.randn(2, 4, 8, 6)
    for state in (None, start):
        o1, s1 = recurrent_delta_rule(q, k, v, decay, beta, state)
        o2, s2 = chunked_delta_rule(q, k, v, decay, beta, state, chunk=chunk)
        _close(o2, o1, 1e-5)
        _close(s2, s1, 1e-5)


@torch.no_grad()
def test_prefill_equals_decode_steps():
    """A prompt of N tokens at once gives the outputs and state of N one-token steps."""
    torch.manual_seed(3)
    layer = _layer((32, 2, 4, 8, 8, 4))
    for p in layer.parameters():
        p.normal_(0, 0.3)
    x = torch.randn(2, 70, 32)
    state_a, state_b = DeltaNetState(), DeltaNetState()
    prefill = layer.mix(x, state_a)
    steps = torch.cat([layer.mix(x[:, i : i + 1], state_b) for i in range(x.shape[1])], dim=1)
    _close(steps, prefill)
    _close(state_b.recurrent, state_a.recurrent)
    _close(state_b.conv, state_a.conv)
    # and a second chunk of several tokens continues the state like single steps do
    more = torch.randn(2, 9, 32)
    _close(layer.mix(more, state_a), torch.cat([layer.mix(more[:, i : i + 1], state_b) for i in range(9)], dim=1))


def test_packed_rows_equal_separate_samples_with_gradients():
    """cu_seqlens restarts the conv and the recurrence at every sample: packed == each alone, grads too."""
    torch.manual_seed(4)
    layer = _layer((24, 1, 2, 8, 8, 4))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    lengths = [5, 1, 70, 3]
    samples = [torch.randn(1, n, 24, requires_grad=True) for n in lengths]
    packed_x = torch.cat([s.detach() for s in samples], dim=1).requires_grad_(True)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    packed = layer.mix(packed_x, cu_seqlens=cu)
    alone = torch.cat([layer.mix(s) for s in samples], dim=1)
    _close(packed, alone.detach())
    weights = torch.randn_like(packed)
    grads_packed = torch.autograd.grad((packed * weights).sum(), [packed_x, layer.in_proj_qkv.weight, layer.A_log])
    grads_alone = torch.autograd.grad((alone * weights).sum(), [*samples, layer.in_proj_qkv.weight, layer.A_log])
    _close(grads_packed[0], torch.cat(grads_alone[: len(samples)], dim=1))
    _close(grads_packed[1], grads_alone[-2])
    _close(grads_packed[2], grads_alone[-1])


def test_bad_arguments_raise_value_error():
    from types import SimpleNamespace

    from vlmodel.config import ConfigError
    from vlmodel.deltanet import build_mixer

    with pytest.raises(ValueError, match="multiple"):
        GatedDeltaNet(16, 3, 4, 4, 4)
    cfg = SimpleNamespace(hidden_size=16, rms_norm_eps=1e-6, hidden_act="silu",
                          linear={"linear_num_key_heads": 3, "linear_num_value_heads": 4})
    with pytest.raises(ConfigError, match="layer 2"):
        build_mixer(cfg, 2)
    with pytest.raises(ConfigError, match="activation"):
        build_mixer(SimpleNamespace(**{**vars(cfg), "hidden_act": "mystery", "linear": {}}), 0)
    layer = _layer((16, 1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="single packed row"):
        layer.mix(torch.randn(2, 4, 16), cu_seqlens=torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="single packed row"):
        layer.mix(torch.randn(1, 4, 16), DeltaNetState(), cu_seqlens=torch.tensor([0, 2, 4]))
