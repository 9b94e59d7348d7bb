"""Every row is bound to the bytes it scored: the index, `review` and `report` trust a file only while its bytes
are those a worker decoded; special files never hang anything; hostile or careless input gets one line of advice.
Real redis-server and a real Celery worker throughout."""

from __future__ import annotations

import io
import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitq.bus.server import RedisServer
from digitq.disk import csvfile, scores
from digitq.disk.jobs import Job
from digitq.errors import JobError
from digitq.settings import Settings
from producer.dispatch import enqueue
from producer.follow import wait_for
from worker.process import WorkerProcess

from .conftest import worker_env
from .pipeline_helpers import cli_for, last_json, make_job


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@contextmanager
def _deadline(seconds: int, what: str):
    """Fail (not hang) when ``what`` blocks: a FIFO opened for reading waits for a writer forever."""
    def expired(*_):
        raise AssertionError(f"{what} still running after {seconds} s: it blocked")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A private Redis and one prediction worker, for this module's jobs."""
    root = tmp_path_factory.mktemp("trust")
    server = RedisServer().start()
    settings = Settings.from_env(redis_url=server.url, data_dir=str(root / "data"))
    worker = WorkerProcess(worker_env(settings), root / "worker.log", name="trust").start()
    yield settings
    worker.stop()
    server.stop()


def _digits(mnist, *wanted: int) -> list[np.ndarray]:
    """One MNIST test image of each wanted digit, in order."""
    return [mnist.x_test[int(np.flatnonzero(mnist.y_test == d)[0])] for d in wanted]


def _done(settings: Settings, job: Job) -> list[dict]:
    status = wait_for(job, 120, settings=settings)
    assert status["state"] == "done", status
    return csvfile.read(job.csv_path)


# -- 1. the index keeps what the worker decoded ------------------------------------------------------------------


