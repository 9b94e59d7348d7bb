"""End to end: a real redis-server on a free port, a real Celery worker, the real bundled model."""

import json
import os
import signal
import time

import numpy as np
import pytest
from click.testing import CliRunner

from digitq.batch.message import BatchMessage
from digitq.bus.broker import PREDICT_TASK, client_app
from digitq.bus.server import RedisServer
from digitq.disk import csvfile
from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.cli import main
from producer.dispatch import enqueue, message_entries
from producer.follow import wait_for

from .pipeline_helpers import MODES, db_url, last_json, make_job, start_workers, stop_workers, wait_until


def cli(settings: Settings, *args: str):
    env = {"DIGITQ_REDIS_URL": settings.redis_url, "DIGITQ_DATA_DIR": str(settings.data_dir)}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def digits(tmp_path, mnist):
    """30 real MNIST test digits as PNG files, plus broken files among them."""
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:30], mnist.y_test[:30])
    (folder / "3" / "00000-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (folder / "3" / "00001-empty.jpg").write_bytes(b"")
    (folder / "3" / "README.txt").write_text("not an image")
    return folder


def test_scan_end_to_end_with_corrupt_images(worker, settings, digits, tmp_path):
    out = tmp_path / "result.csv"
    result = cli(settings, "scan", str(digits), "--batch-size", "8", "--wait", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    assert summary["total"] == 32 and summary["skipped"] == 1 and summary["batches"] == 4
    assert summary["state"] == "done" and summary["errors"] == 2
    rows = csvfile.read(out)
    assert out.read_bytes() == open(summary["output"], "rb").read()
    paths = [r["path"] for r in rows]
    assert len(rows) == 32 and len(set(paths)) == 32 and paths == sorted(paths)
    assert all(p.startswith(str(digits)) for p in paths)
    by_name = {os.path.basename(r["path"]): r for r in rows}
    for name in ("00000-corrupt.png", "00001-empty.jpg"):
        assert by_name[name]["prediction"] == "" and by_name[name]["error"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 30 and all(r["model_version"] == summary["model_version"] for r in rows)
    correct = sum(r["prediction"] == r["path"].split("/")[-2] for r in good)
    assert correct >= 29
    # the corrupt file's batch-mates were predicted
    corrupt_batch = paths.index(str(digits / "3" / "00000-corrupt.png")) // 8
    assert all(r["prediction"] for r in good if paths.index(r["path"]) // 8 == corrupt_batch)


@pytest.mark.parametrize("mode", MODES)
def test_batch_delivered_twice_yields_one_row_per_file(redis_server, tmp_path, digits, mode):
    settings = Settings.from_env(redis_url=db_url(redis_server.url, 2), data_dir=str(tmp_path / "d"))
    workers = start_workers(mode, settings, tmp_path)
    try:
        job = make_job(settings, digits, batch_size=10)
        enqueue(settings, job, [0, 2, 3])  # duplicates of three batches
        wait_for(job, timeout=60)
        first = job.csv_path.read_bytes()
        rows = csvfile.read(job.csv_path)
        assert len(rows) == job.total == 32 and len({r["path"] for r in rows}) == 32
        # the first commit of each batch stands: the three duplicates were discarded and counted
        wait_until(lambda: job.discarded() == 3, what="the duplicates to be discarded")
        # a late duplicate after the merge changes nothing either, and is counted too
        before = job.result_path(1).read_bytes()
        enqueue(settings, job, [1])
        wait_until(lambda: job.discarded() == 4, what="the late duplicate to be discarded")
        assert job.result_path(1).read_bytes() == before
        assert job.finalize() and job.csv_path.read_bytes() == first
    finally:
        stop_workers(workers)
    assert workers[0].log().count("Task digitq.predict_batch") >= 2 * 8  # received and succeeded, 8 deliveries
    assert sum(w.log().count("discarded, a duplicate") for w in workers) == 4


def test_merge_waits_for_last_batch_and_is_idempotent(worker, settings, digits):
    job = make_job(settings, digits, batch_size=12, send=False)
    assert job.n_batches == 3
    enqueue(settings, job, [0, 2])
    wait_until(lambda: job.committed() == {0, 2}, what="two batches")
    assert not job.csv_path.exists() and not job.finalize()
    assert job.status()["state"] == "running" and job.status()["done"] == 12 + 8
    enqueue(settings, job, [1])
    status = wait_for(job, timeout=60)
    assert status["state"] == "done" and status["done"] == 32
    merged = job.csv_path.read_bytes()
    (job.dir / "done.json").unlink()  # force a real second merge
    assert job.finalize() and job.finalize()
    assert job.csv_path.read_bytes() == merged


def test_status_wait_and_jobs_report_truthfully(worker, settings, digits):
    job = make_job(settings, digits, batch_size=16, send=False)
    st = json.loads(cli(settings, "status", job.id, "--json").stdout)
    assert (st["state"], st["done"], st["total"]) == ("queued", 0, 32)
    timed_out = cli(settings, "wait", job.id, "--timeout", "0.5")
    assert timed_out.exit_code == 3 and "not done" in timed_out.stderr
    enqueue(settings, job)
    waited = cli(settings, "wait", job.id, "--timeout", "60", "--json")
    assert waited.exit_code == 0, waited.output
    st = json.loads(cli(settings, "status", job.id, "--json").stdout)
    assert (st["state"], st["done"], st["errors"], st["batches_done"]) == ("done", 32, 2, 2)
    assert st["output"] == str(job.csv_path.resolve()) and st["finished"] >= st["started"] >= st["created"]
    listed = json.loads(cli(settings, "jobs", "--json").stdout)
    assert {"job_id": job.id, "state": "done"}.items() <= next(j for j in listed if j["job_id"] == job.id).items()
    human = cli(settings, "status", job.id).stdout
    assert "done" in human and "32/32" in human
    missing = cli(settings, "status", "20990101-000000-abcdef")
    assert missing.exit_code == 1 and "no job" in missing.stderr and "Traceback" not in missing.output


def test_pickle_messages_are_refused(worker, settings, digits):
    job = make_job(settings, digits, batch_size=32, send=False)
    args = BatchMessage(job.id, 0, message_entries(settings, job, 0, next(job.batches())[1])).to_wire()
    app = client_app(settings)
    try:
        app.send_task(PREDICT_TASK, args=args, queue=settings.predict_queue, serializer="pickle")
        wait_until(lambda: "disallowed" in worker.log().lower() or "refusing" in worker.log().lower(),
                   what="the worker to refuse pickle")
        assert job.committed() == set()
        app.send_task(PREDICT_TASK, args=args, queue=settings.predict_queue)  # JSON: accepted
    finally:
        app.close()
    assert wait_for(job, timeout=60)["state"] == "done"


@pytest.mark.parametrize("mode", MODES)
def test_resume_after_redis_restarted_empty(tmp_path, digits, mode):
    with RedisServer() as redis:
        settings = Settings.from_env(redis_url=redis.url, data_dir=str(tmp_path / "data"))
        job = make_job(settings, digits, batch_size=4, send=False)
        assert job.n_batches == 8
        workers = start_workers(mode, settings, tmp_path, name="w1")
        try:
            enqueue(settings, job, range(3))
            wait_until(lambda: job.committed() == {0, 1, 2}, what="first batches")
        finally:
            stop_workers(workers)
        enqueue(settings, job, range(3, 8))  # queued while no worker runs...
        redis.restart()  # ...and lost (and the model sent with them): Redis comes back empty
        workers = start_workers(mode, settings, tmp_path, name="w2")
        try:
            result = cli(settings, "resume", job.id, "--json")
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["resent_batches"] == 5
            assert wait_for(job, timeout=60)["done"] == 32
        finally:
            stop_workers(workers)
        again = cli(settings, "resume", job.id, "--json")
        assert json.loads(again.stdout) == {"job_id": job.id, "resent_batches": 0, "resent_images": 0,
                                            "state": "done"}
    assert len(csvfile.read(job.csv_path)) == 32


def test_scan_of_10000_mnist_pngs_matches_evaluate(worker, settings, mnist, tmp_path):
    """The Done-when check: 10,000 rows, unique paths, accuracy equal to `digitq evaluate`."""
    from model.quality.evaluation import evaluate_model

    folder = tmp_path / "mnist-test"
    write_image_folder(folder, mnist.x_test, mnist.y_test)
    result = cli(settings, "scan", str(folder), "--wait", "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    rows = csvfile.read(summary["output"])
    assert len(rows) == 10_000 and len({r["path"] for r in rows}) == 10_000
    assert all(r["model_version"] and not r["error"] for r in rows)
    labels = np.array([int(r["path"].split("/")[-2]) for r in rows])
    predictions = np.array([int(r["prediction"]) for r in rows])
    accuracy = float((labels == predictions).mean())
    evaluated = evaluate_model(settings, mnist.source)
    assert evaluated["model_version"] == rows[0]["model_version"]
    assert accuracy == pytest.approx(evaluated["accuracy"], abs=1e-9)
    assert accuracy >= 0.994
    # the worker process loaded the model once, for all 40 batches and every earlier test
    log = worker.log()
    assert log.count("loaded model") == 1, log[-2000:]
    cores = len(os.sched_getaffinity(0))
    assert f"1 process(es) x {cores} TF thread(s)" in log


def test_by_path_and_per_file_limit(worker, settings, digits, tmp_path):
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (120, 120), dtype=np.uint8)).save(digits / "noise-big.png")
    env = {"DIGITQ_REDIS_URL": settings.redis_url, "DIGITQ_DATA_DIR": str(settings.data_dir),
           "DIGITQ_MAX_FILE_BYTES": "5000"}
    results = {}
    for mode in ([], ["--by-path"]):
        result = CliRunner().invoke(main, ["scan", str(digits), "--wait", "--json", *mode], env=env)
        assert result.exit_code == 0, result.output
        rows = csvfile.read(last_json(result)["output"])
        results[bool(mode)] = {r["path"]: (r["prediction"], r["error"]) for r in rows}
    assert results[True] == results[False] and len(results[True]) == 33
    prediction, error = results[True][str(digits / "noise-big.png")]
    assert prediction == "" and "limit" in error


def test_backpressure_bounds_images_in_flight(worker, settings, digits):
    import threading

    import redis

    client = redis.Redis.from_url(settings.redis_url)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], client.llen(settings.predict_queue))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = cli(settings, "scan", str(digits), "--batch-size", "2", "--max-in-flight", "4", "--wait", "--json")
    finally:
        stop.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    assert last_json(result)["batches"] == 16
    assert 1 <= peak[0] <= 2  # never more than 4 images (two batches) sent but not committed


@pytest.mark.parametrize("mode", MODES)
def test_sigkilled_worker_process_loses_no_batch(tmp_path, mnist, mode):
    """A pool process killed mid-batch: the batch is redelivered, the job still gets one row per file."""
    folder = tmp_path / "big"
    big = np.kron(mnist.x_test[:1500], np.ones((8, 8), np.uint8))  # 224x224 digits: slow to frame
    write_image_folder(folder, big, mnist.y_test[:1500])
    with RedisServer() as redis_server:
        settings = Settings.from_env(redis_url=redis_server.url, data_dir=str(tmp_path / "data"))
        job = make_job(settings, folder, batch_size=1500, send=False)
        workers = start_workers(mode, settings, tmp_path)
        try:
            w = workers[0]  # the one that predicts (in "stateless" mode, it cannot see the data dir)
            [child] = w.child_pids()
            enqueue(settings, job)
            wait_until(lambda: "received" in w.log(), what="the batch to reach the worker", poll=0.005)
            os.kill(child, signal.SIGKILL)
            status = wait_for(job, timeout=120)
            replacement = w.child_pids()
        finally:
            stop_workers(workers)
        log = w.log()
    assert status["done"] == 1500
    assert job.result_header(0)["pid"] != child and job.result_header(0)["pid"] in replacement
    assert "signal 9" in log or "WorkerLostError" in log
    rows = csvfile.read(job.csv_path)
    assert len(rows) == 1500 and len({r["path"] for r in rows}) == 1500


def test_awkward_file_names_end_to_end(worker, settings, mnist, tmp_path, monkeypatch):
    """Non-UTF-8 bytes, RFC 4180 specials and formula-like names survive the whole trip, one row each."""
    from PIL import Image

    folder = tmp_path / "names"
    folder.mkdir()
    names = [b"caf\xe9.png", b'comma, "quote"\nnewline.png', b"=HYPERLINK(1).png", b"back\\slash.png",
             "\u00fcnicode-\u65e5\u672c.png".encode()]
    for i, name in enumerate(names):
        Image.fromarray(mnist.x_test[i]).save(os.path.join(os.fsencode(folder), name), format="PNG")
    result = cli(settings, "scan", str(folder), "--wait", "--json")
    assert result.exit_code == 0, result.output
    raw = open(last_json(result)["output"], "rb").read()
    raw.decode("utf-8")  # the CSV is valid UTF-8 whatever the names
    rows = csvfile.read(last_json(result)["output"])
    shown = sorted(r["path"][len(str(folder)) + 1 :] for r in rows)
    assert shown == sorted(["caf\\xe9.png", 'comma, "quote"\nnewline.png', "=HYPERLINK(1).png",
                            "back\\\\slash.png", "\u00fcnicode-\u65e5\u672c.png"])
    assert all(r["prediction"] and not r["error"] for r in rows)
    # scanned by a bare relative name, the path cell itself would start with "=": it gets a quote
    monkeypatch.chdir(folder)
    result = cli(settings, "scan", "=HYPERLINK(1).png", "--wait", "--json")
    assert result.exit_code == 0, result.output
    text = open(last_json(result)["output"], encoding="utf-8").read()
    assert text.splitlines()[1].startswith("'=HYPERLINK(1).png,")
