"""The loop, end to end with real workers and a real training: a job with deliberately hard digits,
`digitq review` exports the doubtful ones, a person corrects the folder, `digitq train` fine-tunes on
it, the gate compares fairly, and the new version is right on the corrected digits.

The bookkeeping (export, manifest, what the training records of the corrections, the gate's decision
following from its figures) runs on a thousand MNIST digits for one epoch; that the loop learns the
corrections and passes the gate on all of MNIST is the ``slow`` test."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
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
from .pipeline_helpers import BUNDLED, db_url, last_json

#: The version production names until something is promoted.


@dataclass
class Loop:
    """What one run of the loop left: the corrected folder, the training's outcome and the rescan."""

    settings: Settings
    review: Path
    files: list[dict]
    truth: dict[str, str]
    moved: int
    confirmed: int
    outcome: dict
    rescan: dict

    @property
    def meta(self) -> dict:
        return Registry(self.settings.models_dir).resolve(self.outcome["version"]).meta

    def corrected_right(self) -> list[bool]:
        """For each file people moved to another digit: whether the new version predicts that digit."""
        rows = csvfile.read(self.rescan["output"])
        corrected = {f["file"] for f in self.files[:-1]
                     if self.truth[f["source"].rsplit("/", 1)[-1]] != f["exported_to"]}
        return [r["prediction"] == r["path"].split("/")[-2] for r in rows
                if r["path"].rsplit("/", 1)[-1] in corrected]


def run_loop(redis_server, tmp_path: Path, mnist, train_data: list[str], train_args: list[str],
             worker_extra: dict[str, str] | None = None) -> Loop:
    """Scan 60 test digits, 16 of them upside down and a broken file; export the doubtful ones; correct the
    folder as a person would; train on ``train_data`` plus the folder; rescan the folder with the new version."""
    url = db_url(redis_server.url, 14)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:60], mnist.y_test[:60])
    for i in range(60, 76):  # deliberately hard: upside down, labelled by their true digit
        label = int(mnist.y_test[i])
        (folder / str(label)).mkdir(exist_ok=True)
        Image.fromarray(np.rot90(mnist.x_test[i], 2)).save(folder / str(label) / f"hard-{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    truth = {path.name: path.parent.name for path in folder.rglob("*.png")}
    runner = CliRunner()

    def cli(*args: str):
        result = runner.invoke(main, ["--redis-url", url, "--data-dir", str(settings.data_dir), *args],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return last_json(result)

    env = {**worker_env(settings), **(worker_extra or {})}
    with WorkerProcess(env, tmp_path / "predict.log", name="predict"), \
            WorkerProcess(env, tmp_path / "train.log", queues="train", name="train"):
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

        data = [arg for path in [*train_data, str(review)] for arg in ("--data", path)]
        outcome = cli("train", *data, *train_args, "--from-version", "production", "--wait", "--timeout", "600",
                      "--json")
        assert outcome["state"] == "done", outcome
        rescan = cli("scan", str(review), "--model-version", outcome["version"], "--wait", "--json")
    return Loop(settings, review, files, truth, moved, confirmed, outcome, rescan)


def check_bookkeeping(loop: Loop) -> dict:
    """What the version records of the review folder, and a gate decision that follows from its figures."""
    meta, outcome = loop.meta, loop.outcome
    assert meta["corrections"] == loop.moved
    source = next(s for s in meta["data"] if s["path"] == str(loop.review.resolve()))
    assert (source["corrections"], source["confirmed"], source["discarded"]) == (loop.moved, loop.confirmed, 1)
    assert source["repeated"] > 1  # a few dozen images among many more are weighed up
    assert meta["baseline"]["version"] == BUNDLED and meta["parent"] == BUNDLED
    # Fair: both scored on the same recorded set, and the decision follows from the two figures.
    # The gate also guards the robustness suite: both versions' tables are recorded, scored on one build.
    expected, _ = gate("auto", meta["accuracy"], meta["baseline"]["accuracy"], BUNDLED,
                       loop.settings.promote_tolerance, meta["evaluation"]["examples"],
                       (meta["robustness"], meta["baseline"]["robustness"]))
    assert outcome["promoted"] == expected, outcome["reason"]
    assert outcome["temperature"] == meta["calibration"]["temperature"] and outcome["ece"] == meta["evaluation"]["ece"]
    assert {r["name"] for r in outcome["robustness"]["shifts"]} >= {"stroke-bold", "style-7-crossbar"}
    # The new version scored every corrected digit of the folder.
    assert len(loop.corrected_right()) == loop.moved
    return meta


def test_review_export_corrections_and_retraining_on_them(redis_server, tmp_path, mnist):
    """The bookkeeping of the loop, on 1,000 MNIST training digits (a fifth held out) and one epoch."""
    digits = tmp_path / "digits"
    write_image_folder(digits, mnist.x_train[:1000], mnist.y_train[:1000])
    loop = run_loop(redis_server, tmp_path, mnist, [str(digits)], ["--epochs", "1"],
                    {"DIGITQ_SUITE_LIMIT": "50"})
    meta = check_bookkeeping(loop)
    assert meta["epochs"] == 1 and meta["train_examples"] > 800
    assert "hold-out" in meta["evaluation"]["description"] and meta["evaluation"]["examples"] >= 200


@pytest.mark.slow
def test_review_loop_learns_the_corrections_and_passes_the_gate(redis_server, tmp_path, mnist):
    # Fine-tune production on MNIST plus the corrected folder, all of it trained on (--holdout 0):
    # the gate then scores candidate and production on the same 10,000 MNIST test digits.
    assert mnist_source(), "this test trains on MNIST: set DIGITQ_MNIST to the IDX files"
    loop = run_loop(redis_server, tmp_path, mnist, [mnist_source()], ["--holdout", "0", "--epochs", "3"])
    meta = check_bookkeeping(loop)
    assert meta["evaluation"]["examples"] == 10_000
    assert loop.outcome["promoted"] is True, loop.outcome["reason"]  # the loop passes the gate, robustness included
    # The new version is right on the digits people corrected (production was wrong on every one).
    right = loop.corrected_right()
    assert sum(right) >= 0.8 * loop.moved, f"{sum(right)} of {loop.moved} corrections learnt"
