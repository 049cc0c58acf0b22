"""vlutils must work with a CPU-only torch and none of torchvision, decord or torchcodec.

`scripts/install.sh` builds `.venv-cpu` (torch 2.13.0+cpu and vlutils, nothing else); this test
runs images and a video through it in a subprocess.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_PYTHON = ROOT / ".venv-cpu" / "bin" / "python"

SMOKE = r"""
import importlib.util, json, sys
import vlutils
for name in ("torchvision", "decord", "torchcodec"):
    assert importlib.util.find_spec(name) is None, f"{name} should not be installed here"
import torch
assert "+cpu" in torch.__version__, torch.__version__
messages = [{"role": "user", "content": [
    {"type": "image", "image": "fixtures/demo/landscape.jpg"},
    {"type": "video", "video": "fixtures/video/h264_320x240_30fps.mp4", "fps": 2.0},
]}]
images, videos, kwargs = vlutils.process_vision_info(messages, return_video_kwargs=True)
print(json.dumps({"image": list(images[0].size), "video": list(videos[0].shape),
                  "dtype": str(videos[0].dtype), "backend": vlutils.get_video_reader_backend(),
                  "fps": kwargs["fps"]}))
"""


@pytest.mark.skipif(not CPU_PYTHON.exists(), reason=".venv-cpu not built: run scripts/install.sh")
def test_images_and_video_with_cpu_torch_only():
    env = {k: v for k, v in os.environ.items() if k != "FORCE_QWENVL_VIDEO_READER"}
    result = subprocess.run(
        [str(CPU_PYTHON), "-c", SMOKE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"library printed to stdout: {result.stdout!r}"
    report = __import__("json").loads(lines[0])
    assert report["backend"] == "pyav"
    assert report["dtype"] == "torch.float32"
    assert report["video"][1] == 3 and report["video"][0] % 2 == 0
