"""Calibrated confidence: temperature scaling of a version's probabilities, fitted and applied.

A version may record ``"calibration": {"method": "temperature", "temperature": T, ...}`` in its
``model.json``. Every runtime serves ``softmax(log p / T)`` of its raw probabilities ``p`` through
:func:`apply_temperature` (one function, float64, so keras and onnx stay identical). ``T > 1``
softens over-confident probabilities, ``T < 1`` sharpens. The arg-max never changes: dividing the
log-probabilities by a positive number keeps their order. A version with no calibration recorded
(published before issue 15) is served with ``T = 1``, exactly as before.

``T`` is fitted by minimising the negative log-likelihood (Guo et al., 2017) over ``log T`` in
``[log 0.25, log 8]`` (golden-section search), on data the model did not train on that includes
the robustness suite's shifts (:mod:`model.robustness`) made with :data:`CALIBRATION_SEED`, a
seed other than the evaluation suite's: a training holds out a calibration split of its training
examples for it (:mod:`model.sources`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from digitq.errors import ModelError

METHOD = "temperature"
#: The robustness suite's shifts of the calibration images use this seed (the evaluation suite: 15).
CALIBRATION_SEED = 1015
#: Bounds of the search: beyond them a model is broken, not mis-calibrated.
T_MIN, T_MAX = 0.25, 8.0
#: log(0) guard: a probability below this counts as this (float32 softmax underflows near 1e-45).
_FLOOR = 1e-30


def temperature_of(meta: dict) -> float:
    """The temperature a version's metadata records; 1.0 when it records none (older versions)."""
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

    ``T == 1`` returns ``probs`` untouched, so an uncalibrated version serves the same bytes as before."""
    if temperature == 1.0 or not len(probs):
        return probs
    logp = np.log(np.maximum(np.asarray(probs, np.float64), _FLOOR)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    out /= out.sum(axis=1, keepdims=True)
    return out.astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``probs`` scaled by ``temperature`` (float64)."""
    logp = np.log(np.maximum(np.asarray(probs, np.float64), _FLOOR)) / temperature
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
    from model.robustness import HELD_OUT_FAMILIES, build_suite, calibration_shifts

    shifts = calibration_shifts(HELD_OUT_FAMILIES if held_out is None else held_out)
    clean = build_suite(x, y, shifts=[s for s in shifts if s.family == "none"], seed=CALIBRATION_SEED)
    shifted = build_suite(x, y, shifts=[s for s in shifts if s.family != "none"], limit=limit, seed=CALIBRATION_SEED)
    images = np.concatenate([s.images for s in clean + shifted])
    labels = np.concatenate([s.labels for s in clean + shifted])
    return images, labels


def fit(predict_raw: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
        fitted_on: str) -> dict:
    """Fit a temperature for ``predict_raw`` (uncalibrated probabilities) on ``images``; the record that
    goes into ``model.json`` as ``calibration``, with the NLL and ECE before and after on those images."""
    from model.evaluation import expected_calibration_error

    raw = np.asarray(predict_raw(images))
    t = fit_temperature(raw, labels)
    scaled = apply_temperature(raw, t)
    return {"method": METHOD, "temperature": t, "fitted_on": fitted_on, "examples": int(len(labels)),
            "seed": CALIBRATION_SEED,
            "nll_before": round(nll(raw, labels), 6), "nll_after": round(nll(raw, labels, t), 6),
            "ece_before": round(expected_calibration_error(raw, labels), 6),
            "ece_after": round(expected_calibration_error(scaled, labels), 6)}


#: Training digits a model directory's temperature is fitted on by :func:`main` (the bundled model).
DIRECTORY_SAMPLE = 5000


