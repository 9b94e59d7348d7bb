"""Retraining on the queue, end to end: a real redis-server, real train and predict workers, real training
on a few hundred real MNIST digits, the registry, the promotion gate, hot swap and concurrent publishes.
Requests that fail, wait, get lost or come twice: test_training_requests.py; kills: test_training_recovery.py."""

import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from digitq.disk import csvfile
from digitq.disk.training_requests import Training
from digitq.errors import ModelError
from model.dataset import write_image_folder
from model.quality.robustness import HELD_OUT_FAMILIES, SHIFTS
from model.registry import Registry, sha256_file
from model.serving.runtime import load_predictor
from producer.dispatch import enqueue
from producer.follow import wait_for
from worker.process import WorkerProcess

from .conftest import ROOT, worker_env
from .pipeline_helpers import BUNDLED, last_json, make_job, wait_until
from .training_helpers import cli, registry, train_json


@pytest.fixture(scope="module")
def predictor(tsettings):
    proc = WorkerProcess(worker_env(tsettings), tsettings.data_dir / "predict.log", name="predict").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, mnist):
    """300 real MNIST training digits as DIR/<digit>/*.png, plus two corrupt files to skip."""
    folder = tmp_path_factory.mktemp("labelled")
    write_image_folder(folder, mnist.x_train[:300], mnist.y_train[:300])
    (folder / "4" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "7" / "empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory, mnist):
    folder = tmp_path_factory.mktemp("scan")
    write_image_folder(folder, mnist.x_test[:40], mnist.y_test[:40])
    return folder


def test_train_publishes_a_version_with_metadata_checksums_and_plots(trainer, tsettings, labelled):
    out = train_json(tsettings, "--data", str(labelled), "--epochs", "1")
    assert out["state"] == "done" and out["version"] == "1", out
    assert set(out) >= {"training_id", "state", "version", "promoted", "accuracy", "baseline_accuracy", "reason"}
    # one epoch from scratch on 240 digits is far below the bundled model: a candidate, with both figures
    assert out["promoted"] is False and out["baseline_version"] == BUNDLED
    assert f"{out['accuracy']:.2%}" in out["reason"] and f"{out['baseline_accuracy']:.2%}" in out["reason"]
    ref = registry(tsettings).resolve("1")
    meta = ref.meta
    assert meta["version"] == "1" and meta["training_id"] == out["training_id"] and meta["parent"] is None
    assert meta["params"] == 225_034 and meta["epochs"] == 1 and meta["recipe"]["epochs"] == 1
    source = meta["data"][0]
    assert source["path"] == str(labelled) and source["kind"] == "folder" and len(source["fingerprint"]) == 64
    assert source["train_images"] + source["eval_images"] == 300 and source["eval_images"] == 60
    assert source["undecodable"] == 2 and out["reason"]  # the corrupt files were skipped and counted
    assert meta["evaluation"]["examples"] == 60 and "hold-out" in meta["evaluation"]["description"]
    assert meta["accuracy"] == pytest.approx(out["accuracy"]) and meta["loss"] > 0 and meta["training_seconds"] > 0
    assert len(meta["history"]["loss"]) == 1 and len(meta["history"]["val_accuracy"]) == 1
    assert set(ref.artifacts()) == {"model.keras", "model.onnx", "curves.png", "confusion.png", "samples.png"}
    assert meta["onnx_agreement"]["agreement"] >= 0.999 and meta["onnx_agreement"]["examples"] == 60
    assert "int8_agreement" not in meta and not (ref.directory / "model.int8.onnx").exists()
    # calibrated: a temperature fitted on shifted images it never trained on (no MNIST source: its own digits'
    # shifted copies), served by every runtime; the suite's table for it and for production on the same build
    calibration = meta["calibration"]
    assert calibration["method"] == "temperature" and 0.25 <= calibration["temperature"] <= 8
    assert calibration["nll_after"] <= calibration["nll_before"] and "no calibration split" in calibration["fitted_on"]
    outcome = Training.load(tsettings.trainings_dir, out["training_id"]).outcome()  # outcome.json
    assert calibration["examples"] > 240 * 10 and outcome["temperature"] == calibration["temperature"]
    assert load_predictor(ref, "onnx").temperature == calibration["temperature"]
    robustness = meta["robustness"]
    assert [r["name"] for r in robustness["shifts"]][:2] == ["clean", "lowres-8"] and \
        len(robustness["shifts"]) == len(SHIFTS)
    assert robustness["shifts"][0]["examples"] == 60 and robustness["average"]["shifts"] == len(SHIFTS) - 1
    # the families no renderer draws: recorded, reported apart, and not fitted on by the temperature
    assert meta["held_out_families"] == robustness["held_out_families"] == list(HELD_OUT_FAMILIES)
    assert robustness["held_out"]["shifts"] == sum(s.family in HELD_OUT_FAMILIES for s in SHIFTS.values())
    assert "without the held-out families" in calibration["fitted_on"]
    assert meta["baseline"]["robustness"]["set"] == robustness["set"] == meta["evaluation"]["description"]
    assert 0 <= meta["evaluation"]["ece"] <= 1 and outcome["ece"] == meta["ece"] == meta["evaluation"]["ece"]
    assert {r["name"] for r in outcome["robustness"]["shifts"]} == {r["name"] for r in robustness["shifts"]}
    assert outcome["robustness"]["held_out"]["families"] == list(HELD_OUT_FAMILIES)
    assert outcome["robustness"]["held_out"]["accuracy"] == pytest.approx(robustness["held_out"]["accuracy"])
    assert outcome["robustness"]["average"]["baseline_accuracy"] == \
        meta["baseline"]["robustness"]["average"]["accuracy"]
    for name, sha in ref.artifacts().items():
        assert sha256_file(ref.directory / name) == sha
        if name.endswith(".png"):
            with Image.open(ref.directory / name) as image:
                assert image.format == "PNG" and image.width >= 400 and image.height >= 300
    assert registry(tsettings).current() == BUNDLED
    shown = cli(tsettings, "training", out["training_id"], "--json")
    assert json.loads(shown.stdout)["progress"][0]["epoch"] == 1


def test_fine_tune_passes_the_gate_and_hot_swaps_into_a_running_worker(trainer, predictor, tsettings, labelled,
                                                                      scan_folder):
    before = make_job(tsettings, scan_folder, batch_size=20)
    wait_for(before, timeout=120)
    assert {r["model_version"] for r in csvfile.read(before.csv_path)} == {BUNDLED}
    pids = set(predictor.child_pids())

    out = train_json(tsettings, "--data", str(labelled), "--epochs", "1", "--from-version", "production")
    assert out["state"] == "done" and out["promoted"] is True, out
    assert "passed the gate" in out["reason"]
    version = out["version"]
    assert registry(tsettings).current() == version
    assert registry(tsettings).resolve(version).meta["parent"] == BUNDLED

    after = make_job(tsettings, scan_folder, batch_size=20)
    wait_for(after, timeout=120)
    rows = csvfile.read(after.csv_path)
    assert len(rows) == 40 and {r["model_version"] for r in rows} == {version}
    assert sum(r["prediction"] == r["path"].split("/")[-2] for r in rows) >= 38
    # the same worker processes, never restarted, loaded the new version themselves
    assert predictor.proc.poll() is None and set(predictor.child_pids()) == pids
    loads = [line for line in predictor.log().splitlines() if "loaded model" in line]
    assert any(f"loaded model {version} (onnx" in line for line in loads) and any(BUNDLED in line for line in loads)
    assert any(f"pid {pid}" in line for pid in pids for line in loads if f"model {version} " in line)


def test_a_job_running_during_a_promotion_keeps_its_pinned_version(predictor, tsettings, scan_folder):
    reg = registry(tsettings)
    pinned = reg.current()
    job = make_job(tsettings, scan_folder, batch_size=10, send=False)
    assert job.model_version == pinned and job.n_batches == 4
    enqueue(tsettings, job, [0, 1])
    wait_until(lambda: job.committed() >= {0, 1}, what="first half of the job")
    other = BUNDLED if pinned != BUNDLED else "1"
    moved = cli(tsettings, "models", "promote", other, "--reason", "mid-job", "--json")
    assert moved.exit_code == 0 and last_json(moved)["to"] == other
    enqueue(tsettings, job, [2, 3])
    wait_for(job, timeout=120)
    assert {r["model_version"] for r in csvfile.read(job.csv_path)} == {pinned}
    assert make_job(tsettings, scan_folder, batch_size=40, send=False).model_version == other
    back = cli(tsettings, "models", "rollback", "--reason", "test done")
    assert back.exit_code == 0 and reg.current() == pinned


def test_models_commands(tsettings, trainer):
    listed = json.loads(cli(tsettings, "models", "list", "--json").stdout)
    versions = [v["version"] for v in listed]
    assert versions[0] == BUNDLED and versions[1:] == [str(n) for n in registry(tsettings).published()]
    assert sum(v["production"] for v in listed) == 1
    assert all({"version", "accuracy", "created", "production", "parent"} <= v.keys() for v in listed)
    shown = json.loads(cli(tsettings, "models", "show", "1", "--json").stdout)
    assert all(a["check"] == "ok" for a in shown["artifacts"].values()) and len(shown["plots"]) == 3
    meta = shown["metadata"]
    assert shown["ece"] == meta["evaluation"]["ece"] and shown["temperature"] == meta["calibration"]["temperature"]
    assert shown["suite_accuracy"] == meta["robustness"]["average"]["accuracy"] and shown["suite_ece"] is not None
    human = cli(tsettings, "models", "show", "1").stdout
    assert f"temperature {meta['calibration']['temperature']:g}" in human and "style-7-crossbar" in human
    assert f"ECE {shown['suite_ece']:.2%}" in human
    old = cli(tsettings, "models", "show", BUNDLED).stdout  # recorded by hand: the same lines
    bundled = registry(tsettings).bundled().meta
    assert f"temperature {bundled['calibration']['temperature']:g}" in old
    assert f"ece         {bundled['evaluation']['ece']:.2%} on MNIST test split" in old
    start = registry(tsettings).current()
    assert cli(tsettings, "models", "promote", "1", "--reason", "try it").exit_code == 0
    history = json.loads(cli(tsettings, "models", "history", "--json").stdout)
    assert history[-1]["to"] == "1" and history[-1]["from"] == start and history[-1]["reason"] == "try it"
    assert {"at", "from", "to", "reason", "by", "action"} <= history[-1].keys()
    again = cli(tsettings, "models", "promote", "1")
    assert again.exit_code == 0 and "already" in again.stdout
    rolled = cli(tsettings, "models", "rollback", "--json")
    assert rolled.exit_code == 0 and last_json(rolled) == {**last_json(rolled), "from": "1", "to": start}
    assert registry(tsettings).current() == start
    human = cli(tsettings, "models", "list").stdout
    assert f"* {start}" in human
    unknown = cli(tsettings, "models", "promote", "99")
    assert unknown.exit_code == 1 and "not published" in unknown.stderr and "Traceback" not in unknown.output


def test_the_gate_refuses_a_deliberately_worse_model(trainer, tsettings, mnist, tmp_path):
    fifty = tmp_path / "fifty"
    write_image_folder(fifty, mnist.x_train[1000:1050], mnist.y_train[1000:1050])
    production = registry(tsettings).current()
    out = train_json(tsettings, "--data", str(fifty), "--epochs", "1", "--promote", "auto")
    assert out["state"] == "done" and out["version"] and out["promoted"] is False, out
    assert "refused by the gate" in out["reason"] and out["accuracy"] < out["baseline_accuracy"]
    assert registry(tsettings).current() == production
    listed = {v["version"]: v for v in json.loads(cli(tsettings, "models", "list", "--json").stdout)}
    assert listed[out["version"]]["production"] is False


def _publish_copy(models_dir: str, source: str, training_id: str, barrier_path: str) -> None:
    # Runs in a separate process: stage a copy of a version, wait for the others, publish at once.
    import shutil
    from pathlib import Path

    reg = Registry(models_dir)
    staging = reg.staging_dir("copy")
    for item in Path(source).iterdir():
        shutil.copy(item, staging / item.name)
    meta = json.loads((staging / "model.json").read_text())
    meta["training_id"] = training_id
    (staging / "model.json").write_text(json.dumps(meta))
    Path(barrier_path).with_name(f"ready-{os.getpid()}").touch()
    while not os.path.exists(barrier_path):
        time.sleep(0.001)
    ref, created = reg.publish(staging, training_id)
    print(json.dumps([ref.version, created]))


def test_concurrent_publishes_get_distinct_versions_and_a_training_publishes_once(tsettings, trainer, tmp_path):
    reg = registry(tsettings)
    source = str(reg.resolve("1").directory)
    barrier = tmp_path / "go"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.test_training import _publish_copy; "
            "_publish_copy(*sys.argv[2:])")
    ids = ["20990101-000000-aaaaaa", "20990101-000000-bbbbbb", "20990101-000000-cccccc", "20990101-000000-aaaaaa"]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(tsettings.models_dir), source, tid,
                               str(barrier)], stdout=subprocess.PIPE, text=True) for tid in ids]
    # Every process has staged its copy and waits at the barrier: then all publish at once.
    wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == len(ids), timeout=60, what="every publisher ready")
    barrier.write_text("go")
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    by_id = {}
    for tid, (version, created) in zip(ids, results, strict=True):
        by_id.setdefault(tid, set()).add((version, created))
    assert len({v for v, _ in results}) == 3  # a, b, c: three numbers; a's duplicate got a's
    assert len({v for v, _ in by_id["20990101-000000-aaaaaa"]}) == 1
    assert sorted(created for _, created in by_id["20990101-000000-aaaaaa"]) == [False, True]
    for version, _ in results:
        assert all(state == "ok" for state in reg.resolve(version).verify_all().values())
    assert not list((tsettings.models_dir / ".staging").iterdir())


