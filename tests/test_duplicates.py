"""A committed batch is never rewritten: the first commit of a batch wins on every path (a worker that sees
the data dir, the collect path of stateless workers, ``--by-path``, rows the index fills), and a later
outcome of it is discarded and counted, so the CSV, the result files and their digests always agree."""

import json
import shutil
import threading
import time

import numpy as np
import pytest
import redis
from PIL import Image

from digitq.batch import outbox
from digitq.disk import csvfile
from digitq.disk.jobs import FileEntry, Job, Row, create_job
from digitq.settings import Settings
from producer.dispatch import _commit_scored, enqueue

from .pipeline_helpers import MODES, cli_for, last_json, make_job, start_workers, stop_workers, wait_until


def _settings(redis_server, tmp_path, db: int) -> Settings:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()  # other tests share the database numbers
    return Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))


@pytest.mark.parametrize("mode", MODES)
def test_a_duplicate_after_the_merge_rewrites_nothing_and_is_counted(redis_server, tmp_path, mnist, mode):
    settings = _settings(redis_server, tmp_path, 6)
    folder = tmp_path / "bp"
    folder.mkdir()
    for i in range(4):  # MNIST's first test digits: 7, 2, 1, 0
        Image.fromarray(mnist.x_test[i]).save(folder / f"{i:04d}.png")
    cli = cli_for(settings)
    workers = start_workers(mode, settings, tmp_path)
    try:
        scanned = cli("scan", str(folder), "--by-path", "--batch-size", "2", "--wait", "--timeout", "120", "--json")
        assert scanned.exit_code == 0, scanned.output
        job = Job.load(settings.jobs_dir, last_json(scanned)["job_id"])
        merged, result = job.csv_path.read_bytes(), job.result_path(1).read_bytes()
        digests = [row["digest"] for _, row in job.rows()]
        assert csvfile.read(job.csv_path)[3]["prediction"] == "0"
        # The file changes after the merge (now a 7), and batch 1's message comes again, as the producer builds it.
        shutil.copyfile(folder / "0000.png", folder / "0003.png")
        enqueue(settings, job, [1])
        wait_until(lambda: outbox.pending(settings, job.id) == {}, timeout=120, what="the duplicate to be settled")
        logs = "".join(w.log() for w in workers)
    finally:
        stop_workers(workers)
    # The first commit stands: the CSV, the result file and its digests are those of the scan.
    assert job.result_path(1).read_bytes() == result
    assert job.csv_path.read_bytes() == merged and job.finalize() and job.csv_path.read_bytes() == merged
    assert [row["digest"] for _, row in job.rows()] == digests
    # So review never shows the 7's bytes as a confirmed 0: the file changed since its row scored it.
    reviewed = cli("review", job.id, "--below", "1", "--out", str(tmp_path / "rev"), "--json")
    assert reviewed.exit_code == 0, reviewed.output
    summary = json.loads(reviewed.stdout)
    assert not [f for f in json.loads((tmp_path / "rev" / "review.json").read_text())["files"]
                if f["source"].endswith("0003.png")]
    assert [s["source"][-8:] for s in summary["skipped_files"]] in ([], ["0003.png"])
    # The duplicate was discarded, and counted: in the worker's log and in `status --json`.
    status = json.loads(cli("status", job.id, "--json").stdout)
    assert status["state"] == "done" and status["duplicates"] == 1
    assert logs.count("discarded, a duplicate") == 1 and f"job {job.id} batch 1: " in logs


