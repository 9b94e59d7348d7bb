"""The compose stack on a real Docker engine: `scripts/test-docker.sh` (not in the normal run).

Builds both images (the slim prediction worker and the full one), starts Redis, a prediction
worker, a stateless prediction worker (no data volume, on a network that reaches only Redis),
the trainer and beat with `docker-compose --profile stateless up`, scans a folder through the
`producer` service, checks the CSV, which worker predicted which batch, and `digitq workers
--json` inside the stack, then removes the containers, networks and volumes it made (images
stay cached).
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

from digitq.disk import csvfile
from model.dataset import write_image_folder

from .conftest import ROOT
from .pipeline_helpers import BUNDLED

#: The version production names until something is promoted.

pytestmark = pytest.mark.docker
COMPOSE = ROOT / "docker" / "compose.yaml"
#: Every profile of the compose file, so that `ps` and `down` see every service the tests start.
PROFILES = ("--profile", "stateless", "--profile", "monitor", "--profile", "cli")


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
                    "DIGITQ_FLOWER_PORT": str(_free_port()), "DIGITQ_FLOWER_AUTH": "admin:" + secrets.token_hex(8),
                    # One process per worker container: with one message prefetched each, both take batches.
                    "DIGITQ_WORKER_CONCURRENCY": "1"}

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

    def containers(self, service: str) -> list[dict]:
        """``docker inspect`` of the service's containers."""
        ids = self(*PROFILES, "ps", "-q", service).stdout.split()
        return json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                                         check=True).stdout) if ids else []

    def health(self, service: str) -> list[str]:
        return [c["State"]["Health"]["Status"] for c in self.containers(service)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not shutil.which("docker-compose") or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.fail("no Docker engine or docker-compose: run this group with scripts/test-docker.sh")
    artifacts = tmp_path_factory.mktemp("docker")
    compose = Stack(artifacts)
    compose("build", timeout=3600)
    try:
        compose("--profile", "stateless", "up", "-d", timeout=300)
        yield compose
    finally:
        logs = compose(*PROFILES, "logs", "--no-color", check=False, timeout=120)
        (artifacts / "compose.log").write_text(logs.stdout + logs.stderr)
        down = compose(*PROFILES, "down", "-v", "--remove-orphans", check=False, timeout=300)
        assert down.returncode == 0, down.stderr


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _image_size(tag: str) -> int:
    return int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True,
                              check=True).stdout)


def test_the_worker_image_is_slim(stack):
    """The prediction worker's image has no TensorFlow and is at most a third of the full one."""
    slim, full = stack.env.get("DIGITQ_WORKER_IMAGE", "digitq-worker:latest"), stack.env.get("DIGITQ_IMAGE",
                                                                                             "digitq:latest")
    sizes = {"slim": _image_size(slim), "full": _image_size(full)}
    (stack.artifacts / "image-sizes.json").write_text(json.dumps(sizes))
    assert sizes["slim"] <= sizes["full"] / 3, sizes
    # Every role from its image, and running: beat needs no TensorFlow either.
    for service, image in {"worker": slim, "worker-stateless": slim, "beat": slim, "trainer": full}.items():
        assert [(c["Config"]["Image"], c["State"]["Running"]) for c in stack.containers(service)] == [(image, True)]
    probe = "from model.extras import missing; print(','.join(missing()))"
    assert stack("run", "--rm", "-T", "--no-deps", "worker", "python3", "-c", probe).stdout.strip() == \
        "tensorflow,keras,onnx"
    assert stack("run", "--rm", "-T", "--no-deps", "producer", "python3", "-c", probe).stdout.strip() == ""


def test_the_compose_stack_scans_a_folder_with_a_shared_and_a_stateless_worker(stack, tmp_path, mnist):
    folder, out = tmp_path / "scans", tmp_path / "out"
    write_image_folder(folder, mnist.x_test[:120], mnist.y_test[:120])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.fromarray(255 - mnist.x_test[120]).convert("RGB").save(folder / f"{mnist.y_test[120]}" / "photo.jpg")
    out.mkdir()
    # The image runs as an unprivileged user: let it read the scans and write the copy of the CSV.
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    out.chmod(0o777)

    # The stateless worker shares nothing with the stack but Redis: no data volume, and one network,
    # internal, on which only Redis is.
    [stateless] = stack.containers("worker-stateless")
    [redis] = stack.containers("redis")
    data_volume = f"{stack.env['COMPOSE_PROJECT_NAME']}_digitq-data"
    assert all(m.get("Name") != data_volume for m in stateless["Mounts"]), stateless["Mounts"]
    [network] = stateless["NetworkSettings"]["Networks"]
    on_it = json.loads(subprocess.run(["docker", "network", "inspect", network], capture_output=True, text=True,
                                      check=True).stdout)[0]
    assert on_it["Internal"] and set(on_it["Containers"]) == {stateless["Id"], redis["Id"]}
    [shared] = stack.containers("worker")
    assert any(m.get("Name") == data_volume for m in shared["Mounts"])
    hosts = {"shared": shared["Config"]["Hostname"], "stateless": stateless["Config"]["Hostname"]}

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

    # Who predicted each batch: the first line of its committed result names the host.
    heads = stack("run", "--rm", "-T", "producer", "sh", "-c",
                  f"head -qn1 /data/jobs/{summary['job_id']}/results/*.jsonl").stdout.split("\n")
    predicted_by = [json.loads(line)["host"] for line in heads if line.strip()]
    (stack.artifacts / "predicted_by.json").write_text(json.dumps({"hosts": hosts, "batches": predicted_by}))
    assert len(predicted_by) == summary["batches"]
    assert set(predicted_by) == set(hosts.values()), f"both workers should have predicted batches: {predicted_by}"
    # ... and nothing of the job reached the stateless worker's own /data.
    listing = subprocess.run(["docker", "exec", stateless["Id"], "ls", "-A", "/data"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert "jobs" not in listing, listing

    fleet = stack.workers()
    (stack.artifacts / "workers.json").write_text(json.dumps(fleet, indent=2))
    predict = {w["host"]: w for w in fleet["workers"] if "predict" in w["queues"]}
    assert set(predict) == set(hosts.values())
    assert all(w["batches_done"] >= 1 for w in predict.values()), "both workers should have taken batches"
    assert sum(w["batches_done"] for w in predict.values()) >= summary["batches"]
    assert all(w["models"] == [BUNDLED] for w in predict.values())
    assert predict[hosts["shared"]]["data_dir_id"] == fleet["data_dir_id"]
    assert predict[hosts["stateless"]]["data_dir_id"] != fleet["data_dir_id"]
    assert fleet["redis_maxmemory_policy"] == "noeviction" and fleet["warnings"] == []

    assert _until(lambda: stack.health("worker") + stack.health("worker-stateless") == ["healthy", "healthy"],
                  timeout=180, what="the workers' HEALTHCHECK")
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
