"""Workers that need only Redis: no data dir, or a private one, and no shared files.

The guarantee tests (duplicates, SIGKILL, resume, poison files, dead hosts, incremental rescans) run for
both kinds of worker through ``pipeline_helpers.MODES``; these cover what only the stateless path has."""

import json
import os
import threading
from pathlib import Path

import pytest
import redis

from digitq.batch.message import Outcome
from digitq.bus import keys
from digitq.disk import csvfile
from digitq.disk.jobs import Row
from digitq.disk.storage import data_dir_id
from digitq.errors import JobError, ModelError
from digitq.settings import Settings
from model.dataset import write_image_folder
from model.registry import ONNX_FILE, Registry
from model.serving import artifacts
from producer.dispatch import enqueue
from producer.follow import wait_for
from worker.process import WorkerProcess

from .conftest import worker_env
from .pipeline_helpers import cli_for, last_json, make_job, wait_until


def _settings(redis_server, tmp_path: Path, db: int) -> Settings:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()  # other tests share the database numbers
    return Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))


def test_a_worker_with_no_data_dir_runs_a_job_then_report_and_review_work(redis_server, tmp_path, mnist):
    settings = _settings(redis_server, tmp_path, 13)
    settings.data_dir.mkdir()
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:100], mnist.y_test[:100])
    (folder / "3" / "00000-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    nowhere = tmp_path / "no-such-dir"
    collect = settings.collect_route(data_dir_id(settings.data_dir))
    with WorkerProcess({**worker_env(settings), "DIGITQ_DATA_DIR": str(nowhere)}, tmp_path / "stateless.log",
                       name="stateless") as predictor, \
            WorkerProcess(worker_env(settings), tmp_path / "collector.log", name="collector", queues=collect) as coll:
        job = make_job(settings, folder, batch_size=16)
        status = wait_for(job, timeout=60)
        pids = set(predictor.child_pids())
    rows = csvfile.read(job.csv_path)
    assert status["state"] == "done" and len(rows) == 101 and len({r["path"] for r in rows}) == 101
    good = [r for r in rows if not r["error"]]
    assert len(good) == 100 and sum(r["prediction"] == r["path"].split("/")[-2] for r in good) >= 98
    # Every batch was predicted by the worker without a data dir and committed by the collector.
    assert {job.result_header(b)["pid"] for b in range(job.n_batches)} <= pids
    assert coll.log().count("Task digitq.collect_batch") >= 2 * job.n_batches  # received and succeeded
    assert "digitq.predict_batch" not in coll.log()
    assert not nowhere.exists()  # it wrote nothing: the model was held in memory
    assert "serving statelessly" in predictor.log() and predictor.log().count("loaded model") == 1
    # Rows are bound to the bytes they scored, as from any worker: review and report show them.
    cli = cli_for(settings)
    reviewed = cli("review", job.id, "--below", "1.0", "--out", str(tmp_path / "review"), "--json")
    assert reviewed.exit_code == 0, reviewed.output
    doubtful = sum(float(r["confidence"]) < 1.0 for r in good)
    assert json.loads(reviewed.stdout)["exported"] == doubtful > 0 and json.loads(reviewed.stdout)["skipped"] == 0
    report = cli("report", job.id, "--json")
    assert report.exit_code == 0, report.output
    assert Path(last_json(report)["report"]).is_file()


def test_results_in_flight_stay_within_the_in_flight_window(redis_server, tmp_path, mnist):
    """With nobody collecting, the producer stops at its window: Redis holds at most that many results."""
    settings = _settings(redis_server, tmp_path, 14)
    settings.data_dir.mkdir()
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:200], mnist.y_test[:200])
    window = Settings.from_env(redis_url=settings.redis_url, data_dir=str(settings.data_dir), max_in_flight=20)
    collect = settings.collect_route(data_dir_id(settings.data_dir))
    client = redis.Redis.from_url(settings.redis_url)
    job = make_job(settings, folder, batch_size=5, send=False)  # 40 batches, the window 4 of them
    with WorkerProcess({**worker_env(settings), "DIGITQ_DATA_DIR": str(tmp_path / "private")},
                       tmp_path / "stateless.log", name="stateless"):
        sender = threading.Thread(target=enqueue, args=(window, job))
        sender.start()
        wait_until(lambda: client.llen(collect) == 4, timeout=30, what="the window's results waiting")
        sender.join(2.0)
        assert sender.is_alive() and client.llen(collect) == 4 and client.llen(settings.predict_queue) == 0
        with WorkerProcess(worker_env(settings), tmp_path / "collector.log", name="collector", queues=collect):
            peak = 0
            while sender.is_alive():
                peak = max(peak, client.llen(collect))
                sender.join(0.005)
            wait_for(job, timeout=60)
    assert peak <= 4 and len(csvfile.read(job.csv_path)) == 200


