"""Evaluate a model version on the MNIST test split."""

from __future__ import annotations

import time

import numpy as np

from digitq.errors import DataError
from digitq.settings import Settings
from model.dataset import load_dataset
from model.registry import Registry


def evaluate_model(settings: Settings, data: str | None, model_version: str | None = None) -> dict:
    """Accuracy, loss and size of a (checksum-verified) model on the test split."""
    from model.runtime import load_predictor
    from model.train import score

    ref = Registry(settings.models_dir).resolve(model_version)
    dataset = load_dataset(data if data is not None else settings.mnist)
    predictor = load_predictor(ref)
    started = time.monotonic()
    # The serving path itself, so evaluate and scan agree to the last digit.
    x = dataset.x_test
    if not len(x):
        raise DataError(f"{dataset.source} has no test images")
    probs = predictor.predict(x)
    accuracy, loss = score(probs, dataset.y_test)
    return {
        "model_version": ref.version,
        "accuracy": round(accuracy, 6),
        "loss": round(loss, 6),
        "params": ref.meta.get("params"),
        "runtime": predictor.runtime,
        "examples": int(len(dataset.y_test)),
        "data_source": dataset.source,
        "sha256": ref.sha256,
        "seconds": round(time.monotonic() - started, 2),
    }


#: Equal-width bins of the top-class probability over [0, 1], for the confidence histograms.
CONFIDENCE_BINS = 20


def profile(probs: np.ndarray) -> dict:
    """What a model predicts on its evaluation set, recorded at publish time so that a job's report
    can show drift: predicted-class counts and the histogram of the top-class probability."""
    return {"class_shares": np.bincount(probs.argmax(axis=1), minlength=10).tolist(),
            "confidence_histogram": np.histogram(probs.max(axis=1), bins=CONFIDENCE_BINS,
                                                 range=(0.0, 1.0))[0].tolist()}
