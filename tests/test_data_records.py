"""Record formats, media path resolution, per-source defaults and spec validation (fast, no media)."""

from __future__ import annotations

import json
import sys

import pytest

from vlutils.data.records import detect_format, parse_record
from vlutils.data.spec import SourceSpec, load_spec, parse_spec
from vlutils.errors import InvalidRecordError, InvalidSpecError


def _source(**kwargs) -> SourceSpec:
    return SourceSpec(name="s", files=("/data/s.jsonl",), **kwargs)


def _parse(record, **kwargs):
    return parse_record(json.dumps(record), _source(**kwargs), "/data/s.jsonl")


def test_messages_format_resolves_paths_and_applies_defaults():
    record = {"messages": [
        {"role": "user", "content": [
            {"type": "image", "image": "a.png"},
            {"type": "image", "image": "/abs/b.png", "max_pixels": 1000},
            {"type": "image_url", "image_url": {"url": "sub/c.jpg"}},
            {"type": "video", "video": "https://host/v.mp4", "nframes": 4},
            {"type": "video", "video": ["f1.jpg", "f2.jpg"]},
            {"type": "text", "text": "hi"},
        ]},
        {"role": "assistant", "content": "ok"},
    ]}
    messages = _parse(record, image={"max_pixels": 5000, "min_pixels": 100}, video={"fps": 1.0, "max_frames": 8})
    items = messages[0]["content"]
    assert items[0] == {"type": "image", "image": "/data/a.png", "max_pixels": 5000, "min_pixels": 100}
    assert items[1] == {"type": "image", "image": "/abs/b.png", "max_pixels": 1000, "min_pixels": 100}
    assert items[2] == {"type": "image_url", "image_url": {"url": "/data/sub/c.jpg"}, "max_pixels": 5000,
                        "min_pixels": 100}
    # the item chose nframes: the source's fps default must not be added (fps + nframes is an error)
    assert items[3] == {"type": "video", "video": "https://host/v.mp4", "nframes": 4, "max_frames": 8}
    assert items[4]["video"] == ["/data/f1.jpg", "/data/f2.jpg"] and items[4]["fps"] == 1.0
    assert items[5] == {"type": "text", "text": "hi"}
    assert messages[1] == {"role": "assistant", "content": "ok"}


