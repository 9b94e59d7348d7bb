#!/usr/bin/env bash
# Build local stand-ins for the public base images from Debian's packages, for engines that reach
# no image registry (CI here). Users pull python:3.11-slim and redis:7-alpine instead.
#   docker/standins.sh            # prints the two environment lines compose reads
# Each image is built once and then cached in the engine.
set -euo pipefail
PYTHON_TAG=digitq-standin/python:3.11
REDIS_TAG=digitq-standin/redis:7
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

build() {  # tag, packages, docker import --change options...
    local tag=$1 packages=$2
    shift 2
    if docker image inspect "$tag" >/dev/null 2>&1; then
        return
    fi
    local root
    root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    echo "building $tag from Debian bookworm ($packages)..." >&2
    debootstrap --variant=minbase --include="$packages" bookworm "$root" "$MIRROR" >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # Trust what this machine trusts: where egress goes through a TLS-inspecting proxy, its CA is
    # in the host's store, and pip inside the build would fail without it.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null && [ -d "$root/etc/ssl/certs" ]; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >&2
    fi
    tar -C "$root" -c . | docker import "$@" - "$tag" >&2
}

build "$PYTHON_TAG" python3,python3-venv,ca-certificates --change 'CMD ["python3"]' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
build "$REDIS_TAG" redis-server --change 'WORKDIR /data' --change 'CMD ["redis-server"]'
echo "DIGITQ_BASE_IMAGE=$PYTHON_TAG"
echo "DIGITQ_REDIS_IMAGE=$REDIS_TAG"
