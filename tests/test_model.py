"""The seed architecture, a tiny real training run, and verified loading."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from digitq.errors import ModelError
from model.registry import Registry
from model.runtime import int8_exact_here

from .conftest import ROOT, mnist_source


def test_architecture_is_the_seed_cnn():
    from model.architecture import PARAMS, build_model

    model = build_model()
    layers = [(type(layer).__name__, getattr(layer, "filters", None) or getattr(layer, "units", None))
              for layer in model.layers]
    assert layers == [("Conv2D", 32), ("MaxPooling2D", None), ("Conv2D", 64), ("MaxPooling2D", None),
                      ("Flatten", None), ("Dense", 128), ("Dropout", None), ("Dense", 10)]
    assert model.layers[0].kernel_size == (3, 3) and model.layers[2].kernel_size == (3, 3)
    assert model.layers[6].rate == pytest.approx(0.2)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.count_params() == PARAMS == 225_034
    assert type(model.optimizer).__name__ == "Adam"
    assert "sparse_categorical_crossentropy" in str(model.loss)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, mnist):
    from model.train import Recipe, train

    out = tmp_path_factory.mktemp("tiny")
    # one augmented epoch, then one clean epoch: both phases of the recipe
    meta = train(mnist, Recipe(epochs=2, clean_epochs=1, limit=400, holdout=100, batch_size=50), out, verbose=0)
    return out, meta


def test_tiny_training_run_writes_model_and_metadata(tiny_model):
    out, meta = tiny_model
    from model.registry import sha256_file

    on_disk = json.loads((out / "model.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert meta["params"] == 225_034 and meta["train_examples"] == 300
    assert len(meta["history"]["loss"]) == 2 and len(meta["history"]["val_accuracy"]) == 2
    assert meta["sha256"] == sha256_file(out / "model.keras")
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and meta["test_loss"] > 0
    assert {"training_seconds", "data_source", "recipe", "holdout_accuracy", "epochs"} <= meta.keys()


def test_trained_model_loads_verified_and_predicts(tiny_model, tmp_path, mnist):
    from model.runtime import load_predictor

    out, meta = tiny_model
    version_dir = tmp_path / "models" / "1"
    shutil.copytree(out, version_dir)
    ref = Registry(tmp_path / "models").resolve("1")
    probs = load_predictor(ref).predict(mnist.x_test[:8])
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_tampered_model_is_refused(tiny_model, tmp_path):
    from model.runtime import load_predictor

    out, _ = tiny_model
    version_dir = tmp_path / "models" / "2"
    shutil.copytree(out, version_dir)
    with open(version_dir / "model.keras", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ModelError, match="checksum"):
        load_predictor(Registry(tmp_path / "models").resolve("2"))


def test_unsafe_model_is_refused(tmp_path):
    """safe_mode=True: a Lambda layer (arbitrary Python) does not load."""
    import keras

    from model.registry import sha256_file
    from model.runtime import load_predictor

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(lambda x: x * 2),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    directory = tmp_path / "models" / "3"
    directory.mkdir(parents=True)
    model.save(directory / "model.keras")
    (directory / "model.json").write_text(json.dumps({"sha256": sha256_file(directory / "model.keras")}))
    with pytest.raises(ModelError, match="cannot load"):
        load_predictor(Registry(tmp_path / "models").resolve("3"))


def test_registry_resolution(tmp_path):
    reg = Registry(tmp_path / "models")
    bundled = reg.resolve(None)
    assert bundled == reg.resolve("production") == reg.resolve("bundled") == reg.resolve(bundled.version)
    with pytest.raises(ModelError, match="not published"):
        reg.resolve("7")
    with pytest.raises(ModelError, match="unknown model version"):
        reg.resolve("../etc")


def test_bundled_model_scores_on_mnist_test_split(tmp_path):
    """The Done-when check, through the real CLI: accuracy >= 99.4%, 225,034 params."""
    env_source = mnist_source()
    args = [sys.executable, "-m", "producer.cli", "--data-dir", str(tmp_path), "evaluate", "--json"]
    if env_source:
        args += ["--data", env_source]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["params"] == 225_034
    assert result["accuracy"] >= 0.994
    assert result["examples"] == 10_000 and result["runtime"] == ("onnx-int8" if int8_exact_here() else "onnx")
    assert result["model_version"] == Registry(tmp_path).bundled().version


def test_onnx_runtime_agrees_with_keras_on_the_mnist_test_split(mnist):
    """The serving runtime: >= 99.9% identical predictions on 10,000 digits, accuracy within 0.05 points."""
    from model.export import check_agreement, to_onnx
    from model.runtime import load_keras, load_predictor

    ref = Registry(ROOT / "nowhere").bundled()
    reference = load_predictor(ref, "keras")
    keras_probs = reference.predict(mnist.x_test)
    # The default serves int8 only on CPUs that compute it exactly (VNNI); elsewhere the float graph.
    served_by_default = "onnx-int8" if int8_exact_here() else "onnx"
    for runtime in ("onnx-int8", "onnx"):  # the default, and the float graph
        served = load_predictor(ref, runtime)
        assert (served.runtime, reference.runtime) == (served_by_default if runtime == "onnx-int8" else runtime,
                                                       "keras")
        probs = served.predict(mnist.x_test)
        report = check_agreement(keras_probs, probs, mnist.y_test)
        assert report["agreement"] >= 0.999 and report["accuracy_gap"] <= 0.0005 and report["examples"] == 10_000
        assert (probs.argmax(1) == mnist.y_test).mean() >= 0.994
    # the committed artifact is exactly the export of the committed Keras weights
    assert to_onnx(load_keras(ref).get_weights()) == (ref.directory / "model.onnx").read_bytes()


def test_disagreeing_export_is_refused():
    from model.export import check_agreement

    labels = np.arange(1000) % 10
    reference = np.eye(10, dtype=np.float32)[labels]
    wrong = reference.copy()
    wrong[:2] = np.roll(wrong[:2], 1, axis=1)  # two of 1,000 predictions differ: 99.8%
    with pytest.raises(ModelError, match="disagrees"):
        check_agreement(reference, wrong, labels)
    assert check_agreement(reference, reference, labels)["agreement"] == 1.0


def test_tampered_onnx_artifact_is_refused(tmp_path):
    from model.runtime import load_predictor

    bundled = Registry(tmp_path).bundled().directory
    directory = tmp_path / "models" / "4"
    shutil.copytree(bundled, directory)
    data = bytearray((directory / "model.onnx").read_bytes())
    data[-100] ^= 0x01
    (directory / "model.onnx").write_bytes(bytes(data))
    ref = Registry(tmp_path / "models").resolve("4")
    with pytest.raises(ModelError, match="model.onnx fails its checksum"):
        load_predictor(ref, "onnx")
    assert load_predictor(ref, "keras").runtime == "keras"  # the .keras file itself is intact


def test_unknown_runtime_is_a_clear_error(monkeypatch):
    from digitq.errors import ConfigError
    from model.runtime import runtime_name

    monkeypatch.setenv("DIGITQ_RUNTIME", "tensorrt")
    with pytest.raises(ConfigError, match="DIGITQ_RUNTIME"):
        runtime_name()


def test_int8_is_served_only_where_the_cpu_computes_it_exactly(monkeypatch):
    import model.runtime as runtime

    ref = Registry(ROOT / "nowhere").bundled()
    for exact, expected in ((False, "onnx"), (True, "onnx-int8")):
        monkeypatch.setattr(runtime, "int8_exact_here", lambda exact=exact: exact)
        assert runtime.load_predictor(ref, "onnx-int8").runtime == expected
