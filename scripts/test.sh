#!/usr/bin/env bash
# The whole test suite: lint, then pytest against a private redis-server and real Celery workers.
# MNIST comes from $DIGITQ_MNIST, else ../shared/mnist beside the checkout, else Keras' download.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# The report test renders a page in a real headless browser: Debian's chromium, installed when absent.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's chromium for the report test..." >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
    else
        echo "warning: no chromium and no root to install it: the report test will fail" >&2
    fi
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
