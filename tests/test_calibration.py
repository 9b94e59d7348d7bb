"""Calibrated confidence: the temperature a version records is fitted to lower the NLL, applied the same
by every runtime on real MNIST digits, never changes a prediction, and a version without one is served
as published."""

import json
import shutil

import numpy as np
import pytest

from digitq.errors import ModelError
from model.quality.calibration import fit_temperature, nll
from model.registry import BUNDLED_DIR, Registry, read_version
from model.serving.runtime import load_predictor
from model.serving.temperature import apply_temperature, temperature_of


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sampled(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): probabilities that are calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, (n, 10))
    p = _softmax(z)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, labels


@pytest.mark.parametrize("sharpen", [3.0, 0.4])
def test_the_fitted_temperature_undoes_over_and_under_confidence(sharpen):
    z, labels = _sampled()
    shown = _softmax(z * sharpen)  # over-confident (3x the logits) or under-confident (0.4x)
    t = fit_temperature(shown, labels)
    assert t == pytest.approx(sharpen, rel=0.08)
    assert nll(shown, labels, t) < nll(shown, labels) - 0.02
    calibrated = _softmax(z)
    assert nll(shown, labels, t) == pytest.approx(nll(calibrated, labels), abs=0.01)
    # and a calibrated model keeps T near 1
    assert fit_temperature(calibrated, labels) == pytest.approx(1.0, abs=0.05)


def test_temperature_never_changes_a_prediction_and_guards_zero():
    z, _ = _sampled(5000, seed=1)
    probs = _softmax(z * 4).astype(np.float32)
    probs[:50, 3] = 0.0  # float32 softmax underflows to exact zeros
    for t in (0.25, 0.7, 1.3, 8.0):
        scaled = apply_temperature(probs, t)
        assert scaled.dtype == np.float32 and np.isfinite(scaled).all()
        assert np.allclose(scaled.sum(axis=1), 1.0, atol=1e-5)
        assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()
    assert apply_temperature(probs, 1.0) is probs  # T = 1: the bytes as published


def test_bad_calibration_records_are_refused_with_advice():
    assert temperature_of({}) == 1.0 and temperature_of({"calibration": None}) == 1.0
    for bad in ({"method": "temperature", "temperature": 0}, {"method": "temperature", "temperature": "2"},
                {"method": "isotonic", "temperature": 1.2}):
        with pytest.raises(ModelError, match="publish the version again|upgrade digitq"):
            temperature_of({"version": "7", "calibration": bad})


def test_every_runtime_serves_the_recorded_temperature_identically(mnist, tmp_path):
    ref = Registry(tmp_path / "models").bundled()
    recorded = json.loads((BUNDLED_DIR / "model.json").read_text())["calibration"]
    assert recorded["method"] == "temperature" and recorded["temperature"] != 1.0
    x, y = mnist.x_test[:2000], mnist.y_test[:2000]
    served = {}
    for runtime in ("keras", "onnx", "onnx-int8"):
        predictor = load_predictor(ref, runtime)
        assert predictor.temperature == recorded["temperature"]
        raw, probs = predictor.predict_raw(x), predictor.predict(x)
        assert np.allclose(probs, apply_temperature(raw, recorded["temperature"]), atol=1e-7)
        assert (probs.argmax(axis=1) == raw.argmax(axis=1)).all()  # calibration never changes a prediction
        assert np.abs(probs - raw).max() > 1e-3  # and it did change the confidences
        served[runtime] = probs
    assert np.abs(served["keras"] - served["onnx"]).max() < 1e-5
    assert np.abs(served["onnx-int8"] - served["onnx"]).max() < 1e-5
    assert (served["onnx"].argmax(axis=1) == y).mean() > 0.99


def test_a_version_without_calibration_is_served_as_published(mnist, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(BUNDLED_DIR, old)
    meta = json.loads((old / "model.json").read_text())
    meta.pop("calibration", None)
    (old / "model.json").write_text(json.dumps(meta))
    ref = read_version(old, "old")
    x = mnist.x_test[:500]
    for runtime in ("onnx", "keras"):
        predictor = load_predictor(ref, runtime)
        assert predictor.temperature == 1.0
        assert np.array_equal(predictor.predict(x), predictor.predict_raw(x))
    import onnxruntime as ort

    session = ort.InferenceSession(str(old / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(load_predictor(ref, "onnx").predict(x) - session.run(None, {"image": x})[0]).max() < 1e-6
