"""The O(1) completion check: a Redis set of committed batches, with the result files as the truth."""

import numpy as np

from digitq.batch import ledger
from digitq.batch.message import BatchMessage, Kind
from digitq.disk import csvfile
from digitq.disk.jobs import Job
from model.dataset import write_image_folder
from producer.dispatch import message_entries
from worker.inference import run_batch

from .pipeline_helpers import make_job


def test_a_batch_counts_once_however_often_it_is_recorded(settings):
    job_id = "20990101-000000-0000aa"
    assert [ledger.record(settings, job_id, b) for b in (0, 1, 1, 0, 2)] == [1, 2, 2, 2, 3]
    ledger.seed(settings, job_id, [0, 3, 4])
    assert ledger.record(settings, job_id, 4) == 5


def test_only_the_last_commit_lists_the_results(settings, tmp_path, mnist, monkeypatch):
    folder = tmp_path / "digits"
    write_image_folder(folder, mnist.x_test[:40], mnist.y_test[:40])
    job = make_job(settings, folder, batch_size=5, send=False)
    assert job.n_batches == 8
    listings = []
    real = Job.committed
    monkeypatch.setattr(Job, "committed", lambda self: listings.append(1) or real(self))
    order = [3, 0, 7, 7, 1, 2, 4, 6, 5]  # batch 7 delivered twice
    for batch in order:
        files = dict(job.batches())[batch]
        result = run_batch(settings, BatchMessage(job.id, batch, message_entries(settings, job, batch, files)))
        assert result["done"] == (batch == order[-1])
    assert len(listings) == 1  # the merge's single look at results/, after the last commit
    rows = csvfile.read(Job.load(settings.jobs_dir, job.id).csv_path)
    assert len(rows) == 40 and np.mean([r["prediction"] == r["path"].split("/")[-2] for r in rows]) >= 0.95


def test_results_written_by_the_first_release_still_merge(settings, tmp_path, mnist):
    """Result files of digitq's first releases held JSON lines; a job they belong to still merges."""
    import json

    folder = tmp_path / "old"
    write_image_folder(folder, mnist.x_test[:6], mnist.y_test[:6])
    job = make_job(settings, folder, batch_size=3, send=False)
    for batch, files in job.batches():
        rows = [[f.path, 7, 0.5, None] for f in files]
        rows[0] = [files[0].path, None, None, "=cannot decode"]
        head = {"batch": batch, "rows": 3, "errors": 1, "model_version": "bundled-1", "started": 1.0, "finished": 2.0}
        job.result_path(batch).write_text("\n".join(json.dumps(x) for x in [head, *rows]) + "\n")
    assert job.finalize()
    merged = csvfile.read(job.csv_path)
    assert [r["path"] for r in merged] == [f.path for _, files in job.batches() for f in files]
    assert merged[0]["error"] == "'=cannot decode" and merged[1]["prediction"] == "7"
    assert merged[1]["confidence"] == "0.500000" and {r["model_version"] for r in merged} == {"bundled-1"}


def test_large_files_travel_as_blobs_and_are_freed_after_the_commit(settings, tmp_path, mnist):
    """A photo-sized file is stored beside the message, fetched by the worker, deleted after its commit;
    a late duplicate finds the result and changes nothing; lost blobs fail the batch with advice."""
    import io

    import pytest
    from PIL import Image

    from digitq.batch import blobs
    from digitq.bus.broker import redis_client
    from digitq.errors import JobError

    folder = tmp_path / "big"
    (folder / "3").mkdir(parents=True)
    big = np.kron(255 - mnist.x_test[18], np.ones((40, 40), np.uint8))  # a 1120 x 1120 scan of a 3
    noise = np.random.default_rng(0).integers(0, 30, big.shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.clip(big.astype(int) - noise, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    assert len(buf.getvalue()) > blobs.INLINE_MAX
    (folder / "3" / "big.png").write_bytes(buf.getvalue())
    write_image_folder(folder / "small", mnist.x_test[:3], mnist.y_test[:3])
    job = make_job(settings, folder, batch_size=10, send=False)
    files = dict(job.batches())[0]
    entries = message_entries(settings, job, 0, files)
    kinds = {e.path.rsplit("/", 1)[-1]: e.kind for e in entries}
    assert kinds["big.png"] is Kind.BLOB and list(kinds.values()).count(Kind.DATA) == 3
    key = next(e.value for e in entries if e.kind is Kind.BLOB)
    assert redis_client(settings).get(key) == buf.getvalue() and 0 < redis_client(settings).ttl(key) <= blobs.TTL_S
    result = run_batch(settings, BatchMessage(job.id, 0, entries))
    assert result["done"] and redis_client(settings).exists(key) == 0
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csvfile.read(job.csv_path)}
    assert rows["big.png"]["prediction"] == "3" and not rows["big.png"]["error"]
    late = run_batch(settings, BatchMessage(job.id, 0, entries))  # a late duplicate: nothing rewritten
    assert late["duplicate"] is True
    lost = make_job(settings, folder, batch_size=10, send=False)
    entries = message_entries(settings, lost, 0, dict(lost.batches())[0])
    blobs.delete(settings, BatchMessage(lost.id, 0, entries).blob_keys)  # Redis restarted, or 24 h passed
    with pytest.raises(JobError, match="no longer in Redis.*digitq resume"):
        run_batch(settings, BatchMessage(lost.id, 0, entries))
