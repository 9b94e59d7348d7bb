"""Scores of class probabilities against labels: accuracy and cross-entropy, calibration (ECE), and the
profile of what a model predicts."""

from __future__ import annotations

import numpy as np


def score(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of class probabilities against labels."""
    picked = np.clip(probs[np.arange(len(y)), y.astype(np.int64)], 1e-7, 1.0)
    return float((probs.argmax(axis=1) == y).mean()), float(-np.log(picked).mean())


#: Equal-width bins of the top-class probability over [0, 1], for the confidence histograms.
CONFIDENCE_BINS = 20


def profile(probs: np.ndarray) -> dict:
    """What a model predicts on its evaluation set, recorded at publish time so that a job's report
    can show drift: predicted-class counts and the histogram of the top-class probability."""
    return {"class_shares": np.bincount(probs.argmax(axis=1), minlength=10).tolist(),
            "confidence_histogram": np.histogram(probs.max(axis=1), bins=CONFIDENCE_BINS,
                                                 range=(0.0, 1.0))[0].tolist()}


#: Equal-width confidence bins for the expected calibration error (Guo et al., 2017: 15).
ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins.

    Each prediction falls in the bin ``(k/bins, (k+1)/bins]`` of its top-class probability; the ECE is
    ``sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|``. 0 for no predictions."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if not len(labels):
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # ceil - 1: upper edges inclusive, so 1.0 lands in the last bin and k/bins in bin k-1.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    # n_bin * |accuracy_bin - confidence_bin| is |sum over the bin of (right - confidence)|.
    gap = np.bincount(which, weights=correct - confidence, minlength=bins)
    return float(np.abs(gap).sum() / len(labels))
