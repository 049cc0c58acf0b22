"""Run a reference transformers version in a subprocess (they cannot share our venv).

``scripts/install_refs.sh`` installs 4.51.3 into ``.refs/tf451`` and 5.23.0 into
``.refs/tf523``; 4.57 is the venv's own transformers ("venv"). A missing reference is a
test failure that says how to install it, never a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
REFS = {"tf451": ROOT / ".refs" / "tf451", "tf523": ROOT / ".refs" / "tf523", "venv": None}
RUNNER = Path(__file__).resolve().parent / "reference_rope_runner.py"
PROCESSOR_RUNNER = Path(__file__).resolve().parent / "reference_processor_runner.py"


def reference_env(ref: str) -> dict:
    """Environment for a subprocess that imports the ``ref`` transformers."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    target = REFS[ref]
    if target is not None:
        if not (target / "transformers" / "__init__.py").exists():
            raise RuntimeError(f"reference {ref} missing at {target}: run `bash scripts/install_refs.sh` first")
        env["PYTHONPATH"] = str(target)
    return env


def run_python(ref: str, args: list[str], timeout: float = 300) -> None:
    """Run ``python args...`` with the ``ref`` transformers importable; raise with its stderr on failure."""
    proc = subprocess.run(
        [sys.executable, *args], env=reference_env(ref), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reference {ref} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def reference_rope(jobs: dict[str, list[dict]], workdir: Path, timeout: float = 300) -> dict[str, tuple[str, list]]:
    """transformers' get_rope_index on every case: one subprocess per reference, all at once.

    ``jobs`` maps a reference name to its cases; returns ``{ref: (version, results)}``.
    """
    procs = {}
    for ref, cases in jobs.items():
        cases_path, out_path = workdir / f"rope_cases_{ref}.pt", workdir / f"rope_out_{ref}.pt"
        torch.save(cases, cases_path)
        procs[ref] = (
            subprocess.Popen(
                [sys.executable, str(RUNNER), str(cases_path), str(out_path)],
                env=reference_env(ref), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ),
            out_path,
        )
    results = {}
    for ref, (proc, out_path) in procs.items():
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"reference {ref} failed ({proc.returncode}):\n{err[-4000:]}")
        out = torch.load(out_path, weights_only=False)
        results[ref] = (out["version"], out["results"])
    return results


def reference_processor(ref: str, tokenizer_json: str, cases: list[dict], workdir: Path) -> tuple[str, list]:
    """transformers' processor on every case, in one subprocess: (version, results)."""
    cases_path, out_path = workdir / f"proc_cases_{ref}.pt", workdir / f"proc_out_{ref}.pt"
    torch.save({"tokenizer_json": tokenizer_json, "cases": cases}, cases_path)
    run_python(ref, [str(PROCESSOR_RUNNER), str(cases_path), str(out_path)])
    out = torch.load(out_path, weights_only=False)
    return out["version"], out["results"]
