"""The command line: fast help, no TensorFlow in the producer, clear errors instead of tracebacks."""

import json
import os
import subprocess
import sys
import uuid

from click.testing import CliRunner

from digitq.bus.server import free_port
from producer.cli import main

from .conftest import ROOT
from .pipeline_helpers import last_json


def test_scan_help_is_light():
    code = ("import sys, time; t = time.perf_counter(); from producer.cli import main\n"
            "try:\n    main(['scan', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(time.perf_counter() - t, sorted(m for m in ('tensorflow', 'keras', 'celery', 'PIL', 'redis') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "--batch-size" in out.stdout and "--by-path" in out.stdout
    # None of the heavy modules imported; Redis's client neither: `scan` forks its walk before it loads that.
    assert out.stdout.strip().splitlines()[-1].endswith("[]")


def test_producer_never_imports_tensorflow(tmp_path):
    """A whole scan path up to the broker: the producer modules pull in no TensorFlow."""
    code = ("import sys; import producer.cli, producer.dispatch, producer.scan, producer.demo, digitq.disk.jobs\n"
            "print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_unreachable_redis_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(main, ["--redis-url", url, "--data-dir", str(tmp_path / "d"), "scan", str(tmp_path)])
    assert result.exit_code == 1
    assert "cannot reach Redis" in result.stderr and "DIGITQ_REDIS_URL" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "d" / "jobs").exists()  # nothing half-created


def test_bad_setting_and_bad_model_version(tmp_path):
    result = CliRunner().invoke(main, ["jobs"], env={"DIGITQ_BATCH_SIZE": "lots"})
    assert result.exit_code == 2 and "DIGITQ_BATCH_SIZE" in result.stderr
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "evaluate", "-m", "99"])
    assert result.exit_code == 1 and "not published" in result.stderr


def test_jobs_on_empty_data_dir(tmp_path):
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "jobs", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_redis_password_is_used_and_checked(tmp_path):
    from digitq.bus.broker import ping
    from digitq.bus.server import RedisServer
    from digitq.errors import BrokerError
    from digitq.settings import Settings

    with RedisServer(password="s3cret") as server:
        ping(Settings(redis_url=server.url))
        wrong = server.url.replace("s3cret", "wrong")
        try:
            ping(Settings(redis_url=wrong))
        except BrokerError as e:
            assert "wrong" not in str(e) and "***" in str(e)
        else:
            raise AssertionError("a wrong password was accepted")
        result = CliRunner().invoke(main, ["--redis-url", wrong, "--data-dir", str(tmp_path), "scan", str(tmp_path)])
        assert result.exit_code == 1 and "Redis" in result.stderr and "wrong" not in result.stderr


def test_empty_folder_is_a_finished_empty_job(tmp_path):
    from digitq.bus.server import RedisServer

    (tmp_path / "empty").mkdir()
    with RedisServer() as server:
        result = CliRunner().invoke(main, ["--redis-url", server.url, "--data-dir", str(tmp_path / "d"), "scan",
                                           str(tmp_path / "empty"), "--wait", "--json"])
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    assert (summary["total"], summary["batches"], summary["state"]) == (0, 0, "done")
    assert open(summary["output"], "rb").read().decode() == "path,prediction,confidence,model_version,error\r\n"


def test_redis_lost_while_sending_keeps_the_manifest(tmp_path, mnist):
    from digitq.bus.server import RedisServer
    from digitq.errors import BrokerError
    from digitq.settings import Settings
    from model.dataset import write_image_folder
    from producer.dispatch import enqueue

    from .pipeline_helpers import make_job

    write_image_folder(tmp_path / "in", mnist.x_test[:6], mnist.y_test[:6])
    server = RedisServer().start()
    settings = Settings.from_env(redis_url=server.url, data_dir=str(tmp_path / "data"))
    job = make_job(settings, tmp_path / "in", batch_size=2, send=False)
    server.stop()
    try:
        enqueue(settings, job)
    except BrokerError as e:
        assert f"digitq resume {job.id}" in str(e)
    else:
        raise AssertionError("enqueue to a dead Redis did not fail")
    assert (job.dir / "job.json").is_file() and job.total == 6


def test_demo_runs_and_stops_what_it_started(tmp_path):
    # Every process the demo starts inherits this mark: its leftovers are told from other tests' processes.
    mark = f"DIGITQ_TEST_DEMO={uuid.uuid4().hex}"
    proc = subprocess.run([sys.executable, "-m", "producer.cli", "demo", "--demo-dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "DIGITQ_TEST_DEMO": mark.split("=", 1)[1]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    csv_line = [line for line in proc.stdout.splitlines() if line.startswith("CSV: ")]
    assert csv_line, proc.stdout
    from digitq.disk import csvfile

    rows = csvfile.read(csv_line[0][5:])
    assert len(rows) == 36 and not any(r["error"] for r in rows)
    # file names start with the true digit: the demo's table should be right on nearly all of them
    right = sum(r["prediction"] == r["path"].rsplit("/", 1)[1][0] for r in rows)
    assert right >= 34
    assert "36 images, 0 errors" in proc.stdout
    leftover = set(_processes(mark).values())
    assert not [c for c in leftover if "redis-server" in c or "celery" in c], leftover


def _processes(mark: str) -> dict[int, str]:
    """The command lines of the processes whose environment holds ``mark`` (``NAME=value``), by pid."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark.encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return out


def test_progress_rate_counts_only_what_it_watched():
    import io

    from producer.progress import Progress

    bar = Progress(1000, "predict", enabled=True, stream=io.StringIO())
    bar.update(900)  # already done when we started watching
    bar.started -= 10.0
    bar.update(950)
    assert " 5 img/s" in bar.line() and "950/1000" in bar.line() and "ETA 0:00:10" in bar.line()
