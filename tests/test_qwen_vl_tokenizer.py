"""Qwen-VL's tokenizer and prompt builders against the original remote code's stored outputs
(fixtures/qwen_vl_inputs, made by scripts/make_qwen_vl_input_fixtures.py with transformers 4.32.0)."""

from __future__ import annotations

import shutil
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _qwen_vl_fixtures import VOCAB, cases, list_to_items, reference, tokenizer
from vlutils import load_tokenizer
from vlutils.chat_qwen_vl import conversation_turns, from_list_format, make_context, training_pieces
from vlutils.errors import InvalidMessageError, TokenizerError
from vlutils.tiktoken_qwen import IMG_TOKEN_SPAN, VL_TAGS, QwenTiktokenTokenizer, read_tiktoken_ranks


def _allowed(name: str):
    return "all" if name == "all" else VL_TAGS


def test_encode_and_decode_equal_the_original_on_generated_strings():
    tok = tokenizer()
    pairs = list(zip(cases()["encode"], reference()["encode"]))
    assert len(pairs) > 300
    decoded = 0
    for case, ref in pairs:
        ids = tok.encode(case["text"], allowed_special=_allowed(case["allowed"]))
        assert ids == ref["ids"], case
        if "decoded" in ref:
            decoded += 1
            assert tok.decode(ids) == ref["decoded"], case
            assert tok.decode(ids, skip_special_tokens=True) == ref["decoded_skip"], case
    assert decoded > 300


def test_image_span_is_258_ids_with_the_reference_bytes_as_ids():
    tok = tokenizer()
    ids = tok.encode("Picture 1: <img>a/é.png</img>\n")
    start = ids.index(tok.img_start_id)
    span = ids[start:start + IMG_TOKEN_SPAN + 2]
    assert span[-1] == tok.img_end_id and len(span) == 258
    reference_bytes = "a/é.png".encode("utf-8")
    assert span[1:1 + len(reference_bytes)] == list(reference_bytes)
    assert set(span[1 + len(reference_bytes):-1]) == {tok.img_pad_id}
    assert tok.image_references(ids) == ["a/é.png"]


def test_special_ids_follow_the_ranks_in_the_original_order():
    tok = tokenizer()
    n = len(read_tiktoken_ranks(VOCAB))
    assert (tok.eod_id, tok.im_start_id, tok.im_end_id) == (n, n + 1, n + 2)
    # with the real vocabulary (151643 ranks) these are the config's image_start_id 151857 and its neighbours
    assert (tok.ref_start_id, tok.img_start_id, tok.img_end_id, tok.img_pad_id) == (
        n + 208, n + 214, n + 215, n + 216)
    assert tok.vocab_size == n + 3 + 205 + 9 and tok.pad_token_id == tok.eod_id


def test_bad_texts_raise_where_the_original_raises():
    tok = tokenizer()
    for case, ref in zip(cases()["errors"], reference()["errors"]):
        assert ref["raises"] is not None
        with pytest.raises(TokenizerError):
            tok.encode(case["text"], allowed_special=_allowed(case["allowed"]))


def test_from_list_format_equals_the_original():
    for items, ref in zip(cases()["list_formats"], reference()["list_formats"]):
        assert from_list_format(items) == ref


def test_make_context_equals_the_original_with_history_systems_and_windows():
    tok = tokenizer()
    truncated = 0
    for case, ref in zip(cases()["contexts"], reference()["contexts"]):
        history = [tuple(pair) for pair in ref["history"]]
        raw, ids = make_context(tok, ref["query"], history, case["system"], case["max_window_size"])
        assert (raw, ids) == (ref["raw_text"], ref["ids"]), case
        truncated += raw.count("<|im_start|>user") < len(history) + 1
    assert truncated >= 3  # the window dropped old turns in several cases


def test_messages_give_the_original_prompt():
    """vlutils messages (image/text/box items) -> the ids of from_list_format + make_context."""
    tok = tokenizer()
    checked = 0
    for case, ref in zip(cases()["contexts"], reference()["contexts"]):
        if case["max_window_size"] != 6144 or any(r is None for _, r in case["history"]):
            continue
        messages = [{"role": "system", "content": case["system"]}]
        for query, response in case["history"]:
            messages.append({"role": "user", "content": _content(query)})
            messages.append({"role": "assistant", "content": response})
        messages.append({"role": "user", "content": _content(case["query"])})
        history, query = conversation_turns(messages).history_and_query()
        assert make_context(tok, query, history, case["system"]) == (ref["raw_text"], ref["ids"])
        checked += 1
    assert checked > 30


def _content(query):
    return list_to_items(query["list"]) if isinstance(query, dict) else query


def test_training_ids_and_labels_equal_finetune_preprocess():
    tok = tokenizer()
    for ref in reference()["finetune"]:
        messages = [{"role": t["from"], "content": t["value"]} for t in ref["conversation"]]
        ids, labels = training_pieces(tok, conversation_turns(messages))
        assert ids == ref["input_ids"]
        assert labels == ref["labels"]


