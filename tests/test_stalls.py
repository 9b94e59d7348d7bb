"""Why a job does not move, said where the user looks: no worker at all, results no worker can commit,
a dead worker host; and what a worker that cannot see a training does (hands it back, says why)."""

import json
import re

import pytest
import redis
from click.testing import CliRunner

from digitq.batch import stalls
from digitq.disk import csvfile
from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.cli import main
from worker.process import WorkerProcess

from .conftest import worker_env
from .pipeline_helpers import MODES, cli_for, db_url, last_json, start_workers, stop_workers, wait_until


def test_a_worker_with_another_data_dir_serves_statelessly_and_a_missing_collector_is_said(redis_server, tmp_path,
                                                                                          mnist, monkeypatch):
    """A worker that cannot see the job's data dir (another host, a typo) now predicts it statelessly; while no
    worker sees the data dir to commit its results, the job shows stalled with the cause. Nothing is lost."""
    url = db_url(redis_server.url, 4)  # this test's own queue
    monkeypatch.setattr("producer.follow.NO_WORKER_AFTER_S", 1.0)  # results wait unclaimed 1 s here, not 10
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    wrong = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "elsewhere"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:24], mnist.y_test[:24])
    cli = cli_for(settings)

    with WorkerProcess(worker_env(wrong), tmp_path / "wrong.log", name="wrong") as other:
        job_id = last_json(cli("scan", str(folder), "--batch-size", "8", "--json"))["job_id"]
        queue = redis.Redis.from_url(url)
        wait_until(lambda: queue.llen(stalls.collect_queue(settings)) == 3, timeout=60, poll=0.2,
                   what="the three results handed in")
        stalled = wait_until(lambda: (st := json.loads(cli("status", job_id, "--json").stdout))["state"] == "stalled"
                             and st, timeout=60, poll=0.5, what="the job to show stalled")
        assert stalled["stalled"]["uncollected"] == 3 and stalled["done"] == 0
        assert str((tmp_path / "data").resolve()) in stalled["stalled"]["cause"]
        human = cli("status", job_id).stdout
        assert "stalled" in human and "DIGITQ_DATA_DIR" in human
        assert "serving statelessly" in other.log()
        with WorkerProcess(worker_env(settings), tmp_path / "good.log", name="good") as good:
            waited = cli("wait", job_id, "--timeout", "120", "--json")
        assert waited.exit_code == 0, waited.output
    rows = csvfile.read(last_json(waited)["output"])
    assert len(rows) == 24 and sum(r["prediction"] == r["path"].split("/")[-2] for r in rows) >= 23
    assert json.loads(cli("status", job_id, "--json").stdout)["state"] == "done"
    # The other worker predicted all three batches; the good one only committed them.
    assert other.log().count("'stateless': True") == 3 and good.log().count("Task digitq.collect_batch") >= 3


def test_no_worker_at_all_is_said_once_with_the_command_that_starts_one(redis_server, tmp_path, mnist,
                                                                         monkeypatch):
    url = db_url(redis_server.url, 5)  # no worker listens on this database
    monkeypatch.setattr("producer.follow.NO_WORKER_AFTER_S", 1.0)  # said after a second here, not ten
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:5], mnist.y_test[:5])
    args = ["--redis-url", url, "--data-dir", str(tmp_path / "data"), "scan", str(folder), "--wait", "--timeout", "5"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 3 and "not done after 5s" in result.stderr
    assert result.stderr.count("no worker is consuming the `predict` queue") == 1
    assert "celery -A worker worker" in result.stderr


def test_live_consumers_lists_the_workers_of_a_queue(settings, worker):
    from digitq.bus.broker import live_consumers

    assert any(name.startswith("digitq-") for name in live_consumers(settings, "predict"))
    assert live_consumers(settings, "train") == []


def test_a_training_nobody_takes_says_how_to_start_a_training_worker(redis_server, tmp_path, mnist, monkeypatch):
    url = db_url(redis_server.url, 6)  # no train worker listens here
    monkeypatch.setattr("producer.retraining.QUEUED_HINT_S", 1.0)  # said after a second here, not fifteen
    folder = tmp_path / "labelled"
    write_image_folder(folder, mnist.x_train[:20], mnist.y_train[:20])
    args = ["--redis-url", url, "--data-dir", str(tmp_path / "data"), "train", "--data", str(folder),
            "--epochs", "1", "--wait", "--timeout", "5"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 3 and "not finished after 5s" in result.stderr
    assert "no worker consumes the `train` queue" in result.stderr and "-Q train -c 1" in result.stderr


def test_warm_shutdown_mid_job_loses_nothing_and_duplicates_nothing(redis_server, tmp_path, mnist):
    import os
    import signal

    from producer.dispatch import submit
    from producer.follow import wait_for

    url = db_url(redis_server.url, 7)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:600], mnist.y_test[:600])
    first = WorkerProcess(worker_env(settings), tmp_path / "first.log", name="first").start()
    try:
        job = submit(settings, [str(folder)], batch_size=10)  # 60 batches
        wait_until(lambda: len(job.committed()) >= 3, timeout=60, what="a few commits")
        os.kill(first.proc.pid, signal.SIGTERM)  # warm shutdown: the batch in hand finishes, the rest stay queued
        assert first.proc.wait(60) == 0  # a clean, warm exit (a prefetched batch, if any, is restored)
        done_by_first = len(job.committed())
        assert 3 <= done_by_first < job.n_batches
    finally:
        first.stop()
    with WorkerProcess(worker_env(settings), tmp_path / "second.log", name="second") as second:
        status = wait_for(job, timeout=120)
        # Nothing left to run: no message queued, none held unacknowledged (running or prefetched).
        broker = redis.Redis.from_url(url)
        wait_until(lambda: broker.llen(settings.predict_queue) == 0 and broker.hlen("unacked") == 0, timeout=30,
                   what="the queue drained and every message acknowledged")
    logs = first.log() + second.log()  # both stopped: complete
    rows = csvfile.read(job.csv_path)
    assert status["state"] == "done" and len(rows) == 600
    assert sum(r["prediction"] == r["path"].split("/")[-2] for r in rows) >= 590
    # Duplicates nothing: the rows the two workers predicted, batch by batch, add up to 600, not more (the
    # CSV cannot show a batch run twice: a second outcome is discarded, and counted).
    predicted = [int(n) for n in re.findall(r" succeeded in [^\n]*'rows': (\d+)", logs)]
    assert len(predicted) == job.n_batches and sum(predicted) == 600 and status["duplicates"] == 0


