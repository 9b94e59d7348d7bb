"""Concurrent deliveries, forced into their worst interleaving by real barriers (tests/racing.py), on a real
redis-server with real Celery workers: a training is trained once, and live copies of a batch quarantine
nothing."""

import json
import os
import subprocess
import sys
import textwrap

import redis

from digitq.bus import keys
from digitq.disk import csvfile
from digitq.disk.training_requests import send_training
from digitq.settings import Settings
from model.dataset import write_image_folder
from model.registry import Registry
from producer.dispatch import resume, submit
from producer.retraining import request_training
from worker.process import WorkerProcess

from .conftest import ROOT, worker_env
from .pipeline_helpers import db_url, wait_until
from .test_poison import marked_png

BLOCK = "DIGITQ-TEST-BLOCKS-HERE"


def racing_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for ``celery -A racing`` (tests/racing.py)."""
    path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    return {**worker_env(settings), "PYTHONPATH": path, **extra}


def test_two_concurrent_deliveries_of_a_training_train_it_once(redis_server, tmp_path, mnist):
    url = db_url(redis_server.url, 13)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "labelled"
    write_image_folder(folder, mnist.x_train[:60], mnist.y_train[:60])
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = racing_env(settings, DIGITQ_TEST_CLAIM_BARRIER=str(barrier), DIGITQ_TEST_CLAIM_PARTIES="2")
    with WorkerProcess(env, tmp_path / "racers.log", queues="train", concurrency=2, app="racing",
                       name="racers") as racers:
        training = request_training(settings, sources=[str(folder)], epochs=1, from_version=None, holdout=0.2,
                                    seed=0, promote="never")
        send_training(settings, training)  # a second delivery of the same training, as `train --retry` sends
        wait_until(lambda: racers.log().count("Task digitq.train_model[") >= 4, timeout=240, poll=0.5,
                   what="both deliveries to be received and acknowledged")  # "received" + "succeeded", twice
        log = racers.log()
    # Both deliveries read the training's state before either claimed it: the race was run, not avoided.
    assert len(list(barrier.glob("looked-*"))) == 2
    assert log.count(" succeeded in ") == 2, log
    # One training ran: one epoch line, one attempt in its log, one version, and the winner's outcome.
    assert len((training.dir / "progress.jsonl").read_text().splitlines()) == 1
    assert training.log_path.read_text().count(f"training {training.id}: attempt") == 1
    status = training.status()
    assert status["state"] == "done" and status["attempt"] == 1, status
    published = [ref for ref in Registry(settings.models_dir).versions() if ref.meta.get("training_id") == training.id]
    assert len(published) == 1
    outcome = json.loads((training.dir / "outcome.json").read_text())
    assert outcome["state"] == "done" and outcome.get("evaluation_examples")  # a run's outcome, not a duplicate's
    assert "earlier delivery" not in outcome["reason"]
    # The other delivery was acknowledged without training, saying why.
    assert log.count(f"training {training.id} is already being trained by") == 1
    assert redis.Redis.from_url(url).keys(keys.training_pattern(training.id)) == []  # the claim was released


def test_live_copies_of_a_batch_quarantine_nothing(redis_server, tmp_path, mnist):
    url = db_url(redis_server.url, 14)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:5], mnist.y_test[:5])
    slow = folder / str(mnist.y_test[5]) / "slow.png"
    slow.write_bytes(marked_png(mnist.x_test[5], BLOCK))  # a healthy file that takes its time
    gate = tmp_path / "gate"
    gate.mkdir()
    env = racing_env(settings, DIGITQ_TEST_BLOCK_MARKER=BLOCK, DIGITQ_TEST_BLOCK_DIR=str(gate))

    def inside() -> int:
        return len(list(gate.glob("entered-*")))

    with WorkerProcess(env, tmp_path / "w.log", concurrency=4, app="racing") as worker:
        job = submit(settings, [str(folder)], batch_size=10)  # one batch
        wait_until(lambda: inside() == 1, timeout=60, what="the first delivery to reach the slow file")
        # `resume` re-sends the batch that is still running, three times: copies 2-4, the last two careful
        # deliveries that find the markers of live copies in the same file.
        for copies in (2, 3, 4):
            assert resume(settings, job) == [0]
            wait_until(lambda copies=copies: inside() == copies or job.is_complete(), timeout=60,
                       what=f"copy {copies} to reach the slow file")
            assert not job.is_complete(), "a copy skipped the slow file: it was quarantined"
        (gate / "release").touch()
        wait_until(lambda: job.is_done(), timeout=60, what="the job")
        wait_until(lambda: worker.log().count(" succeeded in ") == 4, timeout=60, what="all four copies to end")
        log = worker.log()
    rows = csvfile.read(job.csv_path)
    assert len(rows) == 6 and not [r for r in rows if r["error"]], rows
    assert log.count("processing file by file") == 3  # copies 2-4 were careful
    assert "quarantined" not in log
    assert redis.Redis.from_url(url).keys(keys.deliveries("*", "*")) == []


def _hold_in_child(code: str) -> subprocess.Popen:
    """A Python process that runs ``code`` (which prints a line once it holds something), then sleeps."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code) + "\nprint('held', flush=True)\n"
                              "import time; time.sleep(120)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_lease_is_exclusive_while_its_holder_lives_and_taken_over_at_once_when_it_is_killed(redis_server):
    from digitq.bus.holders import Holder, Lease

    url = db_url(redis_server.url, 15)
    client = redis.Redis.from_url(url)
    child = _hold_in_child(f"""
        import redis
        from digitq.bus.holders import Lease
        assert Lease(redis.Redis.from_url({url!r}), "test:lease", 60).acquire() is None
    """)
    try:
        mine = Lease(client, "test:lease", 60)
        assert mine.acquire().pid == child.pid  # alive: refused
    finally:
        child.kill()
        child.wait()
    assert mine.acquire() is None  # SIGKILLed on this host: taken over now, not after its 60 s
    assert client.pttl("test:lease") > 50_000 and mine.refresh()
    mine.release()
    # A holder on another host cannot be looked up: its lease must lapse first.
    far = Lease(client, "test:lease", 0.5, Holder("elsewhere", "", 1, "1"))
    assert far.acquire() is None
    assert mine.acquire() == far.holder and not far.holder.local()
    wait_until(lambda: mine.acquire() is None, timeout=5, what="the far lease to lapse")
    assert not far.refresh()  # and it knows it lost the claim


