#!/usr/bin/env bash
# Install the reference transformers versions that the tests compare against.
#
# They cannot live in the project venv next to transformers 4.57.6, so each goes
# into its own --target folder under .refs/ (git-ignored). Tests run the reference
# in a subprocess with PYTHONPATH=.refs/<name>; torch and numpy still come from the
# venv, so only transformers and the packages whose versions it pins are installed.
#
#   .refs/tf451 : transformers 4.51.3 (original Qwen2-VL / Qwen2.5-VL get_rope_index)
#   .refs/tf523 : transformers 5.23.0 (benchmark; documented departures)
#
# Idempotent: a target whose transformers already has the right version is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
REFS="$ROOT/.refs"
mkdir -p "$REFS"

have() {  # have <target> <version>: is transformers==<version> already there?
    local target="$1" version="$2"
    [ -f "$target/transformers/__init__.py" ] &&
        grep -q "__version__ = \"$version\"" "$target/transformers/__init__.py"
}

# --no-warn-conflicts: pip would otherwise compare each --target folder with the venv's own
# transformers 4.57.6 pins and print ERROR lines about packages that never meet at run time.
pipi() { "$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-warn-conflicts "$@"; }

# transformers 4.51.3 pins tokenizers<0.22; huggingface_hub and safetensors from the venv fit.
if ! have "$REFS/tf451" 4.51.3; then
    rm -rf "$REFS/tf451"
    pipi --target "$REFS/tf451" --no-deps "transformers==4.51.3" "tokenizers==0.21.4"
fi

# transformers 5.23.0 needs huggingface_hub>=1.31 and tokenizers>=0.23.1 (with their deps);
# transformers itself goes in without deps so no second numpy lands in the target.
if ! have "$REFS/tf523" 5.23.0; then
    rm -rf "$REFS/tf523"
    pipi --target "$REFS/tf523" "huggingface_hub>=1.31,<2" "tokenizers>=0.23.1,<0.24" "typer"
    pipi --target "$REFS/tf523" --no-deps "transformers==5.23.0"
fi

# Test-only references for the quantized formats (tests/_quant_checkpoints.py): the pure-PyTorch
# pack/unpack code of AutoGPTQ 0.7.1 (qlinear_cuda.py) and AutoAWQ 0.2.9 (awq/utils/packing_utils.py).
# Neither installs here (CUDA extensions; AutoAWQ is archived), so their sdists are downloaded and
# extracted into .refs/src and the tests load just those files. compressed-tensors installs normally.
SRC="$REFS/src"
if [ ! -f "$SRC/auto_gptq-0.7.1/auto_gptq/nn_modules/qlinear/qlinear_cuda.py" ] ||
   [ ! -f "$SRC/autoawq-0.2.9/awq/utils/packing_utils.py" ]; then
    mkdir -p "$SRC"
    tmp="$(mktemp -d)"
    BUILD_CUDA_EXT=0 "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        --no-build-isolation -d "$tmp" "auto-gptq==0.7.1" "autoawq==0.2.9"
    for archive in "$tmp"/*.tar.gz; do tar xzf "$archive" -C "$SRC"; done
    rm -rf "$tmp"
fi

echo "reference transformers installed under $REFS: $(ls "$REFS" | tr '\n' ' ')"
