"""The command lines as a new user meets them: help that lists every command in plain text,
the demo from any directory, torch's import kept out of the items' times, install hints
that name the distribution."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vlutils.clitext import DISTRIBUTION, install_hint, plain, summary

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo" / "messages.json"
RST = re.compile(r"``|:[a-z]+:`|`[^`\s][^`]*`_?")  # literals, roles, default-role text


def _run(args: list[str], cwd: Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_plain_removes_rest_markup():
    text = ("``python -m x``: see :func:`vlutils.build_inputs`, :mod:`~vlutils.chat`,\n"
            ":class:`Family <vlutils.families.Family>` and `default role`::\n\n    code")
    assert plain(text) == ("python -m x: see vlutils.build_inputs, vlutils.chat,\n"
                           "Family and default role:\n\n    code")
    assert summary("First ``line``\nwraps.\n\nSecond.") == "First line wraps."


HELPS = [["-m", "vlutils", "--help"], ["-m", "vlutils", "prepare", "--help"], ["-m", "vlutils.grounding", "--help"],
         ["-m", "vlmodel", "--help"]]


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    out = {}
    for args in HELPS:
        done = _run(args)
        assert done.returncode == 0, done.stderr
        out[" ".join(args[1:])] = done.stdout
    return out


def test_help_texts_are_plain(helps):
    for name, text in helps.items():
        assert not RST.search(text), f"{name}: reST markup in --help: {RST.search(text).group(0)!r}"


def test_top_level_help_lists_every_command(helps):
    text = helps["vlutils --help"]
    for command in ("vlutils prepare", "python -m vlutils.grounding", "python -m vlutils.video.precompile",
                    "python -m vlmodel", "MESSAGES.json"):
        assert command in text, command


def test_demo_works_from_any_directory_and_times_items_after_imports(tmp_path):
    script = (
        "import json, sys\n"
        "import vlutils.cli as cli\n"
        "seen = []\n"
        "run_item = cli._run_item\n"
        "def spy(item, *args, **kwargs):\n"
        "    seen.append('torch' in sys.modules)\n"
        "    return run_item(item, *args, **kwargs)\n"
        "cli._run_item = spy\n"
        f"report = cli.run({str(DEMO)!r})\n"
        "print(json.dumps({'report': report, 'torch_before_each_item': seen}))\n"
    )
    done = _run(["-c", script], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    report = out["report"]
    assert report["total"]["items"] == 5 and report["total"]["errors"] == 0, report
    assert out["torch_before_each_item"] == [True] * 5  # imports happen before any item is timed
    assert report["total"]["import_seconds"] > 0
    sources = [item["source"] for item in report["items"]]
    assert sources[0] == "fixtures/demo/landscape.jpg"  # as written in the file
    # the command itself, from another directory
    done = _run(["-m", "vlutils", str(DEMO)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 error(s)" in done.stdout and "importing torch" in done.stdout


def test_missing_extras_name_the_distribution(monkeypatch):
    assert install_hint("data", "ray") == (
        f'pip install "{DISTRIBUTION}[data,ray]" (from a checkout: pip install -e ".[data,ray]")')
    assert DISTRIBUTION == "qwenvl-kit"
    from vlmodel.loading import read_state_dict

    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=re.escape('pip install "qwenvl-kit[model]"')):
        read_state_dict(str(ROOT))


def test_no_user_message_names_the_unrelated_vlutils_distribution():
    pattern = re.compile(r"""pip install ["']?vlutils\[""")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for package in ("vlutils", "vlmodel") for p in (ROOT / package).rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
