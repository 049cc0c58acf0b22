"""Property tests for vlutils.rope against a plain, token-by-token statement of the semantics.

The slow reference below is written from the rules (not from transformers' code): it walks
each row, gives text tokens consecutive ids, gives a block's token (i, j, k) the ids
(P + trunc(i * D), P + j, P + k), and resumes text at the block's largest id + 1.
It needs no reference install, so these run everywhere in a second or two.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlutils.rope import get_rope_index

VS, VE, IMG, VID, PAD = 151652, 151653, 151655, 151656, 151643


def slow_reference(rows, items, model_type, merge, tps):
    """rows: list of (padding_left, tokens); items: per block (kind, t, h, w, seconds) in order."""
    length = max(pad + len(tokens) for pad, tokens in rows)
    positions, deltas = [], []
    queue = list(items)
    for pad, tokens in rows:
        ids = [[1] * length for _ in range(3)]
        next_id, col, i = 0, pad, 0
        while i < len(tokens):
            opens = i > 0 and tokens[i - 1] == VS and tokens[i] in (IMG, VID)
            if not opens:
                for axis in range(3):
                    ids[axis][col] = next_id
                next_id, col, i = next_id + 1, col + 1, i + 1
                continue
            kind, t, h, w, seconds = queue.pop(0)
            hh, ww = h // merge, w // merge
            biggest = next_id
            for f in range(t):
                if model_type == "qwen2_5_vl":
                    step = 0.0 if kind == "image" else np.float32(seconds)
                    dt = int(np.trunc(np.float32(np.float32(f) * np.float32(step)) * np.float32(tps)))
                else:
                    dt = f
                for y in range(hh):
                    for x in range(ww):
                        triple = (next_id + dt, next_id + y, next_id + x)
                        for axis in range(3):
                            ids[axis][col] = triple[axis]
                        biggest = max(biggest, *triple)
                        col, i = col + 1, i + 1
            next_id = biggest + 1
        positions.append(ids)
        deltas.append(next_id - length)
    return torch.tensor(positions).permute(1, 0, 2), torch.tensor(deltas).unsqueeze(1)


@st.composite
def batches(draw):
    model_type = draw(st.sampled_from(["qwen2_vl", "qwen2_5_vl"]))
    merge = draw(st.sampled_from([1, 2]))
    tps = draw(st.sampled_from([1, 2, 25]))
    rows, items = [], []
    for _ in range(draw(st.integers(1, 3))):
        tokens = []
        for _ in range(draw(st.integers(0, 3))):
            tokens += draw(st.lists(st.integers(0, 1000), max_size=4))
            kind = draw(st.sampled_from(["image", "video"]))
            t = 1 if kind == "image" else draw(st.integers(1, 9))
            h, w = merge * draw(st.integers(1, 4)), merge * draw(st.integers(1, 4))
            seconds = draw(st.sampled_from([0.083, 0.25, 0.5, 0.99, 1.0, 1.0333, 1.5, 2.0]))
            items.append((kind, t, h, w, seconds))
            tokens += [VS] + [IMG if kind == "image" else VID] * (t * h * w // merge**2) + [VE]
        tokens += draw(st.lists(st.integers(0, 1000), min_size=1, max_size=4))
        rows.append(tokens)
    width = max(len(r) for r in rows)
    return model_type, merge, tps, [(width - len(r), r) for r in rows], items


@settings(max_examples=200, deadline=None, derandomize=True)
@given(batches())
def test_matches_the_rules_token_by_token(batch):
    model_type, merge, tps, rows, items = batch
    length = max(pad + len(tokens) for pad, tokens in rows)
    ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, (pad, tokens) in enumerate(rows):
        ids[b, pad:] = torch.tensor(tokens)
        mask[b, pad:] = 1
    images = [[t, h, w] for kind, t, h, w, _ in items if kind == "image"]
    videos = [[t, h, w] for kind, t, h, w, _ in items if kind == "video"]
    seconds = [s for kind, *_, s in items if kind == "video"]
    pos, deltas = get_rope_index(
        ids, torch.tensor(images).view(-1, 3), torch.tensor(videos).view(-1, 3), mask,
        torch.tensor(seconds, dtype=torch.float32), model_type=model_type, spatial_merge_size=merge, tokens_per_second=tps,
    )
    expected_pos, expected_deltas = slow_reference(rows, items, model_type, merge, tps)
    assert torch.equal(pos, expected_pos)
    assert torch.equal(deltas, expected_deltas)
    # Invariants the decode step relies on: max id + 1 - padded length, and padding is 1.
    valid = mask.bool()
    row_max = torch.where(valid, pos.amax(0), -1).amax(1, keepdim=True)
    assert torch.equal(deltas, row_max + 1 - length)
    assert bool((pos[:, ~valid] == 1).all())
