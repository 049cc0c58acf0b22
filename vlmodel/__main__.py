"""Chat with a checkpoint from the command line.

    python -m vlmodel --model DIR --image PATH_OR_URL [--image ...] [--video PATH_OR_URL] --prompt "..."

Images and videos are loaded, patchified and placed in the Qwen chat template by
``vlutils.build_inputs`` (same rules as qwen-vl-utils), tokenized with the checkpoint's
``tokenizer.json`` (the ``tokenizers`` package) and answered with streaming output.
A report (prompt tokens, visual tokens, speed) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from vlutils.clitext import plain

def messages_for(images: list[str], videos: list[str], prompt: str, max_pixels: int | None = None,
                 fps: float | None = None) -> list[dict]:
    """One user turn: the images, then the videos, then the prompt (qwen-vl-utils message format)."""
    content: list[dict] = []
    for src in images:
        content.append({"type": "image", "image": src, **({"max_pixels": max_pixels} if max_pixels else {})})
    for src in videos:
        item = {"type": "video", "video": src}
        item.update({k: v for k, v in (("max_pixels", max_pixels), ("fps", fps)) if v})
        content.append(item)
    return [{"role": "user", "content": content + [{"type": "text", "text": prompt}]}]


def model_inputs(messages: list[dict], tokenizer, config, system: str | None = None) -> dict:
    """vlutils.build_inputs with the checkpoint's vision constants (media fetch, chat template,
    patches, placeholder expansion, tokens, M-RoPE positions).  ``system=None`` keeps the
    family's default (Qwen2-VL: "You are a helpful assistant."; Qwen3: none)."""
    from vlutils.inputs import build_inputs

    vc = config.vision
    extra = {} if system is None else {"system_prompt": system}
    if config.vision_kind == "resampler":  # Qwen-VL: fixed-size images, its own prompt and tokenizer
        return build_inputs(messages, tokenizer, model_type=config.input_type, image_size=vc.image_size, **extra)
    return build_inputs(
        messages, tokenizer, model_type=config.input_type, **extra,
        tokens_per_second=vc.tokens_per_second, patch_size=vc.patch_size,
        temporal_patch_size=vc.temporal_patch_size, merge_size=vc.spatial_merge_size,
    )


def stop_ids(model_dir: str, config, tokenizer=None) -> list[int]:
    """eos ids from generation_config.json when present (chat models stop at <|im_end|>), else config.json;
    Qwen-VL-Chat also stops at <|im_end|> / <|im_start|> (its chat's stop words)."""
    ids = list(config.eos_token_id)
    ids += [getattr(tokenizer, name) for name in ("im_end_id", "im_start_id") if hasattr(tokenizer, name)]
    path = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            eos = json.load(fh).get("eos_token_id", [])
        ids += eos if isinstance(eos, list) else [eos]
    return sorted(set(ids))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmodel", description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="checkpoint directory (config.json, *.safetensors, tokenizer.json or Qwen-VL's qwen.tiktoken)")
    p.add_argument("--image", action="append", default=[], help="image path or URL (repeatable)")
    p.add_argument("--video", action="append", default=[], help="video path or URL (repeatable)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", help="system prompt (default: the family's chat-template default)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-pixels", type=int, help="per image/frame pixel budget passed to vlutils")
    p.add_argument("--fps", type=float, help="video sampling rate passed to vlutils")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: float32 on CPU (bfloat16 for a quantized checkpoint, which torch's CPU int4 "
                        "kernel runs fastest in), the checkpoint's dtype elsewhere")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    import vlmodel
    from vlutils import load_tokenizer
    from vlutils.errors import TokenizerError

    try:
        tokenizer = load_tokenizer(args.model)  # tokenizer.json, or Qwen-VL's qwen.tiktoken
    except TokenizerError as exc:
        raise SystemExit(str(exc)) from None
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if dtype is None and args.device == "cpu":
        quantized = vlmodel.ModelConfig.from_file(args.model).quantization is not None
        dtype = torch.bfloat16 if quantized else torch.float32  # bf16 float matmuls are slow on most CPUs
    model = vlmodel.from_pretrained(args.model, dtype=dtype, device=args.device)
    cfg = model.config

    messages = messages_for(args.image, args.video, args.prompt, args.max_pixels, args.fps)
    inputs = model_inputs(messages, tokenizer, cfg, args.system)
    keys = ("attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
            "second_per_grid_ts", "position_ids", "rope_deltas")
    media = {k: inputs[k].to(args.device) for k in keys if inputs.get(k) is not None}
    if "rope_deltas" not in media:  # 1-D positions (Qwen-VL): the model derives them from the mask
        media.pop("position_ids", None)
    ids = inputs["input_ids"].to(args.device)

    answer: list[int] = []
    shown = ""
    t0 = time.perf_counter()
    t_first = None
    stream = vlmodel.stream(
        model, ids, **media, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
        temperature=args.temperature or 1.0, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        stop_token_ids=stop_ids(args.model, cfg, tokenizer),
    )
    stops = set(stop_ids(args.model, cfg, tokenizer))
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
    if cfg.vision_kind == "resampler":  # num_queries positions after each <img>
        visual = int((ids == cfg.vision_start_token_id).sum()) * cfg.vision.num_queries
    else:
        visual = int(((ids == cfg.image_token_id) | (ids == cfg.video_token_id)).sum())
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