def _careful_child(url: str, index: int, remote: bool = False) -> subprocess.Popen:
    """A process in a careful delivery of job-z batch 0, at file ``index``, alive until killed; ``remote``:
    named as a process of another host (so only its alive key, refreshed every 0.3 s for 1.5 s, tells)."""
    return _hold_in_child(f"""
        import os
        from digitq.batch import quarantine
        from digitq.bus.holders import Holder
        from digitq.settings import Settings
        quarantine.ALIVE_TTL_MS, quarantine.ALIVE_EVERY_S = 1500, 0.3
        if {remote!r}:
            quarantine._token = (os.getpid(), Holder("another-host", "ns", os.getpid(), "1", "boot").token())
        delivery = quarantine.Delivery.begin(Settings.from_env(redis_url={url!r}), "job-z", 0)
        assert delivery.careful
        delivery.before({index})
    """)


def test_only_the_markers_of_dead_deliveries_count_as_deaths(redis_server):
    import time

    from digitq.batch import quarantine
    from digitq.settings import Settings

    url = db_url(redis_server.url, 15)
    settings = Settings.from_env(redis_url=url)
    client = redis.Redis.from_url(url)
    client.flushdb()
    key = keys.deliveries("job-z", 0)
    begin = lambda: quarantine.Delivery.begin(settings, "job-z", 0)  # noqa: E731
    begin()
    children = {index: _careful_child(url, index, remote) for index, remote in ((3, False), (6, False), (4, True))}
    try:
        marker = {i: next(n for n in client.hkeys(key) if f"|{c.pid}|".encode() in n) for i, c in children.items()}
        children[6].kill()  # a process of this host dies on file 6: known at once from its pid
        children[6].wait()
        # Another host's delivery died on file 5 (its alive key is gone), and one on file 7 just now (its key
        # has 1.5 s to live, and nobody refreshes it); another host's live delivery is on file 4 (child 4).
        client.hset(key, "at:faraway|ns|8|1|boot", "5")
        client.pipeline().hset(key, "at:far2|ns|9|1|boot", "7").set(
            keys.alive("job-z", 0, "far2|ns|9|1|boot"), 1, px=1500).execute()
        started = time.monotonic()
        second = begin()
        assert second.deaths == {5: 1, 6: 1, 7: 1}  # 7 once its key expired; well within the 10 s TTL
        assert time.monotonic() - started < quarantine.ALIVE_TTL_MS / 1000
        # The live copies' markers stand: neither file 3 (this host) nor 4 (another host) was charged.
        assert client.hexists(key, marker[3]) and client.hexists(key, marker[4])
        children[4].kill()  # the other host's copy dies on file 4: its key expires within 1.5 s
        children[4].wait()
        third, fourth = begin(), begin()  # two deliveries after the death: it is charged once
        assert third.deaths == fourth.deaths == {4: 1, 5: 1, 6: 1, 7: 1}
        assert client.hexists(key, marker[3])
    finally:
        for child in children.values():
            child.kill()
            child.wait()
    fourth.before(0)
    assert client.exists(fourth._alive_key)  # set with its marker, kept while this careful delivery runs ...
    fourth.finish()
    assert not client.exists(fourth._alive_key) and not client.exists(key)  # ... and gone with it


