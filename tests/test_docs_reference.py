"""The reference pages list everything the code offers: every environment variable the code reads
(docs/environment.md) and every flag of every command line (docs/cli.md).

A variable or flag added to the code without its line in the docs fails here, naming it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlutils", "vlmodel")
# os.environ.get("X") / os.environ["X"] / os.getenv("X") / environ.get("X"), and any literal
# that names one of the project's own variables or a standard AWS one (read through a constant or a helper).
READ = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]\s*|getenv\(\s*)["']([A-Z][A-Z0-9_]+)["']""")
OWN = re.compile(r"""["']((?:VLUTILS|VLMODEL|FORCE_QWENVL|AWS)_[A-Z0-9_]+)["']""")
COMMANDS = {  # command -> how docs/cli.md names its section
    ("vlutils",): "## `python -m vlutils`",
    ("vlutils", "prepare"): "## `python -m vlutils prepare`",
    ("vlutils.grounding",): "## `python -m vlutils.grounding`",
    ("vlmodel",): "## `python -m vlmodel`",
}


def variables_in_code() -> dict[str, str]:
    """Variable name -> the first file that reads it."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for name in READ.findall(text) + OWN.findall(text):
                found.setdefault(name, path.relative_to(ROOT).as_posix())
    return found


def test_every_environment_variable_is_documented() -> None:
    page = (ROOT / "docs" / "environment.md").read_text(encoding="utf-8")
    documented = {name for row in re.findall(r"^\| (`[A-Z].*?) \|", page, flags=re.M)
                  for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}
    found = variables_in_code()
    assert len(found) > 20, "the scan found almost nothing: is the pattern still right?"
    missing = {name: where for name, where in found.items() if name not in documented}
    assert not missing, f"read by the code but not in docs/environment.md: {missing}"


def _section(page: str, heading: str) -> str:
    start = page.index(heading)
    end = page.find("\n## ", start + len(heading))
    return page[start:] if end < 0 else page[start:end]


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_every_cli_flag_is_documented(command: tuple[str, ...]) -> None:
    result = subprocess.run([sys.executable, "-m", *command, "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout)) - {"--help"}
    assert flags, result.stdout
    section = _section((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), COMMANDS[command])
    missing = sorted(flag for flag in flags if f"`{flag}" not in section)
    assert not missing, f"{' '.join(command)}: flags missing from docs/cli.md: {missing}"


def test_readme_links_exist() -> None:
    """README.md is outside the MkDocs build, so its relative links are checked here."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"^[a-z]+://", t)]
    assert local, "no relative link found: is the pattern still right?"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_stays_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 220, f"README.md has {lines} lines: move the manual into docs/"