def test_the_first_of_racing_commits_wins_and_the_others_are_counted(tmp_path):
    job = create_job(tmp_path, [FileEntry(f"f{i}.png", 10) for i in range(3)], [3], model_version="1",
                     sources=["in"], by_path=False, out=None)
    start = threading.Barrier(8)
    won: list[int] = []

    def commit(digit: int) -> None:
        rows = [Row(f"f{i}.png", digit, 0.5, digest=f"d{digit}") for i in range(3)]
        start.wait()
        if job.commit(0, rows, model_version="1", started=time.time()):
            won.append(digit)

    threads = [threading.Thread(target=commit, args=(d,)) for d in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and job.discarded() == 7 and job.status()["duplicates"] == 7
    assert job.finalize()
    assert {r["prediction"] for r in csvfile.read(job.csv_path)} == {str(won[0])}
    assert job.result_digests(0) == [f"d{won[0]}"] * 3
    assert [p.name for p in (job.dir / "results").iterdir()] == ["000000.jsonl"]  # no temp file left behind
    assert not [p for p in job.dir.iterdir() if p.name.endswith(".tmp")]


def test_rows_the_index_fills_never_replace_a_committed_result(settings, tmp_path, mnist):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(mnist.x_test[i]).save(folder / f"{i}.png")
    job = make_job(settings, folder, batch_size=2, send=False)
    files = dict(job.batches())[0]
    assert job.commit(0, [Row(f.path, 3, 0.9, digest="worker") for f in files], model_version=job.model_version,
                      started=time.time())
    first = job.result_path(0).read_bytes()
    scored = {"index": (5, 0.99, None)}
    _commit_scored(settings, job, 0, [FileEntry(f.path, f.size, None, "index") for f in files], scored)
    assert job.result_path(0).read_bytes() == first and job.discarded() == 1


def test_create_once_without_hard_links_still_never_replaces(tmp_path, monkeypatch):
    import errno
    import os

    from digitq.disk.storage import create_once

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")  # FAT, some FUSE and SMB mounts

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "r.jsonl"
    assert create_once(target, "first\n") and not create_once(target, "second\n")
    assert target.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


@pytest.mark.parametrize("mode", MODES)
def test_a_late_duplicate_whose_blobs_are_freed_is_counted_in_both_modes(redis_server, tmp_path, mnist, mode):
    """A delivery that comes after the commit freed its blobs (a lost ack, a sweeper's copy) is dropped before any
    work; a stateless worker, which cannot see the job, hands the drop in to be counted where it can."""
    from digitq.batch import blobs
    from digitq.batch.message import BatchMessage
    from digitq.bus.broker import PREDICT_TASK, client_app
    from producer.dispatch import job_context, message_entries

    settings = _settings(redis_server, tmp_path, 7)
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # noise around a digit: a PNG over the inline limit, sent as a blob
        page = rng.integers(0, 40, (200, 200), dtype=np.uint8)
        page[86:114, 86:114] = np.maximum(page[86:114, 86:114], mnist.x_test[i])
        Image.fromarray(page).save(folder / f"{i}.png")
    assert all(p.stat().st_size > blobs.INLINE_MAX for p in folder.iterdir())
    cli = cli_for(settings)
    workers = start_workers(mode, settings, tmp_path)
    try:
        scanned = cli("scan", str(folder), "--batch-size", "2", "--wait", "--timeout", "120", "--json")
        assert scanned.exit_code == 0, scanned.output
        job = Job.load(settings.jobs_dir, last_json(scanned)["job_id"])
        result = job.result_path(0).read_bytes()
        entries = message_entries(settings, job, 0, dict(job.batches([0]))[0])
        keys = BatchMessage(job.id, 0, entries).blob_keys
        assert keys
        blobs.delete(settings, keys)  # as the first commit left them
        app = client_app(settings)
        late = BatchMessage(job.id, 0, entries, job_context(settings, job))
        app.send_task(PREDICT_TASK, args=late.to_wire(), queue=settings.predict_queue)
        app.close()
        wait_until(lambda: job.discarded() == 1, timeout=120, what="the late duplicate to be counted")
    finally:
        stop_workers(workers)
    assert job.result_path(0).read_bytes() == result
    status = json.loads(cli("status", job.id, "--json").stdout)
    assert status["state"] == "done" and status["duplicates"] == 1
    assert "discarded 1 later outcome(s)" in cli("status", job.id).output
