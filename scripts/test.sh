#!/usr/bin/env bash
# The whole test suite: lint, then pytest against a private redis-server and real Celery workers.
# MNIST comes from $DIGITQ_MNIST, else ../shared/mnist beside the checkout, else Keras' download.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
