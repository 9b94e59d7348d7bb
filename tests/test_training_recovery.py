"""A training whose version is published but not promoted (its run was killed, or lost its claim, in between)
is finished by the next delivery: promoted exactly once if its gate decided so, never over a newer move of
production. A training killed mid-way runs again and publishes once. Real redis-server; real Celery workers
SIGKILLed mid-training or between publish and promote; real trainings on a few hundred MNIST digits at most."""

import json
import os
import shutil
import signal

from digitq.disk.training_requests import Training, TrainingClaimed, create_training
from digitq.settings import Settings
from model.dataset import write_image_folder
from model.registry import Registry
from model.training.run import run_training
from producer.retraining import request_training
from worker.process import WorkerProcess

from .pipeline_helpers import BUNDLED, db_url, wait_until
from .test_races import claim_contest, racing_env

#: The version production names until something is promoted.


def _moves(reg: Registry) -> list[tuple[str, str, str]]:
    return [(h["action"], h["from"], h["to"]) for h in reg.history()]


def test_training_killed_mid_way_runs_again_and_publishes_once(redis_server, tmp_path, mnist):
    url = db_url(redis_server.url, 10)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "bigger"
    write_image_folder(folder, mnist.x_train[:300], mnist.y_train[:300])
    # The first attempt halts after epoch 3 of 8 (tests/racing.py), where it is killed.
    env = racing_env(settings, DIGITQ_TEST_HALT_AFTER_EPOCH="3", DIGITQ_SUITE_LIMIT="50")
    with WorkerProcess(env, tmp_path / "trainer.log", queues="train", app="racing", name="halting"):
        training = request_training(settings, sources=[str(folder)], epochs=8, from_version=None, holdout=0.1,
                                    seed=2, promote="never")
        wait_until(lambda: training.status()["epoch"] >= 3, timeout=120, what="the third epoch")
        run = training.run_record()
        assert run["attempt"] == 1 and training.status()["state"] == "running"
        os.kill(run["pid"], signal.SIGKILL)  # the pool process training it; the message goes back to the queue
        status = wait_until(lambda: (s := training.status())["state"] == "done" and s, timeout=300,
                            what="the redelivered training to finish")
    assert status["attempt"] == 2 and status["version"]
    lines = (training.dir / "progress.jsonl").read_text().splitlines()  # every attempt's epochs
    progress = [(p["attempt"], p["epoch"]) for p in map(json.loads, lines)]
    assert progress == [(1, 1), (1, 2), (1, 3), *((2, n) for n in range(1, 9))]  # killed at epoch 3, then all 8
    published = [ref for ref in Registry(settings.models_dir).versions() if ref.meta.get("training_id") == training.id]
    assert len(published) == 1 and published[0].meta["epochs"] == 8


def test_a_training_killed_between_publish_and_promote_is_promoted_by_its_redelivery(redis_server, tmp_path, mnist):
    url = db_url(redis_server.url, 13)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "labelled"
    write_image_folder(folder, mnist.x_train[:60], mnist.y_train[:60])
    kills = tmp_path / "kills"
    kills.mkdir()
    env = racing_env(settings, DIGITQ_TEST_KILL_AFTER_PUBLISH=str(kills))
    with WorkerProcess(env, tmp_path / "trainer.log", queues="train", app="racing", name="dying") as trainer:
        training = request_training(settings, sources=[str(folder)], epochs=1, from_version=None, holdout=0.2,
                                    seed=0, promote="always")
        status = wait_until(lambda: (s := training.status())["state"] == "done" and s, timeout=300, poll=0.5,
                            what="the redelivered training to finish")
        log = trainer.log()
    # The pool process that trained was SIGKILLed the moment its version was published, before promoting.
    (killed,) = kills.glob("killed-*")
    version = killed.name.rsplit("-", 1)[1]
    assert "WorkerLostError" in log or "signal 9" in log, log[-3000:]
    reg = Registry(settings.models_dir)
    assert status["version"] == version and status["attempt"] == 2, status
    assert status["promoted"] is True and "promoted now, as its gate decided: --promote always" in status["reason"]
    assert reg.current() == version
    assert _moves(reg) == [("promote", BUNDLED, version)]  # once
    assert reg.history()[0]["by"] == f"training {training.id}" and "--promote always" in reg.history()[0]["reason"]
    assert [ref.version for ref in reg.versions() if ref.meta.get("training_id") == training.id] == [version]