@pytest.fixture
def published(redis_server, tmp_path):
    settings = _settings(redis_server, tmp_path, 15)
    ref = Registry(settings.models_dir).bundled()
    artifacts.publish(settings, ref)
    return settings, ref, artifacts.descriptor(ref)


def test_a_model_comes_by_content_verified_and_cached_within_its_bound(published, tmp_path):
    settings, ref, model = published
    worker = Settings.from_env(redis_url=settings.redis_url, data_dir=str(tmp_path / "worker"))
    worker.data_dir.mkdir()
    got = artifacts.ArtifactCache().get(worker, model)
    assert got.read_verified(ONNX_FILE) == ref.read_verified(ONNX_FILE) and got.meta == ref.meta
    cached = worker.data_dir / "cache" / "models" / model["meta"]
    assert (cached / ONNX_FILE).is_file()
    # A damaged cache is fetched again, never served.
    (cached / ONNX_FILE).write_bytes(b"not the graph")
    again = artifacts.ArtifactCache().get(worker, model)
    assert again.read_verified(ONNX_FILE) == ref.read_verified(ONNX_FILE)
    # The cache keeps to its bound: the least recently used versions go first.
    root = worker.data_dir / "cache" / "models"
    old = root / ("f" * 64)
    old.mkdir()
    (old / ONNX_FILE).write_bytes(b"x" * 1000)
    os.utime(old, (0, 0))
    kept = sum(f.stat().st_size for f in cached.iterdir())
    artifacts._evict(root, kept + 500)
    assert [p.name for p in root.iterdir()] == [model["meta"]]
    artifacts._evict(root, 0)
    assert list(root.iterdir()) == []


def test_a_tampered_or_missing_model_is_refused(published, tmp_path):
    settings, ref, model = published
    client = redis.Redis.from_url(settings.redis_url)
    worker = Settings.from_env(redis_url=settings.redis_url, data_dir=str(tmp_path / "absent"))
    graph_key = keys.model_artifact(ref.artifacts()[ONNX_FILE])
    good = client.get(graph_key)
    client.set(graph_key, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ModelError, match="fails its checksum"):
        artifacts.ArtifactCache().get(worker, model)
    client.set(graph_key, good)
    meta_key = keys.model_meta(model['meta'])
    client.set(meta_key, client.get(meta_key).replace(b'"temperature"', b'"temperaturE"'))
    with pytest.raises(ModelError, match="metadata fails its checksum"):
        artifacts.ArtifactCache().get(worker, model)
    client.delete(meta_key)
    with pytest.raises(ModelError, match="digitq resume"):
        artifacts.ArtifactCache().get(worker, model)
    with pytest.raises(ModelError, match="no valid model"):
        artifacts.ArtifactCache().get(worker, {"version": "1"})


def test_an_outcome_travels_as_json_and_a_malformed_one_is_refused():
    rows = [Row("a.png", 7, 0.99, digest="d1"), Row("b.png", error="cannot read", lasting=False)]
    outcome = Outcome("20261202-000000-abcdef", 3, rows, "bundled-2", 1.5, index=[("d1", 7, 0.99, None)],
                      blobs=[keys.blob("x", 3, 0)])
    back = Outcome.from_wire(outcome.job_id, 3, json.loads(json.dumps(outcome.to_wire())))
    assert back == outcome and [r.lasting for r in back.rows] == [True, False] and back.rows[0].digest == "d1"
    with pytest.raises(JobError, match="malformed"):
        Outcome.from_wire(outcome.job_id, 3, {"rows": [["a.png"]], "model_version": "x", "started": 0,
                                                 "blobs": []})