def test_the_index_records_the_digest_of_the_bytes_the_worker_decoded(stack, tmp_path, mnist):
    seven, two = _digits(mnist, 7, 2)
    folder = tmp_path / "in"
    folder.mkdir()
    z = folder / "z.png"
    z.write_bytes(_png(seven))
    old = scores.digest(z.read_bytes())
    job = make_job(stack, folder, 1, send=False, incremental=True)  # the manifest hashes the 7 now
    assert next(job.batches())[1][0].digest == old
    z.write_bytes(_png(two))  # ... and a 2 is what the sender reads and the worker decodes
    enqueue(stack, job)
    (row,) = _done(stack, job)
    assert row["prediction"] == "2"
    version, new = job.model_version, scores.digest(_png(two))
    assert scores.lookup(stack.data_dir, version, [old]) == {}  # never the 2 under the 7's digest
    assert scores.lookup(stack.data_dir, version, [new])[new][0] == 2
    ((_, scored),) = job.rows()
    assert scored["digest"] == new  # the row names the bytes it scored

    z.write_bytes(_png(seven))
    result = cli_for(stack)("scan", str(folder), "--incremental", "--wait", "--timeout", "120", "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    assert (summary["sent"], summary["from_index"]) == (1, 0)  # the 7's bytes were never scored: predicted now
    assert csvfile.read(summary["output"])[0]["prediction"] == "7"

    again = last_json(cli_for(stack)("scan", str(folder), "--incremental", "--wait", "--json"))
    assert (again["sent"], again["from_index"]) == (0, 1)
    ((_, filled),) = Job.load(stack.jobs_dir, again["job_id"]).rows()
    assert (filled["prediction"], filled["digest"]) == ("7", old)  # filled in, naming the digest it came from


def test_a_damaged_index_is_moved_aside_once_and_a_new_one_starts(stack, tmp_path, mnist):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, pixels in enumerate(_digits(mnist, 3, 4)):
        (folder / f"{i}.png").write_bytes(_png(pixels))
    data = stack.data_dir
    index = scores.index_path(data)
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_bytes(b"this is not an SQLite database " * 200)
    cli = cli_for(stack)
    first = cli("scan", str(folder), "--incremental", "--wait", "--timeout", "120", "--json")
    assert first.exit_code == 0, first.output
    assert first.stderr.count("content-hash index was damaged") == 1, first.stderr
    aside = list(index.parent.glob(index.name + ".corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    second = cli("scan", str(folder), "--incremental", "--wait", "--timeout", "120", "--json")
    assert "damaged" not in second.stderr
    assert (last_json(second)["sent"], last_json(second)["from_index"]) == (0, 2)  # the new index works


# -- 1. review and report show only the bytes that were scored ----------------------------------------------------


def _scanned(stack, folder: Path) -> dict:
    result = cli_for(stack)("scan", str(folder), "--wait", "--timeout", "120", "--json")
    assert result.exit_code == 0, result.output
    return last_json(result)


def test_review_and_report_skip_files_whose_bytes_are_not_those_scored(stack, tmp_path, mnist):
    folder = tmp_path / "in"
    folder.mkdir()
    # Two digits blended: doubtful (below 1.0) whatever the model, so --below 1 takes every one.
    pairs = zip(_digits(mnist, 0, 1, 2, 3, 4), _digits(mnist, 8, 7, 3, 5, 9), strict=True)
    pictures = [np.maximum(a, b) for a, b in pairs]
    for i, pixels in enumerate(pictures):
        (folder / f"d{i}.png").write_bytes(_png(pixels))
    scanned = _scanned(stack, folder)
    job = scanned["job_id"]
    assert all(float(r["confidence"]) < 1 for r in csvfile.read(scanned["output"]))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:$6$not-for-export:19000:0:99999:7:::\n")
    os.replace(folder / "d0.png", tmp_path / "moved.png")
    os.symlink(secret, folder / "d0.png")  # a symlink swapped in after the scan
    (folder / "d1.png").write_bytes(_png(pictures[2]))  # other bytes, another image
    os.unlink(folder / "d2.png")
    os.mkfifo(folder / "d2.png")  # a FIFO: opening it to read would wait for a writer forever
    cli = cli_for(stack)
    review = tmp_path / "review"
    with _deadline(60, "review"):
        result = cli("review", job, "--below", "1", "--out", str(review), "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    manifest = json.loads((review / "review.json").read_text())
    skipped = {Path(s["source"]).name: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"d0.png", "d1.png", "d2.png"} and summary["skipped"] == 3
    assert "changed since it was scanned" in skipped["d0.png"] and "FIFO" in skipped["d2.png"]
    on_disk = [p for p in review.rglob("*") if p.is_file() and p.name != "review.json"]
    assert len(on_disk) == summary["exported"] == len(manifest["files"]) == 2
    assert all(b"not-for-export" not in p.read_bytes() for p in on_disk)
    for f in manifest["files"]:
        assert scores.digest((review / f["exported_to"] / f["file"]).read_bytes()) == f["digest"]
    human = cli("review", job, "--below", "1", "--out", str(tmp_path / "review2"))
    assert human.stderr.count("skipped: ") == 3 and "d0.png" in human.stderr

    with _deadline(60, "report"):
        result = cli("report", job, "--json")
    assert result.exit_code == 0, result.output
    figures = last_json(result)
    assert {Path(s["source"]).name for s in figures["not_shown_files"]} == {"d0.png", "d1.png", "d2.png"}
    assert figures["gallery"] == 2
    page = Path(figures["report"]).read_text()
    assert page.count("not shown: changed since it was scanned") == 2 and "not-for-export" not in page


def test_review_names_never_collide(stack, tmp_path, mnist):
    folder = tmp_path / "in"
    (pixels,) = _digits(mnist, 5)
    data = _png(np.rot90(pixels, 2))  # upside down: doubtful, whatever the model
    names = ["a/x.png", "b/x.png", "x y.png", "x_y.png", "X_Y.png", "c/x?y.png"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)  # equal bytes: equal digests
    job = _scanned(stack, folder)["job_id"]
    review = tmp_path / "review"
    summary = last_json(cli_for(stack)("review", job, "--below", "1", "--out", str(review), "--json"))
    on_disk = [p for p in review.rglob("*") if p.is_file() and p.name != "review.json"]
    manifest = json.loads((review / "review.json").read_text())
    assert len(on_disk) == summary["exported"] == len(manifest["files"]) == len(names)
    assert len({p.name.lower() for p in on_disk}) == len(names)


# -- 1. special files never block --------------------------------------------------------------------------------


def test_a_fifo_given_or_found_is_skipped_and_one_swapped_in_is_an_error_row(stack, tmp_path, mnist):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, pixels in enumerate(_digits(mnist, 6, 8)):
        (folder / f"{i}.png").write_bytes(_png(pixels))
    os.mkfifo(folder / "walked.png")
    os.mkfifo(tmp_path / "given.png")
    with _deadline(60, "scan"):
        result = cli_for(stack)("scan", str(folder), str(tmp_path / "given.png"), "--wait", "--timeout", "60",
                                "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    assert (summary["total"], summary["skipped"], summary["state"]) == (2, 2, "done")
    assert "given.png: skipped, a FIFO, not a regular file" in result.stderr

    for by_path in (False, True):  # the sender reads the bytes; with --by-path, the worker does
        job = make_job(stack, folder, 1, send=False, by_path=by_path)
        target = folder / "0.png"
        saved = target.read_bytes()
        target.unlink()
        os.mkfifo(target)
        with _deadline(60, "sending"):
            enqueue(stack, job)
        rows = {Path(r["path"]).name: r for r in _done(stack, job)}
        assert "not a regular file (a FIFO)" in rows["0.png"]["error"] and rows["1.png"]["prediction"] == "8"
        target.unlink()
        target.write_bytes(saved)


# -- 4. one line with advice, never a traceback -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["redis://:pw#zq9x@127.0.0.1:1/0", "redis://:pw/zq9x@127.0.0.1:1/0",
                                 "redis://user:pw?zq9x@127.0.0.1:1/0"])
def test_a_password_with_url_delimiters_is_never_printed(url, tmp_path):
    from click.testing import CliRunner

    from digitq.bus.urls import redact
    from producer.cli import main

    assert "zq9x" not in redact(url)
    result = CliRunner().invoke(main, ["--redis-url", url, "--data-dir", str(tmp_path), "workers"])
    assert result.exit_code == 2 and "percent-encode" in result.stderr, result.output
    assert "zq9x" not in result.output


def test_careless_input_gets_one_line_of_advice(stack, tmp_path, mnist):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(_digits(mnist, 1)[0]))
    job = _scanned(stack, folder)["job_id"]
    cli = cli_for(stack)
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "sub", Path("/proc/digitq-review")):
        result = cli("review", job, "--out", str(out))
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "cannot create the review folder" in result.stderr and "--out" in result.stderr
    for command in ("review", "report"):
        result = cli(command, job, "--below", "nan")
        assert result.exit_code == 2 and "not a number from 0 to 1" in result.stderr, result.output
    with pytest.raises(JobError):
        Job.check_id(job + "\n")
    assert cli("status", job + "\n").exit_code == 1


def test_workers_and_scan_with_an_unreachable_redis_say_so_in_one_line(tmp_path):
    from click.testing import CliRunner

    from digitq.bus.server import free_port
    from producer.cli import main

    url = f"redis://127.0.0.1:{free_port()}/0?password=hunter2-secret"
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    for args in (["workers"], ["scan", str(tmp_path / "a.png")]):
        result = CliRunner().invoke(main, ["--redis-url", url, "--data-dir", str(tmp_path / "data"), *args])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert "cannot reach Redis" in result.stderr and "hunter2" not in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "data" / "jobs").exists() or not any((tmp_path / "data" / "jobs").iterdir())


