#!/usr/bin/env bash
# The main job, end to end: private Redis + one Celery worker + a scan of samples/digits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/digitq demo "$@"
