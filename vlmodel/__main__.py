"""Chat with a checkpoint from the command line.

    python -m vlmodel --model DIR --image PATH_OR_URL [--image ...] [--video PATH_OR_URL] --prompt "..."

Images and videos are loaded by ``vlutils.process_vision_info`` (same rules as
qwen-vl-utils), turned into patches, placed in the Qwen chat template, tokenized with
the checkpoint's ``tokenizer.json`` (the ``tokenizers`` package) and answered with
streaming output.  A report (prompt tokens, visual tokens, speed) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

SYSTEM = "You are a helpful assistant."
# CLIP normalisation used by every Qwen2-VL-family image processor.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def patchify(frames: torch.Tensor, patch: int, temporal: int, merge: int) -> tuple[torch.Tensor, list[int]]:
    """(T, C, H, W) pixels in 0..255 -> (patch rows in merge-block order, [t, h, w] grid).

    Pixels are scaled to 0..1 and normalised; T is padded to a multiple of ``temporal``
    by repeating the last frame (an image is one frame, repeated).
    """
    x = frames.float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    if x.shape[0] % temporal:
        x = torch.cat([x, x[-1:].expand(temporal - x.shape[0] % temporal, -1, -1, -1)])
    t, c, h, w = x.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = x.view(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    # -> (gt, block_row, block_col, row_in_block, col_in_block, c, temporal, patch, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), [gt, gh, gw]


def build_prompt(tokenizer, config, blocks: list[tuple[str, int]], prompt: str, system: str = SYSTEM) -> list[int]:
    """Token ids of the Qwen chat template with one ``(kind, n_tokens)`` vision block per media item."""

    def special(token: str) -> int:
        tid = tokenizer.token_to_id(token)
        if tid is None:
            raise SystemExit(f"tokenizer.json has no {token} token")
        return tid

    def text(s: str) -> list[int]:
        return tokenizer.encode(s, add_special_tokens=False).ids

    start, end = special("<|im_start|>"), special("<|im_end|>")
    ids = [start] + text(f"system\n{system}") + [end] + text("\n") + [start] + text("user\n")
    for kind, n in blocks:
        pad = config.image_token_id if kind == "image" else config.video_token_id
        ids += [config.vision_start_token_id] + [pad] * n + [config.vision_end_token_id]
    ids += text(prompt) + [end] + text("\n") + [start] + text("assistant\n")
    return ids


def stop_ids(model_dir: str, config) -> list[int]:
    """eos ids from generation_config.json when present (chat models stop at <|im_end|>), else config.json."""
    ids = list(config.eos_token_id)
    path = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            eos = json.load(fh).get("eos_token_id", [])
        ids += eos if isinstance(eos, list) else [eos]
    return sorted(set(ids))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmodel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("--image", action="append", default=[], help="image path or URL (repeatable)")
    p.add_argument("--video", action="append", default=[], help="video path or URL (repeatable)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", default=SYSTEM)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-pixels", type=int, help="per image/frame pixel budget passed to vlutils")
    p.add_argument("--fps", type=float, help="video sampling rate passed to vlutils")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: float32 on CPU, the checkpoint's dtype elsewhere")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    import tokenizers
    import vlutils

    import vlmodel

    tok_path = os.path.join(args.model, "tokenizer.json")
    if not os.path.exists(tok_path):
        raise SystemExit(f"{tok_path} not found")
    tokenizer = tokenizers.Tokenizer.from_file(tok_path)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if dtype is None and args.device == "cpu":
        dtype = torch.float32  # bf16 matmuls are slow on most CPUs
    model = vlmodel.from_pretrained(args.model, dtype=dtype, device=args.device)
    cfg, vc = model.config, model.config.vision

    content: list[dict] = []
    for src in args.image:
        content.append({"type": "image", "image": src, **({"max_pixels": args.max_pixels} if args.max_pixels else {})})
    for src in args.video:
        item = {"type": "video", "video": src}
        item.update({k: v for k, v in (("max_pixels", args.max_pixels), ("fps", args.fps)) if v})
        content.append(item)
    messages = [{"role": "user", "content": content + [{"type": "text", "text": args.prompt}]}]
    images, videos, video_kwargs = vlutils.process_vision_info(
        messages, return_video_kwargs=True, image_patch_size=vc.patch_size
    )

    media: dict = {}
    blocks: list[tuple[str, int]] = []
    merge = vc.spatial_merge_size
    for kind, items in (("image", images or []), ("video", videos or [])):
        rows, grids = [], []
        for item in items:
            frames = torch.from_numpy(np.asarray(item.convert("RGB"))).permute(2, 0, 1)[None] if kind == "image" else item
            patches, grid = patchify(frames, vc.patch_size, vc.temporal_patch_size, merge)
            rows.append(patches)
            grids.append(grid)
            blocks.append((kind, grid[0] * grid[1] * grid[2] // merge**2))
        if rows:
            key = "pixel_values" if kind == "image" else "pixel_values_videos"
            media[key] = torch.cat(rows).to(args.device)
            media[f"{kind}_grid_thw"] = torch.tensor(grids, device=args.device)
    if videos and cfg.model_type == "qwen2_5_vl":
        media["second_per_grid_ts"] = [vc.temporal_patch_size / fps for fps in video_kwargs["fps"]]
    # vlutils lists images then videos; the prompt places them in the same order.
    ids = torch.tensor([build_prompt(tokenizer, cfg, blocks, args.prompt, args.system)], device=args.device)

    answer: list[int] = []
    shown = ""
    t0 = time.perf_counter()
    t_first = None
    stream = vlmodel.stream(
        model, ids, **media, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
        temperature=args.temperature or 1.0, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        stop_token_ids=stop_ids(args.model, cfg),
    )
    stops = set(stop_ids(args.model, cfg))
    for token in stream:
        if t_first is None:
            t_first = time.perf_counter()
        tid = int(token[0])
        if tid in stops:
            break
        answer.append(tid)
        text = tokenizer.decode(answer, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write(tokenizer.decode(answer, skip_special_tokens=True)[len(shown):] + "\n")
    t_end = time.perf_counter()
    visual = sum(n for _, n in blocks)
    decode_s = t_end - (t_first or t_end)
    rate = (len(answer) - 1) / decode_s if len(answer) > 1 and decode_s > 0 else float("nan")
    print(
        f"[vlmodel] prompt tokens: {ids.shape[1]} (visual tokens: {visual}) | "
        f"prefill {(t_first or t_end) - t0:.2f}s | {len(answer)} new tokens, {rate:.1f} tokens/s "
        f"| {cfg.model_type} {model.dtype} on {args.device}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
