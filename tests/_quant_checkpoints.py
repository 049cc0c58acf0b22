"""Tiny quantized checkpoints, written the way each format stores them, and each format's
own reference dequantization (test-only; the reference code is never part of vlmodel).

* GPTQ: packed here bit by bit (NumPy loops, independent of ``vlmodel.quant.packing``);
  reference = AutoGPTQ 0.7.1's pure-PyTorch ``QuantLinear`` (``qlinear_cuda.py``, its
  non-CUDA path), read from the extracted sdist in ``.refs/src`` (``scripts/install_refs.sh``).
* AWQ: packed here (NumPy, AutoAWQ's word order); reference = AutoAWQ 0.2.9's
  ``awq/utils/packing_utils.dequantize_gemm`` from the extracted sdist.
* compressed-tensors: packed and unpacked by compressed-tensors 0.20 itself
  (``PackedQuantizationCompressor``).

Codes, scales and zero points are random (not quantized from a float model), so every
code value and zero point occurs; scales are stored in float16 as the tools do and the
reference dequantizes with them converted to float32 (exact), so results compare exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / ".refs" / "src"
AUTOGPTQ = SRC / "auto_gptq-0.7.1" / "auto_gptq" / "nn_modules" / "qlinear" / "qlinear_cuda.py"
AUTOAWQ = SRC / "autoawq-0.2.9" / "awq" / "utils" / "packing_utils.py"
TEXT_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# decoder linears in either spelling (model.layers.N... or model.language_model.layers.N...)
TEXT_LINEAR = re.compile(r"^((?:model\.|model\.language_model\.)layers\.\d+\.((?:self_attn|mlp)\.[a-z]+_proj))\.weight$")


def _load_source(name: str, path: Path):
    if not path.exists():
        raise RuntimeError(f"reference source missing at {path}: run `bash scripts/install_refs.sh` first")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Quantized:
    """A layer's random quantization: w[o, i] = (codes[o, i] - zeros[o, g]) * scales[o, g], g = g_idx[i]."""

    codes: np.ndarray  # (out, in) unsigned
    zeros: np.ndarray  # (out, groups) unsigned
    scales: torch.Tensor  # (out, groups) float16
    g_idx: np.ndarray  # (in,)
    bits: int
    group: int  # columns per group

    def weight(self) -> torch.Tensor:
        """Straight from the definition, in float64 then float32."""
        s = self.scales.double().numpy()[:, self.g_idx]
        return torch.from_numpy((self.codes - self.zeros[:, self.g_idx]) * s).float()


