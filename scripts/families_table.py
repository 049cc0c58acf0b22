"""Print the model families' facts (vlutils.families) as a Markdown table.

    python scripts/families_table.py > table.md

The table in docs/development-families.md is this script's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlutils.families import FAMILIES  # noqa: E402

COLUMNS = [
    ("model_type", "model_type"), ("title", "generation"), ("uses", "used by"), ("patch", "patch"),
    ("merge", "merge"), ("temporal_patch", "temporal patch"), ("min_pixels", "min pixels"),
    ("max_pixels", "max pixels"), ("chat", "chat formatter"), ("default_system_prompt", "default system prompt"),
    ("position_ids", "position ids"), ("video_timestamps", "video time"), ("grounding", "grounding"),
    ("shares_inputs_with", "inputs of"),
]


CODE = {"model_type", "chat", "position_ids", "video_timestamps", "shares_inputs_with"}  # shown as `code`


def cell(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, int):
        return f"{value:,}"
    if key == "chat":
        value = value.removeprefix("vlutils.")
    return f"`{value}`" if key in CODE else str(value)


def table() -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for family in FAMILIES.values():
        facts = family.describe()
        lines.append("| " + " | ".join(cell(key, facts[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
