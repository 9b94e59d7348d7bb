"""Workers that need only Redis: no data dir, or a private one, and no shared files (issue 16)."""

import json

import pytest

from digitq import csvfile
from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.follow import wait_for

from .pipeline_helpers import MODES, make_job, start_workers, stop_workers


@pytest.mark.parametrize("mode", MODES)
def test_a_job_completes_with_one_row_per_file(redis_server, tmp_path, mnist, mode):
    url = redis_server.url.rsplit("/", 1)[0] + "/13"
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:100], mnist.y_test[:100])
    (folder / "3" / "00000-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    workers = start_workers(mode, settings, tmp_path)
    try:
        job = make_job(settings, folder, batch_size=16)
        status = wait_for(job, timeout=60)
    finally:
        stop_workers(workers)
    rows = csvfile.read(job.csv_path)
    assert status["state"] == "done" and len(rows) == 101 and len({r["path"] for r in rows}) == 101
    good = [r for r in rows if not r["error"]]
    assert len(good) == 100 and sum(r["prediction"] == r["path"].split("/")[-2] for r in good) >= 98
    heads = [job.result_header(b) for b in range(job.n_batches)]
    stateless = [h for h in heads if h["pid"] != 0 and "stateless" in workers[0].log()]
    assert heads and stateless or mode == "shared"
    print(json.dumps(heads[0]))