def test_only_an_old_invisible_job_is_given_up():
    import time

    from worker.hooks import GIVE_UP_AFTER_S, job_age_s

    now = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    assert 0 <= job_age_s(f"{now}-abcdef") < 5
    assert job_age_s("20250101-000000-abcdef") > GIVE_UP_AFTER_S


@pytest.mark.parametrize("mode", MODES)
def test_a_dead_worker_host_stalls_the_job_and_wait_resume_stalled_finishes_it(redis_server, tmp_path, mnist, mode):
    import os
    import time

    from .test_poison import marked_png, sabotaged_env

    url = db_url(redis_server.url, 11)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:9], mnist.y_test[:9])
    (folder / str(mnist.y_test[9]) / "slow.png").write_bytes(marked_png(mnist.x_test[9], "DIGITQ-TEST-SLOW"))
    cli = cli_for(settings, env={"DIGITQ_STALL_AFTER": "2"})

    env = sabotaged_env(settings, DIGITQ_TEST_SLOW_MARKER="DIGITQ-TEST-SLOW")
    if mode == "stateless":
        env["DIGITQ_DATA_DIR"] = str(tmp_path / "nowhere")  # the dead host sees no data dir
    doomed = WorkerProcess(env, tmp_path / "dead.log", app="sabotage", name="doomed").start()
    try:
        job_id = last_json(cli("scan", str(folder), "--batch-size", "10", "--json"))["job_id"]  # one batch
        wait_until(lambda: "Task digitq.predict_batch" in doomed.log(), timeout=30, what="the batch taken")

        def status_past_stall_after() -> dict | None:
            # A status computed when the job had been idle past --stall-after: it looked for orphans.
            asked = time.time()
            status = json.loads(cli("status", job_id, "--json").stdout)
            return status if asked - status["created"] > 2 else None

        status = wait_until(status_past_stall_after, timeout=30, poll=0.2, what="a status past --stall-after")
        assert status["state"] == "queued"  # only the live worker's hold keeps it from "stalled"
        assert stalls.unclaimed(settings, job_id, {0}) is False  # known held, not merely unknown
        os.killpg(doomed.proc.pid, 9)  # the whole host dies: parent and pool, the batch unacked
    finally:
        doomed.stop()
    stalled = wait_until(lambda: (st := json.loads(cli("status", job_id, "--json").stdout))["state"] == "stalled"
                         and st, timeout=30, poll=0.5, what="the job to show stalled")
    assert stalled["stalled"]["orphaned"] == [0] and f"digitq resume {job_id}" in stalled["stalled"]["cause"]
    assert "stalled" in cli("status", job_id).stdout
    workers = start_workers(mode, settings, tmp_path, name="good")
    try:
        waited = cli("wait", job_id, "--resume-stalled", "--timeout", "120", "--json")
    finally:
        stop_workers(workers)
    assert waited.exit_code == 0, waited.output
    assert "sent them again" in waited.stderr
    rows = csvfile.read(last_json(waited)["output"])
    assert len(rows) == 10 and not any(r["error"] for r in rows)


def test_a_train_worker_with_the_wrong_data_dir_hands_the_training_back(redis_server, tmp_path, mnist):
    url = db_url(redis_server.url, 12)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    wrong = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "elsewhere"))
    folder = tmp_path / "labelled"
    write_image_folder(folder, mnist.x_train[:60], mnist.y_train[:60])
    cli = cli_for(settings)

    def training(training_id: str) -> dict:
        return json.loads(cli("training", training_id, "--json").stdout)

    with WorkerProcess(worker_env(wrong), tmp_path / "wrong.log", queues="train", name="wrongtrainer") as bad:
        training_id = last_json(cli("train", "--data", str(folder), "--epochs", "1", "--json"))["training_id"]
        stalled = wait_until(lambda: (st := training(training_id))["state"] == "stalled" and st, timeout=60,
                             poll=0.5, what="the training to show stalled")
        assert str((tmp_path / "elsewhere").resolve()) in stalled["stalled"]["cause"]
        assert "stalled" in cli("training", training_id).stdout
    assert bad.log().count(f"training {training_id} is not under this worker's data dir") == 1
    with WorkerProcess(worker_env(settings), tmp_path / "good.log", queues="train", name="trainer"):
        done = wait_until(lambda: (st := training(training_id))["state"] in ("done", "failed") and st,
                          timeout=240, poll=1, what="the training to finish")
    assert done["state"] == "done" and done["version"] is not None, done
