"""Incremental rescans: the content-hash index fills in what the pinned version already scored, so only
changed and new files reach the workers, with the rows a full rescan gives; a promotion rescores all."""

import io
import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from digitq.disk import csvfile, scores
from digitq.settings import Settings
from model.dataset import write_image_folder
from model.registry import Registry
from producer.cli import main

from .pipeline_helpers import MODES, db_url, last_json, start_workers, stop_workers


def _png(pixels) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_the_index_keeps_versions_apart(tmp_path):
    assert scores.lookup(tmp_path, "1", ["a" * 64]) == {}  # no index yet: nothing, and nothing created
    assert not (tmp_path / "index").exists()
    assert scores.record(tmp_path, "1", [("a" * 64, 3, 0.9, None), ("b" * 64, None, None, "cannot decode")]) == 2
    assert scores.lookup(tmp_path, "1", ["a" * 64, "b" * 64, "c" * 64]) == {"a" * 64: (3, 0.9, None),
                                                                           "b" * 64: (None, None, "cannot decode")}
    assert scores.lookup(tmp_path, "2", ["a" * 64]) == {}
    digests = [scores.digest(str(i).encode()) for i in range(1200)]  # past SQLite's parameter limit
    scores.record(tmp_path, "1", [(d, 1, 0.5, None) for d in digests])
    assert len(scores.lookup(tmp_path, "1", digests)) == 1200


@pytest.mark.parametrize("mode", MODES)
def test_incremental_rescans_predict_only_changed_and_new_files(redis_server, tmp_path, mnist, mode):
    url = db_url(redis_server.url, 13)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:300], mnist.y_test[:300])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    runner = CliRunner()

    def scan(*extra: str) -> tuple[dict, list[dict]]:
        result = runner.invoke(main, ["--redis-url", url, "--data-dir", str(settings.data_dir), "scan", str(folder),
                                      "--batch-size", "40", "--wait", "--timeout", "120", "--json", *extra],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        summary = last_json(result)
        return summary, csvfile.read(summary["output"])

    workers = start_workers(mode, settings, tmp_path, name="inc")
    worker = workers[0]  # the one that predicts: in "stateless" mode, its scores reach the index via the results
    try:
        first, rows = scan("--incremental")
        assert (first["sent"], first["from_index"], len(rows)) == (301, 0, 301)
        # "received" is logged before a task runs ("succeeded" may follow the job's merge by a moment).
        tasks = worker.log().count("] received")
        assert tasks == 8  # 301 files in batches of 40

        again, same = scan("--incremental")  # unchanged: nothing sent, every row from the index
        assert (again["sent"], again["from_index"], again["state"]) == (0, 301, "done")  # the broken file too
        assert worker.log().count("] received") == tasks
        assert same == rows and scan()[1] == rows  # identical to the first scan and to a full rescan

        changed = sorted((folder / str(mnist.y_test[0])).iterdir())[0]
        changed.write_bytes(_png(mnist.x_test[400]))  # other bytes, at a path seen before
        (folder / "9").mkdir(exist_ok=True)
        (folder / "9" / "new.png").write_bytes(_png(mnist.x_test[401]))
        third, now = scan("--incremental")
        assert (third["sent"], third["from_index"], len(now)) == (2, 300, 302)
        assert now == scan()[1]  # the rows a full rescan gives
        row = next(r for r in now if r["path"].endswith(str(changed.relative_to(folder))))
        assert row["prediction"] == str(mnist.y_test[400])

        # A promotion changes the pinned version: the index is not trusted for it.
        registry = Registry(settings.models_dir)
        staging = registry.staging_dir("copy")
        for item in registry.bundled().directory.iterdir():
            shutil.copy(item, staging / item.name)
        meta = json.loads((staging / "model.json").read_text())
        (staging / "model.json").write_text(json.dumps({**meta, "version": None}))
        version = registry.publish(staging)[0].version
        registry.promote(version, reason="test", by="test")
        fourth, rescored = scan("--incremental")
        assert (fourth["model_version"], fourth["sent"], fourth["from_index"]) == (version, 302, 0)
        assert {r["model_version"] for r in rescored if not r["error"]} == {version}
        assert [(r["path"], r["prediction"]) for r in rescored] == [(r["path"], r["prediction"]) for r in now]
    finally:
        stop_workers(workers)
    if mode == "stateless":  # both versions came by content, each once, into the worker's own cache
        assert worker.log().count("fetched through Redis") == 2
