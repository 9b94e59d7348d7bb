"""The loop, end to end with real workers and a real training: a job with deliberately hard digits,
`digitq review` exports the doubtful ones, a person corrects the folder, `digitq train` fine-tunes on
it, the gate compares fairly, and the new version is right on the corrected digits."""

import json
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image

from digitq.disk import csvfile
from digitq.disk.paths import REVIEW_MANIFEST
from digitq.settings import Settings
from model.dataset import write_image_folder
from model.registry import Registry
from model.training.run import gate
from producer.cli import main
from worker.process import WorkerProcess

from .conftest import mnist_source, worker_env
from .pipeline_helpers import db_url, last_json

#: The version production names until something is promoted.
BUNDLED = Registry("unused").bundled().version  # reads only the shipped model.json


def test_review_export_corrections_and_retraining_on_them(redis_server, tmp_path, mnist):
    url = db_url(redis_server.url, 14)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:60], mnist.y_test[:60])
    truth = {}
    for i in range(60, 76):  # deliberately hard: upside down, labelled by their true digit
        label = int(mnist.y_test[i])
        (folder / str(label)).mkdir(exist_ok=True)
        Image.fromarray(np.rot90(mnist.x_test[i], 2)).save(folder / str(label) / f"hard-{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    for path in folder.rglob("*.png"):
        truth[path.name] = path.parent.name
    runner = CliRunner()

    def cli(*args: str):
        result = runner.invoke(main, ["--redis-url", url, "--data-dir", str(settings.data_dir), *args],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return last_json(result)

    with WorkerProcess(worker_env(settings), tmp_path / "predict.log", name="predict"), \
            WorkerProcess(worker_env(settings), tmp_path / "train.log", queues="train", name="train"):
        job = cli("scan", str(folder), "--batch-size", "20", "--wait", "--json")
        review = tmp_path / "review"
        exported = cli("review", job["job_id"], "--below", "0.999", "--out", str(review), "--json")
        manifest = json.loads((review / REVIEW_MANIFEST).read_text())
        assert exported["exported"] == len(manifest["files"]) > 0 and exported["unlabelled"] == 0  # broken: no image
        assert manifest["job_id"] == job["job_id"] and manifest["model_version"] == job["model_version"]
        for f in manifest["files"]:
            assert (review / f["exported_to"] / f["file"]).is_file() and f["confidence"] < 0.999
            assert len(f["digest"]) == 64 and manifest["digest"] == "blake3" and f["source"].rsplit("/", 1)[-1] in truth
        confidences = [f["confidence"] for f in manifest["files"]]
        assert confidences == sorted(confidences)  # least confident first

        # A person corrects the folder: wrong ones into their digit, one into discard/.
        moved = confirmed = 0
        files = manifest["files"]
        (review / "discard").mkdir()
        shutil.move(review / files[-1]["exported_to"] / files[-1]["file"], review / "discard" / files[-1]["file"])
        for f in files[:-1]:
            right = truth[f["source"].rsplit("/", 1)[-1]]
            if right != f["exported_to"]:
                (review / right).mkdir(exist_ok=True)
                shutil.move(review / f["exported_to"] / f["file"], review / right / f["file"])
                moved += 1
            else:
                confirmed += 1
        assert moved >= 5  # most upside-down digits were wrong, and doubtful

        # Fine-tune production on MNIST plus the corrected folder, all of it trained on (--holdout 0):
        # the gate then scores candidate and production on the same 10,000 MNIST test digits.
        assert mnist_source(), "this test trains on MNIST: set DIGITQ_MNIST to the IDX files"
        outcome = cli("train", "--data", mnist_source(), "--data", str(review), "--holdout", "0", "--epochs", "3",
                      "--from-version", "production", "--wait", "--timeout", "600", "--json")
        assert outcome["state"] == "done", outcome
        version = outcome["version"]
        rescan = cli("scan", str(review), "--model-version", version, "--wait", "--json")
    meta = Registry(settings.models_dir).resolve(version).meta
    assert meta["corrections"] == moved
    source = next(s for s in meta["data"] if s["path"] == str(review.resolve()))
    assert (source["corrections"], source["confirmed"], source["discarded"]) == (moved, confirmed, 1)
    assert source["repeated"] > 1  # a few dozen images among 60,000 are weighed up
    # Fair: both scored on the same recorded set, and the decision follows from the two figures.
    assert meta["evaluation"]["examples"] == 10_000 and meta["baseline"]["version"] == BUNDLED
    # The gate also guards the robustness suite: both versions' tables are recorded, scored on one build.
    expected, _ = gate("auto", meta["accuracy"], meta["baseline"]["accuracy"], BUNDLED,
                       settings.promote_tolerance, 10_000, (meta["robustness"], meta["baseline"]["robustness"]))
    assert outcome["promoted"] == expected, outcome["reason"]
    assert outcome["promoted"] is True, outcome["reason"]  # the loop passes the gate, robustness included
    assert outcome["temperature"] == meta["calibration"]["temperature"] and outcome["ece"] == meta["evaluation"]["ece"]
    assert {r["name"] for r in outcome["robustness"]["shifts"]} >= {"stroke-bold", "style-7-crossbar"}
    # The new version is right on the digits people corrected (production was wrong on every one).
    rows = csvfile.read(rescan["output"])
    corrected = {f["file"] for f in files[:-1] if truth[f["source"].rsplit("/", 1)[-1]] != f["exported_to"]}
    right = [r["prediction"] == r["path"].split("/")[-2] for r in rows if r["path"].rsplit("/", 1)[-1] in corrected]
    assert len(right) == moved and sum(right) >= 0.8 * moved, f"{sum(right)} of {moved} corrections learnt"
