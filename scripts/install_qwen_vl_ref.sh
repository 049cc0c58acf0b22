#!/usr/bin/env bash
# The environment of the ORIGINAL Qwen-VL-Chat remote code, for scripts/make_qwen_vl_fixtures.py and
# bench/bench_qwen_vl.py only (not CI: the remote code itself is not on PyPI, see docs/qwen-vl.md).
#
#   .refs/qwenvl_ref : transformers 4.32.0 (what Qwen-VL-Chat's config.json and requirements.txt name),
#                      tokenizers 0.13.3 and huggingface_hub 0.16.4 (what 4.32 accepts), einops,
#                      transformers_stream_generator 0.0.4, matplotlib (tokenization_qwen.py imports it)
#
# torch, numpy, Pillow, torchvision, tiktoken, safetensors, regex, requests come from the venv.
# Everything goes in with --no-deps so that nothing in the venv is shadowed by a second copy.
# Idempotent: kept when transformers 4.32.0 is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
TARGET="$ROOT/.refs/qwenvl_ref"

if [ -f "$TARGET/transformers/__init__.py" ] && grep -q '__version__ = "4.32.0"' "$TARGET/transformers/__init__.py"; then
    echo "reference environment already at $TARGET"
    exit 0
fi
rm -rf "$TARGET"
"$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-warn-conflicts \
    --target "$TARGET" --no-deps \
    "transformers==4.32.0" "tokenizers==0.13.3" "huggingface_hub==0.16.4" "einops" \
    "transformers_stream_generator==0.0.4" \
    "matplotlib" "contourpy" "cycler" "fonttools" "kiwisolver" "pyparsing" "python-dateutil" "six"
echo "reference environment installed at $TARGET"