def test_a_holder_of_another_boot_is_never_taken_for_a_local_one(redis_server):
    import socket

    from digitq.bus.holders import Holder, Lease, _pid_namespace, boot_id

    assert boot_id() and Holder.me().boot == boot_id()
    client = redis.Redis.from_url(db_url(redis_server.url, 15))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs here
    # Two hosts with the same host name (a fixed container `hostname:`) and the init pid namespace, whose
    # inode is the same on every Linux host: only the boot id tells them apart.
    twin = Holder(socket.gethostname(), _pid_namespace(), gone.pid, "1", "another-boot")
    assert Holder.from_token(twin.token()) == twin and not twin.local()
    far = Lease(client, "test:twin", 60, twin)
    assert far.acquire() is None
    assert Lease(client, "test:twin", 60).acquire() == twin  # alive for all we know: not taken over
    client.delete("test:twin")
    here = Holder(socket.gethostname(), _pid_namespace(), gone.pid, "1", boot_id())
    assert here.local() and not here.running()
    assert Lease(client, "test:twin", 60, here).acquire() is None
    assert Lease(client, "test:twin", 60).acquire() is None  # this host's dead holder: taken over at once
    client.delete("test:twin")


def test_a_lost_lease_is_never_taken_again(redis_server):
    import pytest
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry

    from digitq.bus.holders import UNKNOWN, Holder, Lease
    from digitq.bus.server import free_port

    client = redis.Redis.from_url(db_url(redis_server.url, 15))
    # Another holder took it (after a lapse): lost, and lost for good even once the key is free again.
    mine = Lease(client, "test:keep", 60)
    assert mine.acquire() is None and mine.keep() is None
    client.delete("test:keep")
    other = Lease(client, "test:keep", 60, Holder("elsewhere", "", 1, "1", "b"))
    assert other.acquire() is None
    assert mine.keep() == other.holder and mine.lost.is_set()
    other.release()
    assert mine.keep() == other.holder and client.get("test:keep") is None
    # It lapsed (a pause longer than its TTL), nobody in it: lost, not taken again.
    short = Lease(client, "test:keep", 0.3)
    assert short.acquire() is None
    wait_until(lambda: client.pttl("test:keep") == -2, timeout=5, what="the lease to lapse")
    assert short.keep() == UNKNOWN and client.get("test:keep") is None
    # Gone sooner than it could have lapsed (Redis restarted without persistence): taken again, unless told not.
    for retake in (True, False):
        again = Lease(client, "test:keep", 60)
        assert again.acquire() is None
        client.delete("test:keep")
        assert (again.keep(lambda retake=retake: retake) is None) == retake
        assert (client.get("test:keep") == again.value.encode()) == retake
        client.delete("test:keep")
    # Redis silent: still ours within the TTL (the error is raised), lost once the lease could have lapsed.
    silent = Lease(client, "test:keep", 0.5)
    assert silent.acquire() is None
    silent.client = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))  # nothing listens there
    with pytest.raises(RedisError):
        silent.keep()

    def lost() -> bool:
        try:
            return silent.keep() == UNKNOWN
        except RedisError:
            return False

    wait_until(lost, timeout=5, what="the silent lease to count as lost")
    client.delete("test:keep")


