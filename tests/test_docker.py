"""The compose stack on a real Docker engine: `scripts/test-docker.sh` (not in the normal run).

Builds the image, starts Redis, two prediction workers, the trainer and beat with
`docker-compose up --scale worker=2`, scans a folder through the `producer` service,
checks the CSV and `digitq workers --json` inside the stack, then removes the
containers, network and volumes it made (images stay cached).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time

import pytest
from PIL import Image

from digitq import csvfile
from model.dataset import write_image_folder

from .conftest import ROOT

pytestmark = pytest.mark.docker
COMPOSE = ROOT / "docker" / "compose.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """``docker-compose`` on one project, with its own password and Redis port."""

    def __init__(self, artifacts):
        self.artifacts = artifacts
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": f"digitqsmoke{os.getpid()}",
                    "DIGITQ_REDIS_PASSWORD": secrets.token_hex(16), "DIGITQ_REDIS_PORT": str(_free_port()),
                    "DIGITQ_FLOWER_PORT": str(_free_port()), "DIGITQ_FLOWER_AUTH": "admin:" + secrets.token_hex(8)}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker-compose", "-f", str(COMPOSE), *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def digitq(self, *args: str, volumes: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
        mounts = [arg for v in volumes for arg in ("-v", v)]
        return self("run", "--rm", "-T", *mounts, "producer", "digitq", *args, timeout=timeout)

    def workers(self) -> dict:
        return json.loads(self.digitq("workers", "--json").stdout.strip().splitlines()[-1])

    def health(self, service: str) -> list[str]:
        ids = self("ps", "-q", service).stdout.split()
        return [subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", i], capture_output=True,
                               text=True, check=True).stdout.strip() for i in ids]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not shutil.which("docker-compose") or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.fail("no Docker engine or docker-compose: run this group with scripts/test-docker.sh")
    artifacts = tmp_path_factory.mktemp("docker")
    compose = Stack(artifacts)
    compose("build", timeout=3600)
    try:
        compose("up", "-d", "--scale", "worker=2", timeout=300)
        yield compose
    finally:
        logs = compose("logs", "--no-color", check=False, timeout=120)
        (artifacts / "compose.log").write_text(logs.stdout + logs.stderr)
        down = compose("down", "-v", "--remove-orphans", check=False, timeout=300)
        assert down.returncode == 0, down.stderr


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_the_compose_stack_scans_a_folder_with_two_workers(stack, tmp_path, mnist):
    folder, out = tmp_path / "scans", tmp_path / "out"
    write_image_folder(folder, mnist.x_test[:120], mnist.y_test[:120])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.fromarray(255 - mnist.x_test[120]).convert("RGB").save(folder / f"{mnist.y_test[120]}" / "photo.jpg")
    out.mkdir()
    # The image runs as an unprivileged user: let it read the scans and write the copy of the CSV.
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    out.chmod(0o777)

    fleet = _until(lambda: (w := stack.workers()) and sum("predict" in x["queues"] for x in w["workers"]) == 2 and w,
                   timeout=180, what="two prediction workers to answer")
    assert any(x["queues"] == ["train"] for x in fleet["workers"])  # the trainer

    scan = stack.digitq("scan", "/input", "--batch-size", "6", "--wait", "--timeout", "300", "--json",
                        "--out", "/out/predictions.csv", volumes=(f"{folder}:/input:ro", f"{out}:/out"), timeout=420)
    summary = json.loads(scan.stdout.strip().splitlines()[-1])
    assert summary["state"] == "done" and summary["total"] == 122
    rows = csvfile.read(out / "predictions.csv")
    assert len(rows) == 122 and len({r["path"] for r in rows}) == 122
    errors = [r for r in rows if r["error"]]
    assert [r["path"].rsplit("/", 1)[-1] for r in errors] == ["broken.png"]
    right = sum(r["prediction"] == r["path"].split("/")[-2] for r in rows if not r["error"])
    assert right >= 118, f"{right} of 121 right"

    fleet = stack.workers()
    (stack.artifacts / "workers.json").write_text(json.dumps(fleet, indent=2))
    predict = [w for w in fleet["workers"] if w["queues"] == ["predict"]]
    assert len(predict) == 2 and len({w["host"] for w in predict}) == 2
    assert all(w["batches_done"] >= 1 for w in predict), "both workers should have taken batches"
    assert sum(w["batches_done"] for w in predict) >= summary["batches"]
    assert all(w["models"] == ["bundled-2"] and not w["data_dir_mismatch"] for w in predict)
    assert fleet["redis_maxmemory_policy"] == "noeviction" and fleet["warnings"] == []

    assert _until(lambda: (h := stack.health("worker")) == ["healthy", "healthy"] and h, timeout=180,
                  what="the workers' HEALTHCHECK")
    assert stack("run", "--rm", "-T", "producer", "id", "-u").stdout.strip() == "10001"  # not root


def test_flower_runs_behind_its_profile_and_asks_for_a_password(stack):
    import base64
    import urllib.error
    import urllib.request

    stack("--profile", "monitor", "up", "-d", "flower", timeout=300)
    url = f"http://127.0.0.1:{stack.env['DIGITQ_FLOWER_PORT']}/api/workers"

    def get(auth: str | None) -> int:
        request = urllib.request.Request(url)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own local URL
                return response.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0  # not listening yet

    assert _until(lambda: get(stack.env["DIGITQ_FLOWER_AUTH"]) == 200, timeout=120, what="flower to answer")
    assert get(None) == 401 and get("admin:wrong") == 401
