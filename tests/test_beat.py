"""Celery beat's periodic retraining (worker/beat.py): the crontab setting, a real beat process that requests
a training when due and skips a run while one is still pending."""

import os
import signal
import subprocess
import sys
import time

import pytest

from digitq.disk.training_requests import Training
from digitq.settings import Settings
from model.dataset import write_image_folder

from .conftest import ROOT
from .pipeline_helpers import db_url, wait_until


def test_crontab_parsing():
    from digitq.errors import ConfigError
    from worker.beat import parse_crontab

    assert parse_crontab("0 3 * * 0").hour == {3}
    for bad in ("0 3 * *", "61 * * * *", "a b c d e"):
        with pytest.raises(ConfigError, match="DIGITQ_RETRAIN_SCHEDULE"):
            parse_crontab(bad)


def test_beat_enqueues_a_training_on_its_schedule_and_skips_while_one_is_pending(redis_server, tmp_path, mnist):
    import redis

    url = db_url(redis_server.url, 3)  # no train worker listens here: the first training stays queued
    data_dir = tmp_path / "beat-data"
    labelled = tmp_path / "labelled"  # what the trainings would train on: none runs here
    write_image_folder(labelled, mnist.x_train[:20], mnist.y_train[:20])
    # A real beat process (tests/seconds_beat.py): digitq's scheduler, its entry due every 2 s, not every minute.
    path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "DIGITQ_REDIS_URL": url, "DIGITQ_DATA_DIR": str(data_dir), "PYTHONPATH": path,
           "DIGITQ_RETRAIN_SCHEDULE": "* * * * *", "DIGITQ_TEST_RETRAIN_EVERY_S": "2",
           "DIGITQ_RETRAIN_DATA": str(labelled), "DIGITQ_RETRAIN_EPOCHS": "1"}
    log = tmp_path / "beat.log"
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "seconds_beat", "beat", "-l", "info", "-f",
                             str(log)], env=env, cwd=tmp_path, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        settings = Settings.from_env(redis_url=url, data_dir=str(data_dir))
        from digitq.disk.training_requests import list_trainings

        first = wait_until(lambda: list_trainings(settings.trainings_dir), timeout=90, poll=0.2,
                           what="beat to request a training")
        status = Training.load(settings.trainings_dir, first[0]).status()
        assert status["state"] == "queued" and status["by"] == "schedule" and status["epochs"] == 1
        # The request is written before the message is sent: the message follows within moments.
        wait_until(lambda: redis.Redis.from_url(url).llen("train") == 1, timeout=10, what="the training message")
        wait_until(lambda: "periodic retraining skipped" in log.read_text(), timeout=75, poll=0.2,
                   what="beat to skip the next run")
        assert len(list_trainings(settings.trainings_dir)) == 1 and redis.Redis.from_url(url).llen("train") == 1
        assert first[0] in log.read_text().split("periodic retraining skipped", 1)[1]
        assert "periodic retraining on '* * * * *' (UTC)" in log.read_text()  # digitq's scheduler read the crontab
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(20)


def test_periodic_run_is_skipped_while_a_training_runs(tmp_path, caplog):
    import logging
    import socket

    from digitq.disk.storage import atomic_write_json
    from digitq.disk.training_requests import create_training, list_trainings
    from worker.beat import scheduled_training

    # Redis is unreachable here: a run that tried to send would fail loudly instead of skipping.
    settings = Settings.from_env(redis_url="redis://127.0.0.1:1/0", data_dir=str(tmp_path))
    running = create_training(settings.trainings_dir, sources=[str(tmp_path)], epochs=1, from_version=None,
                              holdout=0.2, seed=0, promote="auto", by="schedule")
    atomic_write_json(running.dir / "run.json", {"host": socket.gethostname(), "pid": os.getpid(), "attempt": 1,
                                                 "started": time.time(), "heartbeat": time.time()})
    assert running.status()["state"] == "running"
    with caplog.at_level(logging.WARNING, logger="digitq.beat"):
        assert scheduled_training(settings) is None
    assert f"training {running.id} is still running" in caplog.text
    assert list_trainings(settings.trainings_dir) == [running.id]
