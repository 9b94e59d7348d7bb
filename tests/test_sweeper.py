"""The stack's own stall handling (worker/sweeper.py): with only workers running (no `digitq wait`, no
`resume`), a batch a dead worker host took with it is sent again from its copy in Redis, and a job whose
every batch is committed but not merged is merged."""

import os
import time

import pytest
import redis

from digitq.batch import outbox, stalls
from digitq.batch.message import BatchMessage
from digitq.bus.broker import PREDICT_TASK, client_app
from digitq.disk import csvfile
from digitq.disk.jobs import Row
from digitq.disk.storage import data_dir_id
from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.dispatch import job_context, message_entries, submit
from producer.follow import wait_for
from worker import sweeper
from worker.process import WorkerProcess

from .conftest import worker_env
from .pipeline_helpers import MODES, db_url, make_job, start_workers, stop_workers, wait_until
from .test_poison import marked_png, sabotaged_env


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_a_dead_host_took_is_sent_again_by_the_stack_itself(redis_server, tmp_path, mnist, mode):
    url = db_url(redis_server.url, 3)
    redis.Redis.from_url(url).flushdb()
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:29], mnist.y_test[:29])
    (folder / str(mnist.y_test[29]) / "slow.png").write_bytes(marked_png(mnist.x_test[29], "DIGITQ-TEST-SLOW"))
    env = {"DIGITQ_STALL_AFTER": "3"}
    dead = sabotaged_env(settings, DIGITQ_TEST_SLOW_MARKER="DIGITQ-TEST-SLOW", **env)
    dead["DIGITQ_DATA_DIR"] = str(tmp_path / "nowhere")  # predicts statelessly: it commits nothing itself
    doomed = WorkerProcess(dead, tmp_path / "dead.log", app="sabotage", name="doomed").start()
    try:
        job = submit(settings, [str(folder)], batch_size=10)  # 3 batches: the doomed worker stalls on one
        wait_until(lambda: "loaded model" in doomed.log(), timeout=30, what="the doomed worker to take a batch")
        time.sleep(1.0)  # it takes a minute on the slow file, wherever it is
        os.killpg(doomed.proc.pid, 9)  # the whole host dies: parent and pool, its batches unacked
    finally:
        doomed.stop()
    assert job.committed() == set() and outbox.pending(settings, job.id).keys() == {0, 1, 2}
    workers = start_workers(mode, settings, tmp_path, env=env, name="good")
    try:
        status = wait_for(job, timeout=60)  # follows the files only: no stall handling of its own
    finally:
        stop_workers(workers)
    logs = "".join(w.log() for w in workers)
    assert status["state"] == "done" and "sent them again" in logs
    rows = csvfile.read(job.csv_path)
    assert len(rows) == 30 and not any(r["error"] for r in rows)
    assert outbox.pending(settings, job.id) == {}


def test_a_job_committed_but_never_merged_is_merged_and_its_copies_forgotten(redis_server, tmp_path, mnist):
    url = db_url(redis_server.url, 3)
    redis.Redis.from_url(url).flushdb()
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"), stall_after=1)
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:6], mnist.y_test[:6])
    job = make_job(settings, folder, batch_size=3, send=False)
    for batch, files in job.batches():  # committed by workers whose ledger entries a failover lost
        job.commit(batch, [Row(f.path, 1, 0.5) for f in files], model_version="bundled-2", started=time.time())
        outbox.put(settings, job.id, batch, [job.id, batch, [], {}])
    sent = []
    assert not job.is_done()
    assert sweeper.sweep(settings, sent.append) == {"merged": 1, "resent": 0, "forgotten": 0}
    assert job.is_done() and len(csvfile.read(job.csv_path)) == 6 and sent == []
    time.sleep(sweeper.interval_s(settings))  # the pass's lock lapses
    assert sweeper.sweep(settings, sent.append)["forgotten"] == 1 and outbox.jobs(settings) == []


