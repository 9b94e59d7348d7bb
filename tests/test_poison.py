"""Poison batches: a file that kills its worker process on every delivery is quarantined as an
error row; its batch-mates are predicted and the job completes (real worker, real crashes)."""

import io
import os

import pytest
import redis
from PIL import Image, PngImagePlugin

from digitq.batch import quarantine
from digitq.bus import keys
from digitq.disk import csvfile
from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.dispatch import submit
from producer.follow import wait_for

from .conftest import ROOT, worker_env
from .pipeline_helpers import MODES, db_url, start_workers, stop_workers

MARKER = "DIGITQ-TEST-KILLS-THE-DECODER"


def sabotaged_env(settings: Settings, **markers: str) -> dict[str, str]:
    """Environment for ``celery -A sabotage`` (tests/sabotage.py)."""
    path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    return {**worker_env(settings), "PYTHONPATH": path, **markers}


def marked_png(pixels, text: str) -> bytes:
    """A valid digit PNG whose bytes carry ``text`` in a tEXt chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", text)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


@pytest.mark.parametrize("mode", MODES)
def test_a_file_that_kills_every_worker_process_is_quarantined_and_the_job_completes(redis_server, tmp_path, mnist,
                                                                                     mode):
    url = db_url(redis_server.url, 10)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:30], mnist.y_test[:30])
    killer = folder / str(mnist.y_test[30]) / "killer.png"
    killer.write_bytes(marked_png(mnist.x_test[30], MARKER))
    env = sabotaged_env(settings, DIGITQ_TEST_KILL_MARKER=MARKER)
    workers = start_workers(mode, settings, tmp_path, env=env, app="sabotage")
    try:
        job = submit(settings, [str(folder)], batch_size=8)  # 4 batches; the killer shares one with 7 others
        status = wait_for(job, timeout=180)
    finally:
        stop_workers(workers)
    log = workers[0].log()
    rows = csvfile.read(job.csv_path)
    assert status["state"] == "done" and len(rows) == 31
    bad = [r for r in rows if r["error"]]
    assert [r["path"].rsplit("/", 1)[-1] for r in bad] == ["killer.png"]
    assert f"died on this file {quarantine.DEATHS} times" in bad[0]["error"]
    good = [r for r in rows if not r["error"]]
    assert sum(r["prediction"] == r["path"].split("/")[-2] for r in good) >= 29
    # Exactly DEATHS careful deliveries died, after the first one: not redelivered forever.
    assert log.count("processing file by file") == quarantine.DEATHS + 1
    assert "killer.png killed 2 worker processes; quarantined" in log
    leftovers = redis.Redis.from_url(url).keys(keys.deliveries("*", "*"))
    assert leftovers == []  # forgotten once committed


def test_a_batch_that_keeps_dying_outside_any_file_is_given_up_whole(redis_server, tmp_path, monkeypatch):
    from digitq.batch.message import Entry
    from digitq.disk.jobs import Row
    from worker.inference import _guarded_rows

    url = db_url(redis_server.url, 10)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path))
    for _ in range(quarantine.MAX_DELIVERIES):
        quarantine.Delivery.begin(settings, "job-x", 0)  # ten deliveries, whatever ended them
    delivery = quarantine.Delivery.begin(settings, "job-x", 0)
    assert delivery.exhausted and delivery.count == quarantine.MAX_DELIVERIES + 1
    entries = [{"path": "a.png", "data": ""}, {"path": "b.png", "error": "unreadable"}]
    rows = _guarded_rows(delivery, predictor=None, entries=[Entry.from_wire(e) for e in entries], max_bytes=100,
                         fetched={})
    assert rows[0] == Row("a.png", error=rows[0].error) and "given up" in rows[0].error
    assert rows[1].error == "unreadable"
    delivery.finish()
    assert quarantine.Delivery.begin(settings, "job-x", 0).count == 1
