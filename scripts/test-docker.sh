#!/usr/bin/env bash
# The Docker test group: build both images (the slim prediction worker, the full one), bring the
# compose stack up on a real engine with a worker that sees the data volume and a stateless one
# that reaches only Redis, scan a folder through the `producer` service, check the CSV and who
# predicted it, tear it all down, and print the images' sizes.
# It installs Debian's docker.io, docker-compose and debootstrap when they are missing (root),
# starts dockerd when none answers (and stops it afterwards), and builds local stand-ins for the
# public base images (docker/standins.sh), since no image registry may be reachable.
# Minutes the first time (Debian bootstrap, TensorFlow into the full image); cached after that.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} from Debian..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
started=""
stop_engine() {
    if [ -n "$started" ]; then
        kill "$started" 2>/dev/null || true
        wait "$started" 2>/dev/null || true
    fi
}
trap stop_engine EXIT
if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd (log: /tmp/digitq-dockerd.log)..." >&2
    dockerd >/tmp/digitq-dockerd.log 2>&1 &
    started=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/digitq-dockerd.log" >&2; exit 1; }
fi
while read -r line; do export "${line?}"; done < <(docker/standins.sh)
status=0
.venv/bin/python -m pytest -m docker tests/test_docker.py "$@" || status=$?
for image in "${DIGITQ_WORKER_IMAGE:-digitq-worker:latest}" "${DIGITQ_IMAGE:-digitq:latest}"; do
    size=$(docker image inspect -f '{{.Size}}' "$image" 2>/dev/null) || continue
    echo "image $image: $((size / 1000000)) MB" >&2
done
exit $status
