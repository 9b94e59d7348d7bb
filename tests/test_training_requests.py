"""Training requests through the queue with a real trainer: bad input refused and said, a failed training retried,
a request Redis lost re-sent, a duplicate delivery published once, a countdown kept. Real redis-server, real
trainings on a few hundred real MNIST digits."""

import json
import os

import pytest
from PIL import Image

from digitq.disk.training_requests import Training, send_training
from model.dataset import write_image_folder
from producer.retraining import request_training

from .pipeline_helpers import last_json, wait_until
from .training_helpers import cli, registry, train_json


@pytest.fixture(scope="module")
def few(tmp_path_factory, mnist):
    """60 real MNIST training digits as DIR/<digit>/*.png: what these requests train on, in seconds."""
    folder = tmp_path_factory.mktemp("few")
    write_image_folder(folder, mnist.x_train[:60], mnist.y_train[:60])
    return folder


@pytest.mark.parametrize("case", ["empty", "garbage", "twelve"])
def test_bad_training_input_publishes_nothing_and_says_why(trainer, tsettings, tmp_path, case, mnist):
    folder = tmp_path / case
    folder.mkdir()
    if case == "garbage":
        for digit in (1, 2):
            (folder / str(digit)).mkdir()
            for i in range(3):
                (folder / str(digit) / f"{i}.png").write_bytes(os.urandom(200))
        expected = "none of its 6 image file(s) could be decoded"
    elif case == "twelve":
        write_image_folder(folder, mnist.x_train[:20], mnist.y_train[:20])
        (folder / "12").mkdir()
        Image.fromarray(mnist.x_train[0]).save(folder / "12" / "a.png")
        expected = "'12' are not digits 0-9"
    else:
        expected = "has no images in digit folders"
    before = registry(tsettings).published()
    production = registry(tsettings).current()
    result = cli(tsettings, "train", "--data", str(folder), "--epochs", "1", "--wait", "--timeout", "120", "--json")
    out = last_json(result)
    assert result.exit_code == 1 and out["state"] == "failed" and out["version"] is None
    assert expected in out["reason"], out["reason"]
    assert registry(tsettings).published() == before and registry(tsettings).current() == production
    human = cli(tsettings, "training", out["training_id"])
    assert "failed" in human.stdout and expected in human.stdout


def test_a_missing_source_is_refused_before_anything_is_sent(tsettings, tmp_path):
    result = cli(tsettings, "train", "--data", str(tmp_path / "nope"))
    assert result.exit_code == 1 and "does not exist" in result.stderr and "Traceback" not in result.output


def test_failed_training_can_be_retried(trainer, tsettings, tmp_path, mnist):
    folder = tmp_path / "later"
    folder.mkdir()
    failed = train_json(tsettings, "--data", str(folder), "--epochs", "1", "--promote", "never")
    assert failed["state"] == "failed"
    write_image_folder(folder, mnist.x_train[:60], mnist.y_train[:60])
    again = train_json(tsettings, "--retry", failed["training_id"])
    assert again["training_id"] == failed["training_id"] and again["state"] == "done" and again["attempt"] == 2
    assert again["promoted"] is False and "--promote never" in again["reason"]
    refused = cli(tsettings, "train", "--retry", failed["training_id"])
    assert refused.exit_code == 1 and "already published" in refused.stderr


def test_a_request_redis_lost_stays_queued_and_can_be_resent(trainer, tsettings, few, tmp_path):
    import redis

    queue = redis.Redis.from_url(tsettings.redis_url)
    # The trainer is busy with another training, so the next request waits in the `train` queue...
    busy = request_training(tsettings, sources=[str(few)], epochs=1, from_version=None, holdout=0.2, seed=4,
                            promote="never")
    wait_until(lambda: busy.status()["state"] == "running", timeout=120, what="the trainer to be busy")
    lost = request_training(tsettings, sources=[str(few)], epochs=1, from_version=None, holdout=0.2, seed=3,
                            promote="never")
    (tmp_path / "empty").mkdir()
    after = request_training(tsettings, sources=[str(tmp_path / "empty")], epochs=1, from_version=None, holdout=0.2,
                             seed=0, promote="never")  # fails at once: it only shows the trainer went on
    messages = queue.lrange(tsettings.train_queue, 0, -1)
    mine = [m for m in messages if lost.id.encode() in m]
    assert len(messages) == 2 and len(mine) == 1, "the trainer took the request before Redis could lose it"
    # ...where Redis loses it (as a restart without persistence would).
    assert queue.lrem(tsettings.train_queue, 1, mine[0]) == 1
    # The trainer had its chance: it finished the busy training, then took the queue in order, up to `after`.
    wait_until(lambda: after.status()["state"] == "failed", timeout=180, what="the trainer to reach the next request")
    assert json.loads(cli(tsettings, "training", lost.id, "--json").stdout)["state"] == "queued"
    listed = json.loads(cli(tsettings, "trainings", "--json").stdout)
    assert next(t for t in listed if t["training_id"] == lost.id)["state"] == "queued"
    out = train_json(tsettings, "--retry", lost.id)
    assert out["state"] == "done" and out["version"] and out["attempt"] == 1
    mixed = cli(tsettings, "train", "--retry", lost.id, "--data", str(few))
    assert mixed.exit_code == 2 and "--retry" in mixed.stderr


def test_duplicate_delivery_publishes_once(trainer, tsettings, few):
    training = request_training(tsettings, sources=[str(few)], epochs=1, from_version=None, holdout=0.2,
                                seed=1, promote="never")
    send_training(tsettings, training)  # the same training id, delivered twice
    wait_until(lambda: "already ended" in trainer.log().split(training.id, 1)[-1], timeout=180,
               what="the duplicate delivery to be handled")
    published = [ref for ref in registry(tsettings).versions() if ref.meta.get("training_id") == training.id]
    assert len(published) == 1 and training.status()["attempt"] == 1


def test_countdown_schedules_a_training(trainer, tsettings, few):
    result = cli(tsettings, "train", "--data", str(few), "--epochs", "1", "--promote", "never",
                 "--countdown", "3", "--json")
    out = last_json(result)
    assert result.exit_code == 0 and out["state"] == "scheduled" and out["eta"] > out["created"]
    training = Training.load(tsettings.trainings_dir, out["training_id"])
    status = wait_until(lambda: (s := training.status())["state"] == "done" and s, timeout=180, what="training")
    assert status["started"] >= out["eta"] - 0.5