def test_sharegpt_both_spellings_fill_tags_in_order():
    expected = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image", "image": "/m/1.png"}, {"type": "text", "text": " and "},
                                     {"type": "video", "video": "/m/v.mp4"}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Both."}]},
        {"role": "user", "content": [{"type": "text", "text": "Next: "}, {"type": "image", "image": "/m/2.png"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Fine."}]},
    ]
    turns = [("user", "<image> and <video>?"), ("assistant", "Both."), ("user", "Next: <image>"), ("assistant", "Fine.")]
    as_messages = {"system": "Be brief.", "messages": [{"role": r, "content": t} for r, t in turns],
                   "images": ["1.png", "2.png"], "videos": ["v.mp4"]}
    as_conversations = {"system": "Be brief.", "images": ["1.png", "2.png"], "videos": ["v.mp4"],
                        "conversations": [{"from": {"user": "human", "assistant": "gpt"}[r], "value": t} for r, t in turns]}
    for record in (as_messages, as_conversations):
        assert detect_format(record) == "sharegpt"
        assert _parse(record, format="sharegpt", media_dir="/m") == expected


def test_llava_format():
    record = {"image": "coco/1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]}
    assert detect_format(record) == "llava"
    assert _parse(record, format="llava") == [
        {"role": "user", "content": [{"type": "image", "image": "/data/coco/1.jpg"}, {"type": "text", "text": "\nWhat is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ]


@pytest.mark.parametrize("line, fmt, match", [
    ("{broken", "auto", "not valid JSON"),
    ("[1, 2]", "auto", "JSON object"),
    (json.dumps({"messages": "hi"}), "messages", "non-empty list"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "messages", "role"),
    (json.dumps({"messages": [{"role": "user", "content": "<image>"}], "images": []}), "sharegpt", "disagree"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "images": ["a.png"]}), "sharegpt", "disagree"),
    (json.dumps({"conversations": [{"from": "observation", "value": "x"}]}), "sharegpt", "unsupported role"),
    (json.dumps({"image": "a.png", "conversations": [{"from": "human", "value": "no tag"}]}), "llava", "disagree"),
    (json.dumps({"images": "a.png", "conversations": [{"from": "human", "value": 3}]}), "sharegpt", "string"),
])
def test_bad_records_raise_typed_errors(line, fmt, match):
    with pytest.raises(InvalidRecordError, match=match):
        parse_record(line, _source(format=fmt), "/data/s.jsonl")


def test_spec_validation(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    good = {"model_type": "qwen2_vl", "sources": [{"path": "a.jsonl", "video": {"fps": 1}}]}
    spec = parse_spec(good, str(tmp_path))
    assert spec.sources[0].name == "a" and spec.sources[0].files == (str(tmp_path / "a.jsonl"),)
    bad = [
        {"sources": []},
        {"sources": [{"path": "missing*.jsonl"}]},
        {"sources": [{"path": "a.jsonl", "format": "alpaca"}]},
        {"sources": [{"path": "a.jsonl", "video": {"fsp": 1}}]},
        {"sources": [{"path": "a.jsonl"}, {"path": "a.jsonl"}]},
        {"sources": [{"path": "a.jsonl", "weight": -1}]},
        {"truncation": "cut", "sources": [{"path": "a.jsonl"}]},
        {"max_length": 0, "sources": [{"path": "a.jsonl"}]},
        {"unknown": 1, "sources": [{"path": "a.jsonl"}]},
    ]
    for config in bad:
        with pytest.raises(InvalidSpecError):
            parse_spec(config, str(tmp_path))
    (tmp_path / "mix.yaml").write_text("model_type: qwen2_vl\nsources:\n  - path: a.jsonl\n    image: {max_pixels: 1000}\n")
    assert load_spec(str(tmp_path / "mix.yaml")).sources[0].image == {"max_pixels": 1000}
    with pytest.raises(InvalidSpecError, match="no such spec"):
        load_spec(str(tmp_path / "nope.json"))


def test_missing_extras_say_what_to_install(monkeypatch):
    from vlutils.data.prepare import require_extras

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InvalidSpecError, match=r'pip install "qwenvl-kit\[data,ray\]" \(from a checkout: pip install -e "\.\[data,ray\]"\)'):
        require_extras("ray")
    with pytest.raises(InvalidSpecError, match=r'pip install "qwenvl-kit\[data\]"'):
        require_extras("local")


def test_messages_cli_still_works(tmp_path):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "vlutils", str(root / "fixtures/demo/messages.json"), "--json"],
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": "/usr/bin"})
    assert json.loads(done.stdout)["total"]["items"] >= 1
    helped = subprocess.run([sys.executable, "-m", "vlutils", "prepare", "--help"], capture_output=True, text=True,
                            timeout=60, env={"PYTHONPATH": str(root), "PATH": "/usr/bin"})
    assert helped.returncode == 0 and "--shard-size" in helped.stdout


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(caplog):
    import io
    import logging

    from vlutils.data.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def report(records, rejected, tokens):
        return {"records": records, "rejected": [{}] * rejected, "stats": {"tokens": tokens}}

    terminal = Terminal()
    bar = Progress(4, stream=terminal, interval=0.0)
    bar.update(report(2, 1, 100))
    bar.close()
    text = terminal.getvalue()
    assert "\r[" in text and "2/4 records" in text and "1 rejected" in text and "tok/s" in text
    plain = io.StringIO()
    with caplog.at_level(logging.INFO, logger="vlutils.data.progress"):
        lines = Progress(None, stream=plain, log_every=0.0, done=3, rejected=2, tokens=50)  # resumed: 3 reused
        lines.update(report(1, 0, 5))
        lines.total = 4  # known once the plan is read
        lines.close()
    assert plain.getvalue() == "" and any("4/4 records" in r.message and "2 rejected" in r.message
                                          for r in caplog.records)
    quiet = Terminal()
    silent = Progress(1, stream=quiet, quiet=True, interval=0.0)
    silent.update(report(1, 0, 0))
    silent.close()
    assert quiet.getvalue() == ""


def test_a_line_that_is_not_utf8_is_rejected_not_patched():
    line = '{"messages": [{"role": "user", "content": "caf'.encode() + b"\xe9" + b'"}]}\n'
    with pytest.raises(InvalidRecordError, match="UTF-8"):
        parse_record(line, _source(), "/data/s.jsonl")
    assert _parse({"messages": [{"role": "user", "content": "café"}]})[0]["content"] == "café"