def test_a_delivery_that_finds_the_training_claimed_touches_nothing(redis_server, tmp_path):
    import pytest

    from digitq.bus.broker import redis_client
    from digitq.bus.holders import Holder, Lease
    from digitq.disk.training_requests import TrainingClaimed, claim_key, create_training
    from digitq.settings import Settings
    from model.training.run import run_training

    url = db_url(redis_server.url, 15)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path))
    settings.trainings_dir.mkdir(parents=True)
    training = create_training(settings.trainings_dir, sources=[str(tmp_path)], epochs=1, from_version=None,
                               holdout=0.2, seed=0, promote="never", by="test")
    key = claim_key(training.id)
    child = _hold_in_child(f"""
        import redis
        from digitq.bus.holders import Lease
        assert Lease(redis.Redis.from_url({url!r}), {key!r}, 60).acquire() is None
    """)
    try:  # held by a live process on this host: acknowledged as a duplicate
        assert run_training(settings, training.id) == {"training_id": training.id, "state": "running",
                                                       "duplicate": True}
    finally:
        child.kill()
        child.wait()
    redis_client(settings).delete(key)
    far = Lease(redis_client(settings), key, 60, Holder("elsewhere", "", 1, "1"))
    assert far.acquire() is None
    with pytest.raises(TrainingClaimed, match="already being trained by elsewhere"):  # the task retries later
        run_training(settings, training.id)
    assert sorted(p.name for p in training.dir.iterdir()) == ["request.json"]  # no run.json, no outcome.json


def claim_contest(redis_server, tmp_path, mnist, monkeypatch, *, epochs: int, promote: str):
    """A training of 60 digits on its own database, heartbeats every 50 ms, and a lease on its claim held by a
    process "elsewhere" (not yet acquired): ``(settings, training, client, key, other)``."""
    from digitq.bus.holders import Holder, Lease
    from digitq.disk import training_requests as trainings
    from digitq.disk.training_requests import claim_key, create_training

    url = db_url(redis_server.url, 12)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    settings.trainings_dir.mkdir(parents=True)
    folder = tmp_path / "labelled"
    write_image_folder(folder, mnist.x_train[:60], mnist.y_train[:60])
    training = create_training(settings.trainings_dir, sources=[str(folder)], epochs=epochs, from_version=None,
                               holdout=0.2, seed=0, promote=promote, by="test")
    monkeypatch.setattr(trainings, "HEARTBEAT_S", 0.05)
    client = redis.Redis.from_url(url)
    key = claim_key(training.id)
    return settings, training, client, key, Lease(client, key, 60, Holder("elsewhere", "ns", 7, "1", "boot"))


def test_a_training_that_loses_its_claim_mid_run_stops_publishes_nothing_and_overwrites_nothing(
        redis_server, tmp_path, mnist, monkeypatch):
    from digitq.disk.storage import atomic_write_json
    from digitq.disk.training_requests import Training
    from model.training.run import run_training

    settings, training, client, key, other = claim_contest(redis_server, tmp_path, mnist, monkeypatch, epochs=3,
                                                           promote="never")
    theirs = {"host": "elsewhere", "pid": 7, "holder": other.holder.token(), "attempt": 2, "started": 1.0,
              "heartbeat": 1.0}
    add_progress = Training.add_progress

    def first_epoch_then_taken_over(self, epoch):
        add_progress(self, epoch)
        if epoch["epoch"] != 1:
            return
        # This run's lease lapsed (Redis partitioned, the VM paused); another delivery took the claim ...
        client.delete(key)
        assert other.acquire() is None
        assert self.lease.lost.wait(10), "the heartbeat did not notice"
        # ... ran, recorded its outcome and let the claim go, all before this run looks again.
        atomic_write_json(self.dir / "run.json", theirs)
        assert Training(self.dir, self.request).finish({"state": "done", "version": "theirs", "reason": "B"})
        other.release()

    monkeypatch.setattr(Training, "add_progress", first_epoch_then_taken_over)
    result = run_training(settings, training.id)
    assert result["duplicate"] and result["state"] == "failed" and "lost its claim" in result["error"]
    # It stopped at the next epoch's end: one epoch of three, nothing published, their outcome and run stand.
    assert len((training.dir / "progress.jsonl").read_text().splitlines()) == 1
    assert Registry(settings.models_dir).find_training(training.id) is None
    assert not (settings.models_dir / ".staging").exists() or not any((settings.models_dir / ".staging").iterdir())
    outcome = json.loads((training.dir / "outcome.json").read_text())
    assert outcome["version"] == "theirs" and outcome["reason"] == "B"
    assert training.run_record() == theirs
    assert client.get(key) is None  # the free claim was not taken again
    assert "this attempt lost its claim; its outcome is not recorded" in training.log_path.read_text()
    # An outcome is written once: a later one never replaces it.
    assert not training.finish({"state": "failed", "error": "late"})
    assert json.loads((training.dir / "outcome.json").read_text())["version"] == "theirs"
    assert sorted(p.name for p in training.dir.iterdir() if p.name.startswith(".")) == []
