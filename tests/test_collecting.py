"""A fleet of only stateless workers (none sees the data dir): the process waiting on the data host commits what
they hand in, so `scan --wait` and `digitq wait` complete; without a waiter, `status` names the cause."""

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import redis

from digitq.disk import csvfile
from digitq.disk.jobs import Job, list_jobs
from digitq.disk.storage import data_dir_id
from digitq.settings import Settings
from model.dataset import write_image_folder
from worker.process import WorkerProcess

from .conftest import worker_env
from .pipeline_helpers import cli_for, last_json, make_job, wait_until


def _settings(redis_server, tmp_path, db: int) -> Settings:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    data_dir_id(settings.data_dir)  # the producer's data dir, as `digitq init` makes it
    return settings


def _stateless(settings: Settings, tmp_path, name: str = "stateless") -> WorkerProcess:
    """A predicting worker with a data dir of its own: it hands every result in through Redis."""
    return WorkerProcess({**worker_env(settings), "DIGITQ_DATA_DIR": str(tmp_path / f"{name}-private")},
                         tmp_path / f"{name}.log", name=name)


@contextmanager
def _scan(settings: Settings, *args: str):
    """`digitq scan ARGS --wait --json` in its own process group (its senders are forked children); its wait
    gives up after 90 s (exit 3), and the group is killed on the way out."""
    proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "--redis-url", settings.redis_url,
                             "--data-dir", str(settings.data_dir), "scan", *args, "--wait", "--timeout", "90",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
                            start_new_session=True)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.returncode is None:
            proc.communicate()


def _one_row_per_file(job, n: int) -> None:
    rows = csvfile.read(job.csv_path)
    assert len(rows) == n and len({r["path"] for r in rows}) == n and not any(r["error"] for r in rows)


def test_scan_wait_completes_with_only_stateless_workers(redis_server, tmp_path, mnist):
    settings = _settings(redis_server, tmp_path, 10)
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:100], mnist.y_test[:100])
    collect = settings.collect_route(data_dir_id(settings.data_dir))
    with _stateless(settings, tmp_path) as worker:
        # A window of two batches: the scan must commit results while it still sends, then while it waits.
        with _scan(settings, str(folder), "--batch-size", "10", "--max-in-flight", "20") as scan:
            out, err = scan.communicate(timeout=150)
        log = worker.log()
    assert scan.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["state"] == "done" and summary["done"] == 100, err
    [job_id] = list_jobs(settings.jobs_dir)
    job = Job.load(settings.jobs_dir, job_id)
    _one_row_per_file(job, 100)
    assert "this process commits the results of stateless workers" in err
    assert "digitq.collect_batch" not in log and redis.Redis.from_url(settings.redis_url).llen(collect) == 0


def test_status_names_uncollected_results_and_wait_collects_them(redis_server, tmp_path, mnist, monkeypatch):
    settings = _settings(redis_server, tmp_path, 12)
    monkeypatch.setattr("producer.follow.NO_WORKER_AFTER_S", 1.0)  # results wait unclaimed 1 s here, not 10
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:60], mnist.y_test[:60])
    collect = settings.collect_route(data_dir_id(settings.data_dir))
    client = redis.Redis.from_url(settings.redis_url)
    cli = cli_for(settings)
    with _stateless(settings, tmp_path):
        job = make_job(settings, folder, batch_size=20)  # 3 batches; sent, nobody waits
        wait_until(lambda: client.llen(collect) == 3, timeout=90, poll=0.2, what="the results handed in")

        def stalled() -> dict | None:
            status = json.loads(cli("status", job.id, "--json").stdout)
            return status if status["state"] == "stalled" else None

        status = wait_until(stalled, timeout=60, poll=1.0, what="status to name the waiting results")
        assert status["stalled"]["uncollected"] == 3 and status["stalled"]["queue"] == collect
        assert status["stalled"]["collect"] == f"digitq wait {job.id}"
        assert f"digitq wait {job.id}" in status["stalled"]["cause"] and collect in status["stalled"]["cause"]
        human = cli("status", job.id)
        assert "3 batch result(s)" in human.stdout and f"digitq wait {job.id}" in human.stdout
        waited = cli("wait", job.id, "--timeout", "120", "--json")
    assert waited.exit_code == 0, waited.output
    assert last_json(waited)["state"] == "done"
    _one_row_per_file(job, 60)
    assert client.llen(collect) == 0


def test_a_collecting_worker_that_appears_mid_wait_shares_the_queue_safely(redis_server, tmp_path, mnist):
    settings = _settings(redis_server, tmp_path, 7)
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:400], mnist.y_test[:400])
    collect = settings.collect_route(data_dir_id(settings.data_dir))
    with _stateless(settings, tmp_path), _scan(settings, str(folder), "--batch-size", "5", "--max-in-flight",
                                               "20") as scan:
        wait_until(lambda: list_jobs(settings.jobs_dir), timeout=60, what="the job")
        job = Job.load(settings.jobs_dir, list_jobs(settings.jobs_dir)[0])
        wait_until(lambda: job.committed(), timeout=90, poll=0.1, what="the scan's first commits")
        with WorkerProcess(worker_env(settings), tmp_path / "collector.log", name="collector",
                           queues=collect) as collector:
            out, err = scan.communicate(timeout=150)
            by_worker = collector.log().count("Task digitq.collect_batch") // 2  # received, then succeeded
    assert scan.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["state"] == "done"
    _one_row_per_file(job, 400)
    assert len(job.committed()) == job.n_batches == 80
    assert 1 <= by_worker < 80  # both committed: the scan first, then the worker beside it