def random_quantized(out: int, inp: int, bits: int, group: int, *, act_order: bool = False, sym: bool = False,
                     zero_low: int = 0, zero_high: int | None = None, seed: int = 0) -> Quantized:
    rng = np.random.default_rng(seed)
    size = inp if group == -1 else group
    groups = -(-inp // size)
    top = 1 << bits
    codes = rng.integers(0, top, (out, inp))
    if sym:
        zeros = np.full((out, groups), top // 2)
    else:
        zeros = rng.integers(zero_low, top if zero_high is None else zero_high + 1, (out, groups))
    spread = 0.12 / (top / 3.5)  # weights of about 0.12 standard deviation (the float tests' 0.2 at half width)
    scales = torch.from_numpy(rng.uniform(0.5, 1.5, (out, groups)) * spread).half()
    g_idx = np.arange(inp) // size
    if act_order:  # GPTQ act-order: columns quantized in a permuted order, groups follow that order
        perm = rng.permutation(inp)
        g_idx = np.empty(inp, dtype=np.int64)
        g_idx[perm] = np.arange(inp) // size
    return Quantized(codes, zeros, scales, g_idx, bits, size)


def _to_int32(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(words.astype(np.uint32).view(np.int32).copy())


# ---- GPTQ -------------------------------------------------------------------------------------

def gptq_tensors(q: Quantized, v1: bool = True) -> dict[str, torch.Tensor]:
    """qweight packs input rows, qzeros packs output columns; v1 stores zero - 1 (wrapping)."""
    per = 32 // q.bits
    mask = (1 << q.bits) - 1
    codes_t = q.codes.T.astype(np.uint64)  # (in, out)
    qweight = np.zeros((codes_t.shape[0] // per, codes_t.shape[1]), dtype=np.uint64)
    for row in range(qweight.shape[0]):
        for j in range(per):
            qweight[row] |= codes_t[row * per + j] << np.uint64(q.bits * j)
    stored = ((q.zeros.T - (1 if v1 else 0)) & mask).astype(np.uint64)  # (groups, out)
    qzeros = np.zeros((stored.shape[0], stored.shape[1] // per), dtype=np.uint64)
    for col in range(qzeros.shape[1]):
        for j in range(per):
            qzeros[:, col] |= stored[:, col * per + j] << np.uint64(q.bits * j)
    return {"qweight": _to_int32(qweight), "qzeros": _to_int32(qzeros), "scales": q.scales.t().contiguous(),
            "g_idx": torch.from_numpy(q.g_idx.astype(np.int32))}


def gptq_reference(t: dict[str, torch.Tensor], bits: int, group: int) -> torch.Tensor:
    """AutoGPTQ's own dequantization (v1 zeros) of one layer: (out, in) float32."""
    module = _load_source("autogptq_qlinear_cuda", AUTOGPTQ)
    inp, out = t["g_idx"].numel(), t["scales"].shape[1]
    layer = module.QuantLinear(bits, group, inp, out, False, weight_dtype=torch.float32)
    layer.autogptq_cuda_available = False
    layer.qweight, layer.qzeros, layer.g_idx = t["qweight"], t["qzeros"], t["g_idx"]
    layer.scales = t["scales"].float()
    with torch.no_grad():
        return layer(torch.eye(inp)).t().contiguous()  # x @ W^T with x = I


# ---- AWQ --------------------------------------------------------------------------------------

def awq_tensors(q: Quantized) -> dict[str, torch.Tensor]:
    """qweight (in, out/8) and qzeros (groups, out/8): word position j holds column 8c + ORDER[j]."""
    def pack(values: np.ndarray) -> torch.Tensor:  # (rows, out) -> (rows, out / 8)
        values = values.astype(np.uint64)
        words = np.zeros((values.shape[0], values.shape[1] // 8), dtype=np.uint64)
        for c in range(words.shape[1]):
            for j in range(8):
                words[:, c] |= values[:, 8 * c + AWQ_ORDER[j]] << np.uint64(4 * j)
        return _to_int32(words)
    return {"qweight": pack(q.codes.T), "qzeros": pack(q.zeros.T), "scales": q.scales.t().contiguous()}


def awq_reference(t: dict[str, torch.Tensor], group: int) -> torch.Tensor:
    module = _load_source("autoawq_packing_utils", AUTOAWQ)
    w = module.dequantize_gemm(t["qweight"], t["qzeros"], t["scales"].float(), 4, group)
    return w.t().contiguous()


# ---- compressed-tensors -----------------------------------------------------------------------

def ct_scheme(bits: int, strategy: str, group: int | None, symmetric: bool, actorder: bool = False):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=group if strategy == "group" else None,
                            actorder="group" if actorder else None)
    return QuantizationScheme(targets=["Linear"], weights=args)


def ct_tensors(q: Quantized, symmetric: bool) -> dict[str, torch.Tensor]:
    """compressed-tensors' own packing of signed codes (and signed zero points when asymmetric)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    offset = 1 << (q.bits - 1)
    signed = torch.from_numpy(q.codes - offset).to(torch.int8)
    out = {"weight_packed": pack_to_int32(signed, q.bits), "weight_scale": q.scales.contiguous(),
           "weight_shape": torch.tensor(list(q.codes.shape))}
    if not symmetric:
        out["weight_zero_point"] = pack_to_int32(torch.from_numpy(q.zeros - offset).to(torch.int8), q.bits, packed_dim=0)
    return out


def ct_reference(t: dict[str, torch.Tensor], scheme) -> torch.Tensor:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    state = dict(t)
    state["weight_scale"] = t["weight_scale"].float()
    return PackedQuantizationCompressor.decompress(state, scheme)["weight"].float()


# ---- whole checkpoints ------------------------------------------------------------------------

def ct_config(bits: int, strategy: str, group: int | None, symmetric: bool, ignore: list[str]) -> dict:
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy,
               "group_size": group if strategy == "group" else None, "dynamic": False, "actorder": None,
               "observer": "minmax", "observer_kwargs": {}, "block_structure": None}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}},
            "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None, "sparsity_config": {}}


def write_quantized(float_dir: str | Path, out_dir: str | Path, fmt: str, *, bits: int = 4, group: int = 32,
                    act_order: bool = False, sym: bool = False, v1: bool = True, strategy: str = "group",
                    layers: tuple[str, ...] = TEXT_LINEARS, ignore_spelling: str = "file", seed: int = 0,
                    float_dtype: torch.dtype = torch.float16, reference: bool = True) -> dict[str, torch.Tensor]:
    """Turn a float hub-layout checkpoint into a quantized one; return the reference (out, in)
    weights of the quantized layers (by checkpoint name, float32), from each format's own code.

    Float tensors are stored in ``float_dtype`` (the released checkpoints use float16).
    ``reference=False`` (benchmarks) skips the reference code and returns the weights the
    codes define.
    """
    float_dir, out_dir = Path(float_dir), Path(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config = json.loads((float_dir / "config.json").read_text())
    state = {k: v.to(float_dtype) for k, v in load_file(float_dir / "model.safetensors").items()}
    names = sorted({m.group(1) for k in state if (m := TEXT_LINEAR.match(k)) and m.group(2) in layers})
    refs: dict[str, torch.Tensor] = {}
    for k, name in enumerate(names):
        out, inp = state[name + ".weight"].shape
        del state[name + ".weight"]
        if fmt == "gptq":
            q = random_quantized(out, inp, bits, group, act_order=act_order, sym=sym, seed=seed * 1000 + k,
                                 zero_low=1, zero_high=(1 << bits) - (0 if v1 else 1))
            # v1 stores zero - 1, so its zero points span 1 .. 2**bits; v2's span 0 .. 2**bits - 1, and
            # the v2 case keeps to 1 .. 2**bits - 1, which AutoGPTQ (v1 only) can read as a reference
            t = gptq_tensors(q, v1=v1)
            if reference:
                refs[name] = gptq_reference(gptq_tensors(q, v1=True), bits, q.group)  # AutoGPTQ reads v1 only
        elif fmt == "awq":
            q = random_quantized(out, inp, 4, group, seed=seed * 1000 + k)
            t = awq_tensors(q)
            if reference:
                refs[name] = awq_reference(t, q.group)
        else:
            q = random_quantized(out, inp, bits, -1 if strategy == "channel" else group, sym=sym,
                                 seed=seed * 1000 + k)
            t = ct_tensors(q, symmetric=sym)
            if reference:
                refs[name] = ct_reference(t, ct_scheme(bits, strategy, group, sym))
        if not reference:
            refs[name] = q.weight()
        assert torch.equal(refs[name], q.weight()), f"{fmt} reference disagrees with the definition on {name}"
        state.update({f"{name}.{s}": v for s, v in t.items()})
    if fmt == "gptq":
        qc = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act_order, "sym": sym,
              "damp_percent": 0.01, "true_sequential": True, "static_groups": False,
              "checkpoint_format": "gptq" if v1 else "gptq_v2", "model_file_base_name": "model"}
    elif fmt == "awq":
        qc = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": ["visual"] if ignore_spelling == "file" else ["model.visual"]}
    else:
        ignore = ["lm_head", "re:visual.*"] if ignore_spelling == "file" else ["lm_head", "re:.*visual.*"]
        qc = ct_config(bits, strategy, group, sym, ignore)
    config["quantization_config"] = qc
    config["torch_dtype"] = str(float_dtype).replace("torch.", "")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    return refs


def write_dequantized(quant_dir: str | Path, refs: dict[str, torch.Tensor], out_dir: str | Path) -> None:
    """The float checkpoint whose weights are the quantized one's dequantized values (float32)."""
    quant_dir, out_dir = Path(quant_dir), Path(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config = json.loads((quant_dir / "config.json").read_text())
    config.pop("quantization_config")
    config["torch_dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    state = {}
    for name, t in load_file(quant_dir / "model.safetensors").items():
        layer, _, suffix = name.rpartition(".")
        if layer in refs:
            if suffix == "bias":
                state[name] = t.float()
            continue
        state[name] = t.float()
    state.update({f"{name}.weight": w for name, w in refs.items()})
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