def test_a_tampered_model_file_is_refused(tsettings):
    import shutil

    from model.serving.runtime import load_predictor

    reg = registry(tsettings)
    staging = reg.staging_dir("tamper")
    for item in reg.bundled().directory.iterdir():
        shutil.copy(item, staging / item.name)
    latest = reg.publish(staging)[0].version
    assert cli(tsettings, "models", "show", latest).exit_code == 0
    path = reg.resolve(latest).path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    promoted = cli(tsettings, "models", "promote", latest)
    assert promoted.exit_code == 1 and "fails its checksum" in promoted.stderr
    shown = cli(tsettings, "models", "show", latest)
    assert shown.exit_code == 1 and "FAILS ITS CHECKSUM" in shown.stdout
    with pytest.raises(ModelError, match="model.keras fails its checksum"):
        load_predictor(reg.resolve(latest), "keras")
    onnx = reg.resolve(latest).directory / "model.onnx"
    tampered = bytearray(onnx.read_bytes())
    tampered[-1] ^= 0x01
    onnx.write_bytes(bytes(tampered))
    with pytest.raises(ModelError, match="model.onnx fails its checksum"):
        load_predictor(reg.resolve(latest), "onnx")
    assert reg.current() != latest


def test_gate_unit():
    from model.training.run import gate

    assert gate("auto", 0.990, 0.9909, "3", 0.1, 1000)[0] is True
    ok, reason = gate("auto", 0.988, 0.990, "3", 0.1, 1000)
    assert ok is False and "0.20 points below" in reason and "98.80%" in reason and "99.00%" in reason
    assert gate("never", 1.0, 0.5, "3", 0.1, 10)[0] is False and gate("always", 0.1, 0.9, "3", 0.1, 10)[0] is True
