"""Fitting a version's temperature: the ``T`` that :func:`model.serving.temperature.apply_temperature`
serves with.

``T`` is fitted by minimising the negative log-likelihood (Guo et al., 2017) over ``log T`` in
``[log 0.25, log 8]`` (golden-section search), on data the model did not train on that includes
the robustness suite's shifts (:mod:`model.quality.robustness`) made with :data:`CALIBRATION_SEED`,
a seed other than the evaluation suite's: a training holds out a calibration split of its training
examples for it (:mod:`model.training.sources`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from model.quality import robustness
from model.quality.metrics import expected_calibration_error
from model.serving.temperature import METHOD, PROBABILITY_FLOOR, apply_temperature

#: The robustness suite's shifts of the calibration images use this seed (the evaluation suite: 15).
CALIBRATION_SEED = 1015
#: Bounds of the search: beyond them a model is broken, not mis-calibrated.
T_MIN, T_MAX = 0.25, 8.0


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``probs`` scaled by ``temperature`` (float64)."""
    logp = np.log(np.maximum(np.asarray(probs, np.float64), PROBABILITY_FLOOR)) / temperature
    top = logp.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
    return float((lse - logp[np.arange(len(labels)), np.asarray(labels, np.int64)]).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, tol: float = 1e-4) -> float:
    """The temperature in ``[T_MIN, T_MAX]`` that minimises the NLL of ``labels``: a golden-section search
    on ``log T`` (the NLL is convex in ``1/T``, so unimodal on the bracket)."""
    if not len(labels):
        return 1.0
    probs = np.asarray(probs, np.float64)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(probs, labels, math.exp(a)), nll(probs, labels, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(probs, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(probs, labels, math.exp(b))
    return round(math.exp((lo + hi) / 2), 4)


def calibration_images(x: np.ndarray, y: np.ndarray, limit: int | None,
                       held_out: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The images a temperature is fitted on: ``x`` itself (clean, as decode_image frames it) and every
    shift of the robustness suite applied to (the first ``limit`` of one seeded order of) ``x``, made
    with :data:`CALIBRATION_SEED`; the same decode path as production. Never the shifts of the ``held_out``
    families (default: the suite's): their ECE must measure the calibration, not be fitted to."""
    shifts = robustness.calibration_shifts(robustness.HELD_OUT_FAMILIES if held_out is None else held_out)
    clean = robustness.build_suite(x, y, shifts=[s for s in shifts if s.family == "none"], seed=CALIBRATION_SEED)
    shifted = robustness.build_suite(x, y, shifts=[s for s in shifts if s.family != "none"], limit=limit,
                                     seed=CALIBRATION_SEED)
    images = np.concatenate([s.images for s in clean + shifted])
    labels = np.concatenate([s.labels for s in clean + shifted])
    return images, labels


def fit(predict_raw: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
        fitted_on: str) -> dict:
    """Fit a temperature for ``predict_raw`` (uncalibrated probabilities) on ``images``; the record that
    goes into ``model.json`` as ``calibration``, with the NLL and ECE before and after on those images."""
    raw = np.asarray(predict_raw(images))
    t = fit_temperature(raw, labels)
    scaled = apply_temperature(raw, t)
    return {"method": METHOD, "temperature": t, "fitted_on": fitted_on, "examples": int(len(labels)),
            "seed": CALIBRATION_SEED,
            "nll_before": round(nll(raw, labels), 6), "nll_after": round(nll(raw, labels, t), 6),
            "ece_before": round(expected_calibration_error(raw, labels), 6),
            "ece_after": round(expected_calibration_error(scaled, labels), 6)}