def test_a_password_in_the_query_string_works_end_to_end(tmp_path, mnist):
    server = RedisServer(password="s3cr3t-pw").start()
    try:
        base = server.url.replace(":s3cr3t-pw@", "")
        url = f"{base}?password=s3cr3t-pw"
        settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
        folder = tmp_path / "in"
        folder.mkdir()
        (folder / "a.png").write_bytes(_png(_digits(mnist, 4)[0]))
        env = {"DIGITQ_REDIS_URL": url, "DIGITQ_DATA_DIR": str(settings.data_dir)}
        with WorkerProcess(env, tmp_path / "w.log", name="pw") as worker:
            from click.testing import CliRunner

            from producer.cli import main

            result = CliRunner().invoke(main, ["--redis-url", url, "--data-dir", str(settings.data_dir), "scan",
                                               str(folder), "--wait", "--timeout", "120", "--json"])
            assert result.exit_code == 0, result.output
            assert csvfile.read(last_json(result)["output"])[0]["prediction"] == "4"
            wrong = CliRunner().invoke(main, ["--redis-url", url.replace("s3cr3t-pw", "wrong-pw"), "--data-dir",
                                              str(settings.data_dir), "workers"])
            assert wrong.exit_code == 1 and "wrong-pw" not in wrong.output and "Traceback" not in wrong.output
            log = worker.log() + (tmp_path / "w.stderr").read_text()
            assert "s3cr3t-pw" not in log and "redis://" in log  # the worker's banner shows the URL, masked
    finally:
        server.stop()
