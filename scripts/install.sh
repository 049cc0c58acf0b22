#!/usr/bin/env bash
# Install everything the project and its tests need into ./.venv, from nothing.
#
# Torch: the tests compare against qwen-vl-utils, which imports torchvision at module
# level. PyPI's torchvision wheels link CUDA torch, so the test environment uses the
# CUDA build of torch 2.14.1 with torchvision 0.29.1 (both run on a CPU-only machine).
# vlutils itself needs neither torchvision nor CUDA: a CPU torch is enough.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1; then
    # torchcodec loads the system FFmpeg libraries; the ffmpeg CLI is the benchmarks' decode floor.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
fi

python3 -m venv .venv
PIP=(.venv/bin/pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" -e ".[test,model,fast,docs,qwen_vl]" "torchcodec==0.16.0"
# compile the exact fast resize once now, not inside the first long video call
.venv/bin/python -m vlutils.video.precompile
if [ -x scripts/install_refs.sh ] || [ -f scripts/install_refs.sh ]; then
    bash scripts/install_refs.sh
fi

# A second, minimal environment proves vlutils needs only CPU torch (no torchvision, decord
# or torchcodec): tests/test_cpu_only_install.py runs images and a video through it.
python3 -m venv .venv-cpu
.venv-cpu/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0" -e .