def test_assistant_labels_cover_only_replies():
    tok = tokenizer()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    ids, labels = training_pieces(tok, conversation_turns(messages), label_style="assistant")
    kept = [i for i, label in zip(ids, labels) if label != -100]
    assert kept == tok.encode("hello there") + [tok.im_end_id]


def test_conversation_errors_are_typed():
    with pytest.raises(InvalidMessageError, match="alternate"):
        conversation_turns([{"role": "assistant", "content": "x"}])
    with pytest.raises(InvalidMessageError, match="no video"):
        conversation_turns([{"role": "user", "content": [{"type": "video", "video": "a.mp4"}]}])
    with pytest.raises(InvalidMessageError, match="message 0, item 0"):
        conversation_turns([{"role": "user", "content": [{"type": "box", "box": [[1, 2, 3]]}]}])
    with pytest.raises(InvalidMessageError, match="end with a user"):
        conversation_turns([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]).history_and_query()


def test_tokenizer_pickles_for_worker_processes():
    import pickle

    tok = tokenizer()
    again = pickle.loads(pickle.dumps(tok))
    text = "Picture 1: <img>a.png</img>\nhello <ref>x</ref>"
    assert again.encode(text) == tok.encode(text) and again.img_start_id == tok.img_start_id


def test_load_tokenizer_reads_files_and_folders(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(VOCAB, folder / "qwen.tiktoken")
    for path in (VOCAB, folder, str(folder / "qwen.tiktoken")):
        tok = load_tokenizer(path)
        assert isinstance(tok, QwenTiktokenTokenizer)
        assert tok.encode("Hello world") == tokenizer().encode("Hello world")
    from tokenizers import Tokenizer, models

    json_file = tmp_path / "json" / "tokenizer.json"
    json_file.parent.mkdir()
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(json_file))
    assert load_tokenizer(json_file.parent).token_to_id("a") == 0


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(TokenizerError, match="no such"):
        load_tokenizer(tmp_path / "missing.tiktoken")
    with pytest.raises(TokenizerError, match="no tokenizer.json or qwen.tiktoken"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64!! 0\n")
    with pytest.raises(TokenizerError, match="line 1"):
        load_tokenizer(bad)
    gaps = tmp_path / "gaps.tiktoken"
    gaps.write_text("YQ== 0\nYg== 2\n")
    with pytest.raises(TokenizerError, match="without gaps"):
        load_tokenizer(gaps)
    broken = tmp_path / "j" / "tokenizer.json"
    broken.parent.mkdir()
    broken.write_text("{")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(broken)


def test_format_chat_gives_the_original_raw_text_and_reply_spans():
    """format_chat / format_chat_with_spans with model_type="qwen_vl" (the family's ChatFormat)."""
    from vlutils.chat import format_chat, format_chat_with_spans

    tok = tokenizer()
    for case, ref in zip(cases()["contexts"], reference()["contexts"]):
        if case["max_window_size"] != 6144 or any(r is None for _, r in case["history"]):
            continue
        messages = [{"role": "system", "content": case["system"]}]
        for query, response in case["history"]:
            messages += [{"role": "user", "content": _content(query)}, {"role": "assistant", "content": response}]
        messages.append({"role": "user", "content": _content(case["query"])})
        assert format_chat(messages, model_type="qwen_vl") == ref["raw_text"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo <box>(1,2),(3,4)</box>"},
                {"role": "user", "content": "again"}, {"role": "assistant", "content": "ok"}]
    text, spans = format_chat_with_spans(messages, model_type="qwen_vl")
    assert [text[a:b] for _, a, b in spans] == ["yo <box>(1,2),(3,4)</box><|im_end|>", "ok<|im_end|>"]
    assert [m for m, _, _ in spans] == [1, 3]
    ids, _ = training_pieces(tok, conversation_turns(messages))
    assert tok.decode(ids) == text
    assert format_chat(messages[:1], model_type="qwen_vl", system_prompt=None).startswith(
        "<|im_start|>system\n<|im_end|>\n")


_PLAIN = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60).filter(lambda t: "<" not in t)


@settings(max_examples=150, deadline=None)
@given(text=_PLAIN, reference=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    lambda t: "<" not in t and len(unicodedata.normalize("NFC", t).encode("utf-8")) <= 256))
def test_round_trip_and_image_span_properties(text, reference):
    """Any text decodes back to its NFC form; any image reference of <= 256 bytes becomes a
    258-id span whose bytes read back as the NFC reference."""
    tok = tokenizer()
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)
    ids = tok.encode(f"{text}<img>{reference}</img>{text}")
    start = ids.index(tok.img_start_id)
    assert ids[start + 257] == tok.img_end_id
    assert tok.image_references(ids) == [unicodedata.normalize("NFC", reference)]
