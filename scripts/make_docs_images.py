"""Draw the grounding examples of docs/grounding.md into docs/images/ with vlutils' own tools.

    .venv/bin/python scripts/make_docs_images.py

For each Qwen-VL generation: the objects of ``fixtures/demo/landscape.jpg`` (in image pixels)
are written as that generation's model would write them (``grounding.to_model`` +
``grounding.format``), saved as ``docs/images/grounding-<model_type>.txt``, and drawn by the
command-line tool exactly as a user runs it:

    python -m vlutils.grounding fixtures/demo/landscape.jpg --model-type T \
        --answer-file docs/images/grounding-T.txt --out docs/images/grounding-T.jpg

Deterministic: rerunning gives the same files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlutils import grounding  # noqa: E402
from vlutils.image import open_image  # noqa: E402

IMAGE = "fixtures/demo/landscape.jpg"
OBJECTS = [  # pixels of the 640x427 picture
    {"label": "mountain", "box": (100, 120, 281, 261)},
    {"label": "red house", "box": (359, 249, 431, 321)},
    {"label": "sun", "box": (479, 49, 561, 131)},
    {"label": "sun centre", "point": (520, 90)},
]
OUT = ROOT / "docs" / "images"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    size = open_image(str(ROOT / IMAGE)).size
    resized = grounding.model_input_size(size)
    for model_type in grounding.MODEL_TYPES:
        objects = OBJECTS if model_type not in ("qwen_vl", "qwen2_vl") else [o for o in OBJECTS if "box" in o]
        model_frame = grounding.to_model(objects, model_type, size,
                                         resized if model_type == "qwen2_5_vl" else None)
        answer = OUT / f"grounding-{model_type}.txt"
        answer.write_text(grounding.format(model_frame, model_type) + "\n", encoding="utf-8")
        subprocess.run([sys.executable, "-m", "vlutils.grounding", IMAGE, "--model-type", model_type,
                        "--answer-file", str(answer.relative_to(ROOT)),
                        "--out", str((OUT / f"grounding-{model_type}.jpg").relative_to(ROOT))],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"docs/images/grounding-{model_type}.jpg")


if __name__ == "__main__":
    main()