def test_two_sweepers_at_once_send_each_lost_batch_once(redis_server, tmp_path, mnist):
    """Two workers collect for one data dir, so two sweepers look at its jobs. Three one-batch jobs lose their
    messages (Redis lost the queue); each batch is sent again once, never once per sweeper."""
    url = db_url(redis_server.url, 3)
    redis.Redis.from_url(url).flushdb()
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    settings.data_dir.mkdir()
    client = redis.Redis.from_url(url)
    collect = settings.collect_route(data_dir_id(settings.data_dir))
    env = {**worker_env(settings), "DIGITQ_STALL_AFTER": "5"}  # a pass every 1.25 s; each stalled job costs ~1 s
    sweepers = [WorkerProcess(env, tmp_path / f"sweeper-{n}.log", name=f"sweeper-{n}", queues=collect)
                for n in (1, 2)]
    try:
        for w in sweepers:
            w.start()
        jobs = []
        for n in range(3):
            write_image_folder(tmp_path / f"in-{n}", mnist.x_test[n:n + 1], mnist.y_test[n:n + 1])
            jobs.append(make_job(settings, tmp_path / f"in-{n}", batch_size=1))
        client.delete(settings.predict_queue)  # `redis-cli del predict`: nothing predicts, nothing is queued
        wait_until(lambda: client.llen(settings.predict_queue) >= 3, timeout=90, poll=0.2,
                   what="the lost batches to be sent again")
        time.sleep(2 * sweeper.interval_s(Settings.from_env(stall_after=5)) + 3)  # passes that would send more
        queued = client.lrange(settings.predict_queue, 0, -1)
        logs = [w.log() for w in sweepers]
    finally:
        for w in sweepers:
            w.stop()
    assert len(queued) == 3 and [sum(job.id.encode() in raw for raw in queued) for job in jobs] == [1, 1, 1]
    assert sum(log.count("sent them again") for log in logs) == 3


def test_a_batch_waiting_for_its_retry_countdown_is_held_not_lost(redis_server, tmp_path, mnist):
    """A retried batch waits in its worker for the countdown (an ETA): neither queued nor reserved, but held,
    so neither `status` nor the sweeper takes it for lost."""
    url = db_url(redis_server.url, 3)
    redis.Redis.from_url(url).flushdb()
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    write_image_folder(tmp_path / "in", mnist.x_test[:2], mnist.y_test[:2])
    job = make_job(settings, tmp_path / "in", batch_size=2, send=False)
    client = redis.Redis.from_url(url)
    with WorkerProcess(worker_env(settings), tmp_path / "w.log") as worker:
        args = BatchMessage(job.id, 0, message_entries(settings, job, 0, dict(job.batches())[0]),
                            job_context(settings, job)).to_wire()
        app = client_app(settings)
        try:  # what `self.retry(countdown=...)` sends
            app.send_task(PREDICT_TASK, args=args, queue=settings.predict_queue, countdown=120)
        finally:
            app.close()
        wait_until(lambda: client.llen(settings.predict_queue) == 0, timeout=30, what="the worker to take it")
        wait_until(lambda: "received" in worker.log(), timeout=30, what="the worker to schedule it")
        orphaned = stalls.unclaimed(settings, job.id, {0})
    assert orphaned is False and job.committed() == set()


def test_the_sweeper_outlives_a_lost_broker_connection(redis_server, tmp_path, mnist):
    """Celery stops and restarts a worker's consumer steps whenever its broker connection drops (a failover, a
    restarted Redis); the sweeper must still run afterwards, since a failover is when batches get lost."""
    url = db_url(redis_server.url, 3)
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    settings.data_dir.mkdir()
    collect = settings.collect_route(data_dir_id(settings.data_dir))
    env = {**worker_env(settings), "DIGITQ_STALL_AFTER": "2"}
    with WorkerProcess(env, tmp_path / "w.log", name="restarted", queues=collect) as worker:
        wait_until(lambda: "ready." in worker.log(), timeout=30, what="the worker to be ready")
        # Every connection but this one dropped, as a dying master drops them: the consumer restarts.
        client.client_kill_filter(_type="normal", skipme=True)
        wait_until(lambda: "Connection to broker lost" in worker.log(), timeout=30, what="the consumer to notice")
        wait_until(lambda: worker.log().count("Connected to") >= 2, timeout=30, what="the consumer to reconnect")
        write_image_folder(tmp_path / "in", mnist.x_test[:1], mnist.y_test[:1])
        job = make_job(settings, tmp_path / "in", batch_size=1)
        client.delete(settings.predict_queue)  # the failover lost the message; its copy is in the outbox
        wait_until(lambda: client.llen(settings.predict_queue) == 1, timeout=60, poll=0.2,
                   what="the lost batch to be sent again, by the sweeper")
    assert job.id.encode() in client.lindex(settings.predict_queue, 0)
    assert "sent them again" in worker.log()
