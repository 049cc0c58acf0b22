"""A tiny byte-level BPE tokenizer with the Qwen2-VL special tokens at their real ids.

Built in memory with the ``tokenizers`` library (no download): the 256 byte symbols,
a few merges learned from a short corpus, and the special tokens placed at Qwen's ids so
that prompts tokenize to the ids the real checkpoints use for them.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}

CORPUS = [
    "system You are a helpful assistant. user assistant Describe this image. What happens in the video?",
    "<0.0 seconds> <0.5 seconds> <1.2 seconds> <10.8 seconds> seconds Picture 1: Video 2: compare them",
    "The quick brown fox jumps over the lazy dog. A cat sits on the mat.\n\n",
]


def tiny_qwen_tokenizer(special: dict[str, int] | None = None) -> Tokenizer:
    """The tokenizer; ``special`` places the special tokens at other ids (e.g. SMALL_SPECIAL)."""
    special = SPECIAL if special is None else special
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    trainer_tok.train_from_iterator(CORPUS, trainer=trainer)
    vocab = dict(trainer_tok.get_vocab())
    merges = _merges(trainer_tok)
    vocab.update(special)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tok


def _merges(tok: Tokenizer) -> list[tuple[str, str]]:
    import json

    model = json.loads(tok.to_str())["model"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


# Qwen3.5's vocabulary puts the same special tokens at other ids.
QWEN35_SPECIAL = {
    "<|endoftext|>": 248044,
    "<|im_start|>": 248045,
    "<|im_end|>": 248046,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
}