def main(argv: list[str] | None = None) -> None:
    """``python -m model.calibration DIR MNIST [LIMIT]``: fit the temperature of the model in ``DIR`` (the
    bundled one: trained on all of MNIST's training split, so it has no calibration split) on the suite's
    shifts (seed :data:`CALIBRATION_SEED`) and clean copies of a seeded sample of MNIST training digits, then
    score the robustness suite on the test split before and after, and record both in ``DIR/model.json``."""
    import json
    import sys
    import time
    from pathlib import Path

    from digitq.disk.storage import atomic_write
    from model.dataset import load_dataset
    from model.evaluation import expected_calibration_error, held_out_of, profile, score_shifts
    from model.registry import ONNX_FILE, _read_meta
    from model.robustness import SEED, build_suite
    from model.runtime import OnnxPredictor
    from model.train import score

    args = argv if argv is not None else sys.argv[1:]
    directory, mnist = Path(args[0]), args[1]
    limit = int(args[2]) if len(args) > 2 else None
    ref = _read_meta(directory, directory.name)
    data = load_dataset(mnist)
    predictor = OnnxPredictor(ref, ref.read_verified(ONNX_FILE), 1)
    started = time.monotonic()
    sample = np.sort(np.random.default_rng(CALIBRATION_SEED).permutation(len(data.y_train))[:DIRECTORY_SAMPLE])
    held_out = held_out_of(ref.meta)
    images, labels = calibration_images(data.x_train[sample], data.y_train[sample], 1000, held_out)
    record = fit(predictor.predict_raw, images, labels,
                 f"clean copies of a seeded sample (seed {CALIBRATION_SEED}) of {len(sample)} MNIST training digits "
                 f"and the robustness suite's shifts of them (seed {CALIBRATION_SEED}, 1000 images per shift at "
                 f"most). Caveat: {ref.meta.get('version')} trained on all 60,000 training digits, so the clean "
                 "ones were seen in training; these shifted images were not, though a recipe with rendered "
                 "variants (model/variants.py) trained on others drawn by the same renderers; never the held-out "
                 f"families ({', '.join(held_out)})")
    record["held_out_families"] = list(held_out)
    record["seconds"] = round(time.monotonic() - started, 1)
    t = record["temperature"]
    sets = build_suite(data.x_test, data.y_test, limit=limit)
    before = score_shifts(sets, predictor.predict_raw, held_out)
    after = score_shifts(sets, lambda x: apply_temperature(predictor.predict_raw(x), t), held_out)
    raw = predictor.predict_raw(data.x_test)
    clean = apply_temperature(raw, t)
    record["test_ece_before"] = round(expected_calibration_error(raw, data.y_test), 6)
    record["test_ece_after"] = round(expected_calibration_error(clean, data.y_test), 6)
    record["suite_ece_before"] = {r["name"]: r["ece"] for r in before["shifts"]}
    record["suite_ece_before"]["average"] = before["average"]["ece"]
    keep = ("name", "family", "held_out", "examples", "accuracy", "ece", "mean_confidence")
    meta = dict(ref.meta)
    meta["calibration"] = record
    meta["held_out_families"] = list(held_out)
    meta["robustness"] = {"suite": "robustness", "set": "MNIST test split", "seed": SEED, "limit": limit,
                          "ece_bins": 15, "calibrated": True,
                          "shifts": [{k: r[k] for k in keep} for r in after["shifts"]], "average": after["average"],
                          "held_out_families": list(held_out), "held_out": after["held_out"],
                          "trained": after["trained"]}
    # What the version serves on the test split, calibrated: the profile a job's report compares with.
    accuracy, loss = score(clean, data.y_test)
    meta["evaluation"] = {**meta.get("evaluation", {}), "set": "MNIST test split", "examples": int(len(data.y_test)),
                          "accuracy": round(accuracy, 6), "loss": round(loss, 6), **profile(clean),
                          "ece": record["test_ece_after"]}
    atomic_write(directory / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    print(json.dumps({k: v for k, v in record.items() if k != "suite_ece_before"}))


if __name__ == "__main__":
    main()
