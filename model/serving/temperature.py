"""Calibrated confidence at serving time: a version's temperature, applied to its probabilities.

A version may record ``"calibration": {"method": "temperature", "temperature": T, ...}`` in its
``model.json``. Every runtime serves ``softmax(log p / T)`` of its raw probabilities ``p`` through
:func:`apply_temperature` (one function, float64, so keras and onnx stay identical). ``T > 1``
softens over-confident probabilities, ``T < 1`` sharpens. The arg-max never changes: dividing the
log-probabilities by a positive number keeps their order. A version with no calibration recorded
is served with ``T = 1``, as published.

How ``T`` is fitted is :mod:`model.quality.calibration`'s business.
"""

from __future__ import annotations

import math

import numpy as np

from digitq.errors import ModelError

METHOD = "temperature"
#: log(0) guard: a probability below this counts as this (float32 softmax underflows near 1e-45).
PROBABILITY_FLOOR = 1e-30


def temperature_of(meta: dict) -> float:
    """The temperature a version's metadata records; 1.0 when it records none."""
    calibration = meta.get("calibration")
    if not calibration:
        return 1.0
    if calibration.get("method") != METHOD:
        raise ModelError(f"model {meta.get('version')}: unknown calibration method {calibration.get('method')!r}; "
                         f"this digitq applies only {METHOD!r}: upgrade digitq, or publish the version again")
    t = calibration.get("temperature")
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ModelError(f"model {meta.get('version')}: calibration temperature {t!r} is not a positive number; "
                         "fix model.json or publish the version again")
    return float(t)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row, computed in float64, returned as float32.

    ``T == 1`` returns ``probs`` untouched, so an uncalibrated version serves its graph's own bytes."""
    if temperature == 1.0 or not len(probs):
        return probs
    logp = np.log(np.maximum(np.asarray(probs, np.float64), PROBABILITY_FLOOR)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    out /= out.sum(axis=1, keepdims=True)
    return out.astype(np.float32)
