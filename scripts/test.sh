#!/usr/bin/env bash
# The project's test command (README, .ci/run): the fast tests, then the slow ones, then the docs build.
#
#   1. pytest -m "not slow": unit, reference-comparison and docs-example tests;
#   2. pytest -m slow: clusters, several processes, docs blocks marked <!-- docs-test: slow -->;
#      pytest's exit 5 ("no tests collected") is accepted here only, when nothing is marked slow;
#   3. mkdocs build --strict into a temporary folder: broken links, missing pages or API
#      references fail. Nothing is written into the repository.
#
# Ends with one line adding up both pytest runs. Extra arguments go to both pytest runs
# (e.g. `bash scripts/test.sh -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== fast tests (-m 'not slow')"
"$PY" -m pytest -q -m "not slow" --junitxml="$work/fast.xml" "$@"

echo "== slow tests (-m slow)"
status=0
"$PY" -m pytest -q -m slow --junitxml="$work/slow.xml" "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "(no test is marked slow)"
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi

echo "== docs: mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet --site-dir "$work/site"
echo "docs build ok"

"$PY" - "$work"/*.xml <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in sys.argv[1:]:
    root = ET.parse(path).getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for key in total:
            total[key] += int(suite.get(key, 0))
failed = total["failures"] + total["errors"]
passed = total["tests"] - failed - total["skipped"]
print(f"total: {passed} passed, {failed} failed, {total['skipped']} skipped")
PYEOF
