"""The base install, without the `train` extra (TensorFlow, Keras, the ONNX exporter): the slim worker image.

Prediction workers, the CLI and beat import none of it; what needs it says to install digitq[train].
The packages are made absent the way Python's import system allows: ``sys.modules[name] = None``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from digitq.errors import DataError, ModelError
from model.extras import TRAIN_PACKAGES, MissingExtra, missing, require_train

from .conftest import ROOT
from .pipeline_helpers import db_url

ABSENT = f"import sys\nfor name in {TRAIN_PACKAGES!r}: sys.modules[name] = None\n"


@pytest.fixture
def no_train_extra(monkeypatch):
    for name in TRAIN_PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)


def test_the_serving_cli_and_beat_modules_import_without_the_train_extra():
    code = ABSENT + (
        "import worker, worker.tasks, worker.beat, worker.health, worker.inference, producer.cli, producer.report, "
        "producer.review, producer.fleet, producer.retraining, producer.catalog, model.quality.evaluation, "
        "model.serving.runtime, model.training.run\n"
        "from model.extras import missing; print(','.join(missing()))\n"
        "from producer.cli import main; main(['scan', '--help'], standalone_mode=False)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == "tensorflow,keras,onnx"
    assert "Usage: " in done.stdout


def test_what_needs_the_train_extra_says_to_install_it(no_train_extra, tmp_path):
    assert missing() == list(TRAIN_PACKAGES)
    with pytest.raises(MissingExtra, match=r"training X needs tensorflow, keras, onnx.*install digitq\[train\]"):
        require_train("training X")
    from model.dataset import load_keras_download
    from model.registry import Registry
    from model.serving.runtime import load_keras, load_predictor

    ref = Registry(tmp_path / "models").resolve("production")  # the bundled version
    with pytest.raises(ModelError, match=r"with Keras .*needs tensorflow, keras.*digitq\[train\]"):
        load_keras(ref)
    with pytest.raises(ModelError, match=r"digitq\[train\]"):
        load_predictor(ref, "keras")
    assert load_predictor(ref, "onnx").predict(__import__("numpy").zeros((1, 28, 28), "uint8")).shape == (1, 10)
    with pytest.raises(DataError, match=r"DIGITQ_MNIST.*digitq\[train\]"):
        load_keras_download()


@pytest.mark.parametrize("module", ["model.training", "model.training.export"])
def test_the_training_module_commands_say_to_install_the_extra(module, tmp_path):
    code = ABSENT + f"import runpy, sys; sys.argv = ['x', '{tmp_path}', '{tmp_path}']; " \
                    f"runpy.run_module('{module}', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: python -m {module} needs ") and "digitq[train]" in done.stderr


def test_a_training_taken_without_the_extra_fails_saying_what_to_install(no_train_extra, settings):
    from digitq.disk.training_requests import Training, create_training
    from model.training.run import run_training

    settings.trainings_dir.mkdir(parents=True, exist_ok=True)
    training = create_training(settings.trainings_dir, sources=[str(ROOT / "samples")], epochs=1, from_version=None,
                               holdout=0.2, seed=0, promote="never", by="test")
    outcome = run_training(settings, training.id)
    assert outcome["state"] == "failed" and outcome["version"] is None
    assert f"training {training.id} on " in outcome["error"] and "install digitq[train]" in outcome["error"]
    assert Training.load(settings.trainings_dir, training.id).status()["state"] == "failed"


def test_a_worker_without_the_train_extra_leaves_the_train_queue_alone(redis_server, tmp_path):
    import os

    from digitq.bus.broker import live_consumers
    from digitq.settings import Settings
    from worker.process import WorkerProcess

    from .conftest import worker_env

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(ABSENT)  # in the worker's process: the slim install
    settings = Settings.from_env(redis_url=db_url(redis_server.url, 12), data_dir=str(tmp_path / "d"))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    with WorkerProcess({**worker_env(settings), "PYTHONPATH": path}, tmp_path / "w.log", queues="predict,train",
                       name="slim") as worker:
        assert live_consumers(settings, "train") == [] and live_consumers(settings, "predict")
        assert "not consuming 'train': training needs tensorflow, keras, onnx" in worker.log()