def test_a_training_that_loses_its_claim_between_publish_and_promote_is_promoted_by_the_next_delivery(
        redis_server, tmp_path, mnist, monkeypatch):
    settings, training, client, key, other = claim_contest(redis_server, tmp_path, mnist, monkeypatch, epochs=1,
                                                           promote="always")
    published, taken = [], []
    publish, check_claim = Registry.publish, Training.check_claim

    def publish_and_note(self, *args, **kwargs):
        result = publish(self, *args, **kwargs)
        published.append(result[0].version)
        return result

    def lose_it_once_published(self):
        if published and not taken:
            # Right after publishing: this run's lease lapsed (the VM paused) and another delivery took it.
            taken.append(True)
            client.delete(key)
            assert other.acquire() is None
            assert self.lease.lost.wait(10), "the heartbeat did not notice"
        check_claim(self)

    monkeypatch.setattr(Registry, "publish", publish_and_note)
    monkeypatch.setattr(Training, "check_claim", lose_it_once_published)
    reg = Registry(settings.models_dir)
    try:
        first = run_training(settings, training.id)
    except TrainingClaimed as e:  # the task looks again later
        first = e
    assert taken and published, "the claim was not lost between publish and promote"
    # The run that lost its claim promoted nothing and recorded nothing, and says the training is unfinished.
    assert isinstance(first, TrainingClaimed) and f"version {published[0]} is published" in str(first), first
    assert reg.current() == BUNDLED and reg.history() == [] and training.outcome() is None
    assert training.status()["state"] == "interrupted"

    other.release()  # the delivery that took the claim died without finishing; the task's retry comes
    again = run_training(settings, training.id)
    assert again["version"] == published[0] and again["promoted"] is True, again
    assert "promoted now, as its gate decided" in again["reason"]
    assert reg.current() == published[0] and _moves(reg) == [("promote", BUNDLED, published[0])]
    outcome = json.loads((training.dir / "outcome.json").read_text())
    assert outcome["promoted"] is True and outcome["version"] == published[0]
    assert run_training(settings, training.id)["duplicate"] and len(reg.history()) == 1  # and only once


def _published(settings: Settings, reg: Registry, *, promote: bool) -> tuple[Training, str]:
    """A training whose run published a version (a copy of the bundled model) with the gate's decision
    against production as it is now, then died before promoting it."""
    training = create_training(settings.trainings_dir, sources=["/nowhere"], epochs=1, from_version=None,
                               holdout=0.2, seed=0, promote="auto", by="test")
    staging = reg.staging_dir("copy")
    for item in reg.bundled().directory.iterdir():
        shutil.copy(item, staging / item.name)
    meta = json.loads((staging / "model.json").read_text())
    meta["training_id"] = training.id
    meta["gate"] = {"policy": "auto", "promote": promote, "reason": f"gate said {promote}",
                    "production": reg.current(), "moves": len(reg.history())}
    (staging / "model.json").write_text(json.dumps(meta))
    return training, reg.publish(staging, training.id)[0].version


def test_a_published_version_is_promoted_on_its_gate_decision_once_and_never_over_a_newer_move(
        redis_server, tmp_path):
    url = db_url(redis_server.url, 15)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    settings.trainings_dir.mkdir(parents=True)
    reg = Registry(settings.models_dir)

    first, v1 = _published(settings, reg, promote=True)
    out = run_training(settings, first.id)
    assert out["promoted"] is True and out["version"] == v1 and reg.current() == v1, out
    assert _moves(reg) == [("promote", BUNDLED, v1)]
    assert run_training(settings, first.id)["duplicate"] and len(reg.history()) == 1

    refused, v2 = _published(settings, reg, promote=False)  # the gate refused it: a candidate it stays
    out = run_training(settings, refused.id)
    assert out["promoted"] is False and "gate said False" in out["reason"] and reg.current() == v1

    older, v3 = _published(settings, reg, promote=True)  # both decided against production v1 ...
    newer, v4 = _published(settings, reg, promote=True)
    assert run_training(settings, newer.id)["promoted"] is True and reg.current() == v4  # ... the newer went first
    reg.rollback(reason="back to v1", by="test")  # production names v1 again, as when `older` was decided
    assert reg.current() == v1
    out = run_training(settings, older.id)
    assert out["promoted"] is False and reg.current() == v1, out
    assert "production has moved since" in out["reason"] and f"digitq models promote {v3}" in out["reason"]
    assert _moves(reg) == [("promote", BUNDLED, v1), ("promote", v1, v4), ("rollback", v4, v1)]
    assert Training.load(settings.trainings_dir, older.id).status()["promoted"] is False


def _registry_with_a_copy(tmp_path) -> tuple[Registry, str]:
    """A registry with one published version: a copy of the bundled model, not promoted."""
    reg = Registry(tmp_path / "models")
    staging = reg.staging_dir("copy")
    for item in reg.bundled().directory.iterdir():
        shutil.copy(item, staging / item.name)
    return reg, reg.publish(staging)[0].version


def test_two_promotions_on_one_decision_move_production_once(tmp_path):
    reg, version = _registry_with_a_copy(tmp_path)
    production, moves = reg.position()
    first = reg.promote(version, reason="r", by="a", expect=production, expect_moves=moves)
    second = reg.promote(version, reason="r", by="b", expect=production, expect_moves=moves)
    assert first["moved"] is True and second["moved"] is False and second["from"] == version
    assert len(reg.history()) == 1
    reg.rollback(reason="away and back", by="test")
    assert reg.current() == production
    # Production names the version of the decision again, but it moved since: no move on that decision.
    again = reg.promote(version, reason="r", by="c", expect=production, expect_moves=moves)
    assert again["moved"] is False and again["moves"] == 2 and reg.current() == production


def test_a_move_torn_by_a_crash_neither_blocks_promotion_nor_glues_to_the_next(tmp_path):
    reg, version = _registry_with_a_copy(tmp_path)
    reg.models_dir.mkdir(parents=True, exist_ok=True)
    with open(reg.models_dir / "history.jsonl", "ab") as f:
        f.write(b'{"at": "2026-01-01T00:00:00Z", "action": "prom')  # a crash mid-append
    production, moves = reg.position()
    assert moves == 0
    assert reg.promote(version, reason="r", by="t", expect=production, expect_moves=moves)["moved"] is True
    assert _moves(reg) == [("promote", production, version)] and reg.current() == version
