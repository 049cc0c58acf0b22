"""A ``build_sample`` dict <-> one Parquet row, losslessly.

Pixels are not stored as ``pixel_values`` (float32, 4 bytes per value and repeated for still
images) but as the resized uint8 media that produced them (Qwen-VL: its S x S resized images); reading patchifies them again,
which gives bit-identical ``pixel_values`` because patchify is a pure function of those bytes.
Every row is checked when it is written: if the stored media do not reproduce the sample's
pixels (e.g. ``truncation="shrink"`` re-fetched smaller media), the raw float32 tensor is
stored instead. Shard compression (zstd) makes the bytes compact.

Schema (one row per sample; ``SCHEMA`` below):

=================== ============================================ ==============================
column              type                                         meaning
=================== ============================================ ==============================
source, index       string, int64                                record: source name, 0-based line
num_tokens          int64                                        sequence length L
num_patches         int64                                        vision encoder length (sum t*h*w)
input_ids, labels   list<int32>                                  length L
position_ids        list<int32>                                  flattened; shape in ``meta``
image_grid_thw,     list<int32>                                  flattened (n, 3); null if none
video_grid_thw
second_per_grid_ts  list<float64>                                null if none
images              list<struct<height, width, data: binary>>    HxWx3 uint8 RGB, resized
videos              list<struct<frames, height, width, data>>    Tx3xHxW uint8, sampled+resized
pixel_values,       binary (nullable)                            raw float32 fallback only
pixel_values_videos
extra               list<struct<name, data: binary>>             other tensors build_sample returns
meta                string (JSON)                                dtype and shape of every tensor
=================== ============================================ ==============================
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

_INT_LISTS = ("input_ids", "labels", "position_ids", "image_grid_thw", "video_grid_thw")
_FLOAT_LISTS = ("second_per_grid_ts",)
_PIXELS = {"pixel_values": "images", "pixel_values_videos": "videos"}
_SCALARS = ("num_tokens", "num_patches")


def schema():
    """The pyarrow schema of every shard (fixed, so shards concatenate)."""
    import pyarrow as pa

    ints = pa.list_(pa.int32())
    return pa.schema([
        ("source", pa.string()), ("index", pa.int64()), ("num_tokens", pa.int64()), ("num_patches", pa.int64()),
        *[(key, ints) for key in _INT_LISTS],
        ("second_per_grid_ts", pa.list_(pa.float64())),
        ("images", pa.list_(pa.struct([("height", pa.int32()), ("width", pa.int32()), ("data", pa.binary())]))),
        ("videos", pa.list_(pa.struct([("frames", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
                                       ("data", pa.binary())]))),
        ("pixel_values", pa.binary()), ("pixel_values_videos", pa.binary()),
        ("extra", pa.list_(pa.struct([("name", pa.string()), ("data", pa.binary())]))),
        ("meta", pa.string()),
    ])


def _uint8_image(image: Any) -> np.ndarray:
    array = np.array(image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image, dtype=np.uint8)
    return np.ascontiguousarray(array)


def _uint8_video(frames: Any) -> np.ndarray:
    import torch

    tensor = frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.asarray(frames))
    as_bytes = tensor.to(torch.uint8)
    if not torch.equal(as_bytes.to(tensor.dtype), tensor):
        raise ValueError("video frames are not whole numbers in 0..255")
    return np.ascontiguousarray(as_bytes.numpy())


def encode_row(sample: dict, images: list, videos: list, preset: Any) -> dict:
    """The Parquet row of ``sample``; ``images`` / ``videos`` are the fetched media it was built from."""
    import torch

    row: dict[str, Any] = {"extra": [], "images": None, "videos": None}
    meta: dict[str, Any] = {}
    stored = {
        "images": [_uint8_image(i) for i in images],
        "videos": [_uint8_video(v) for v in videos],
    }
    for key, value in sample.items():
        if key in _PIXELS:
            continue
        if value is None:
            meta[key] = None
            row[key] = None
        elif isinstance(value, torch.Tensor):
            meta[key] = [str(value.dtype).removeprefix("torch."), list(value.shape)]
            if key in _SCALARS:
                row[key] = int(value.item())  # the size columns; the tensor itself goes to extra
            if key in _INT_LISTS:
                flat = value.reshape(-1).to(torch.int64)
                if flat.numel() and (int(flat.min()) < -2**31 or int(flat.max()) >= 2**31):
                    raise ValueError(f"{key} does not fit in int32")
                row[key] = flat.tolist()
            elif key in _FLOAT_LISTS:
                row[key] = value.reshape(-1).to(torch.float64).tolist()
            else:
                row["extra"].append({"name": key, "data": value.contiguous().numpy().tobytes()})
        elif key in _SCALARS and isinstance(value, int):
            row[key] = value
        else:
            meta[key] = ["json", value]  # plain Python values (lists of floats, strings)
    remade = _remake(stored["images"] or None, stored["videos"] or None, preset)
    for key, media in _PIXELS.items():
        value = sample.get(key)
        if value is None:
            meta[key] = None
            row[key] = None
            continue
        meta[key] = [str(value.dtype).removeprefix("torch."), list(value.shape)]
        if remade[key] is not None and remade[key].dtype == value.dtype and torch.equal(remade[key], value):
            meta[key].append(media)
            row[key] = None
            if media == "images":
                row["images"] = [{"height": a.shape[0], "width": a.shape[1], "data": a.tobytes()} for a in stored["images"]]
            else:
                row["videos"] = [{"frames": a.shape[0], "height": a.shape[2], "width": a.shape[3], "data": a.tobytes()}
                                 for a in stored["videos"]]
        else:  # media were changed inside build_sample (shrink): keep the exact tensor
            meta[key].append("raw")
            row[key] = value.contiguous().numpy().tobytes()
    row["meta"] = json.dumps(meta, separators=(",", ":"))
    return row


def decode_row(row: dict, preset: Any, with_pixels: bool = True) -> dict:
    """The ``build_sample`` dict (plus ``source`` and ``index``) a row was written from."""
    import torch

    meta = json.loads(row["meta"])
    sample: dict[str, Any] = {}
    media = {"images": None, "videos": None}
    if with_pixels:
        if row.get("images"):
            media["images"] = [np.frombuffer(bytearray(i["data"]), np.uint8).reshape(i["height"], i["width"], 3)
                               for i in row["images"]]
        if row.get("videos"):
            media["videos"] = [torch.frombuffer(bytearray(v["data"]), dtype=torch.uint8).reshape(
                v["frames"], 3, v["height"], v["width"]) for v in row["videos"]]
    remade = _remake(media["images"], media["videos"], preset) if with_pixels else {}
    extra = {e["name"]: e["data"] for e in row.get("extra") or []}
    for key, info in meta.items():
        if info is None:
            sample[key] = None
        elif info[0] == "json":
            sample[key] = info[1]
        elif key in _PIXELS:
            if not with_pixels:
                continue
            dtype, shape = getattr(torch, info[0]), info[1]
            if info[2] == "raw":
                sample[key] = _from_bytes(row[key], dtype, shape)
            else:
                sample[key] = remade[key].to(dtype).reshape(shape)
        else:
            dtype, shape = getattr(torch, info[0]), info[1]
            if key in extra:
                sample[key] = _from_bytes(extra[key], dtype, shape)
            else:
                sample[key] = torch.tensor(row[key], dtype=torch.float64 if key in _FLOAT_LISTS else torch.int64
                                           ).to(dtype).reshape(shape)
    for key in _SCALARS:
        if key not in meta and row.get(key) is not None:
            sample[key] = int(row[key])
    sample["source"], sample["index"] = row["source"], int(row["index"])
    return sample


def _remake(images: list | None, videos: list | None, preset: Any) -> dict:
    """Pixel tensors from stored uint8 media: patchify, or Qwen-VL's normalisation of its
    already resized S x S images (a :class:`~vlutils.image_qwen_vl.QwenVLPreset`)."""
    from ..image_qwen_vl import QwenVLPreset

    if isinstance(preset, QwenVLPreset):
        return {"pixel_values": preset.pixel_values(images or []), "pixel_values_videos": None}
    from ..processor import patchify

    return patchify(images=images, videos=videos, model_type=preset)


def _from_bytes(data: bytes, dtype, shape):
    import torch

    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
