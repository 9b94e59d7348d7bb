"""A job whose batches all fail for good never hangs the producer: `scan` (one sender or several, with or
without --wait) and `resume` end with the job failed, the reason and the advice, even when the job is larger
than --max-in-flight (the real CLI in its own process, a real redis-server, a real Celery worker)."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import redis

from digitq.settings import Settings
from model.dataset import write_image_folder
from model.registry import INT8_FILE, MODEL_FILE, ONNX_FILE, Registry
from worker.process import WorkerProcess

from .conftest import ROOT, worker_env
from .pipeline_helpers import wait_until


def _digitq(settings: Settings, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "producer.cli", "--redis-url", settings.redis_url,
                             "--data-dir", str(settings.data_dir), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str, str]:
    """Its exit status and output; a command still running after ``timeout`` is killed and fails the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout:g}s (it hangs): {err[-2000:]}")
    return proc.returncode, out, err


def _publish_copy_of_bundled(settings: Settings) -> str:
    registry = Registry(settings.models_dir)
    staging = registry.staging_dir("copy")
    for item in registry.bundled().directory.iterdir():
        shutil.copy(item, staging / item.name)
    return registry.publish(staging)[0].version


def _tamper(settings: Settings, version: str) -> None:
    """Flip a byte in every model file of ``version``: none of them verifies any more."""
    directory = Registry(settings.models_dir).resolve(version).directory
    for name in (MODEL_FILE, ONNX_FILE, INT8_FILE):
        path = directory / name
        if path.exists():
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))


@pytest.mark.parametrize("senders,wait", [(1, True), (2, False)], ids=["one-sender-wait", "two-senders"])
def test_a_job_whose_batches_all_fail_ends_failed_instead_of_waiting_forever(redis_server, tmp_path, mnist,
                                                                            senders, wait):
    db = 8 if wait else 9
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:24], mnist.y_test[:24])
    version = _publish_copy_of_bundled(settings)
    # 12 batches of 2; at most 4 images (two batches) in flight, shared by the senders.
    scan = _digitq(settings, "scan", str(folder), "--model-version", version, "--batch-size", "2",
                   "--max-in-flight", "4", "--senders", str(senders), *(["--wait"] if wait else []))
    queue = redis.Redis.from_url(url)
    try:
        # No worker yet: the scan sends what the bound allows, then waits for room.
        wait_until(lambda: queue.llen("predict") == 2, timeout=60, what="the first batches to be sent")
        jobs = os.listdir(settings.jobs_dir)
        assert len(jobs) == 1
        job_id = jobs[0]
        # The job pinned an intact version; now its artifacts stop verifying, before any worker loaded them.
        _tamper(settings, version)
        with WorkerProcess(worker_env(settings), tmp_path / "w.log"):
            code, out, err = _finish(scan)
            assert code == 1, (out, err)
            assert "Traceback" not in err
            errors = [line for line in err.splitlines() if line.startswith("Error: ")]
            assert len(errors) == 1, err
            assert f"job {job_id} failed: batch " in errors[0] and "fails its checksum" in errors[0]
            assert errors[0].endswith(f"Fix the cause, then run `digitq resume {job_id}`")
            status = _finish(_digitq(settings, "status", job_id, "--json"), timeout=30)
            assert status[0] == 0 and json.loads(status[1])["state"] == "failed"
            # It stopped sending at the first failure: the rest waits for `resume`, once the cause is fixed.
            assert json.loads(status[1])["batches_done"] == 0
            if senders == 1:
                # `resume` re-sends all twelve batches under the same bound: it ends as the scan did.
                code, out, err = _finish(_digitq(settings, "resume", job_id, env={"DIGITQ_MAX_IN_FLIGHT": "4"}))
                assert code == 1 and "Traceback" not in err, (out, err)
                assert f"job {job_id} failed: batch " in err and f"digitq resume {job_id}" in err
    finally:
        if scan.poll() is None:
            os.killpg(scan.pid, signal.SIGKILL)
            scan.wait()
