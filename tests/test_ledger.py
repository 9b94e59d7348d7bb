"""The O(1) completion check: a Redis set of committed batches, with the result files as the truth."""

import numpy as np

from digitq import csvfile, ledger
from digitq.jobs import Job
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
        result = run_batch(settings, job.id, batch, message_entries(job, files, settings))
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
