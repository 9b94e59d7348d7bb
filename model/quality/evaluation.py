"""Evaluate a model version on the MNIST test split: accuracy and loss, calibration (ECE), and the
robustness suite's shifted copies of it (:mod:`model.quality.robustness`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from digitq.errors import DataError
from digitq.settings import Settings
from model.dataset import load_dataset
from model.quality.metrics import ECE_BINS, expected_calibration_error, score
from model.quality.robustness import HELD_OUT_FAMILIES, SEED, ShiftedSet, build_suite
from model.registry import Registry
from model.serving.runtime import load_predictor


def evaluate_model(settings: Settings, data: str | None, model_version: str | None = None) -> dict:
    """Accuracy, loss, calibration (ECE, mean confidence) and size of a (checksum-verified) model on the
    test split."""
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
        "ece": round(expected_calibration_error(probs, dataset.y_test), 6),
        "mean_confidence": round(float(probs.max(axis=1).mean()), 6),
        "params": ref.meta.get("params"),
        "runtime": predictor.runtime,
        "examples": int(len(dataset.y_test)),
        "data_source": dataset.source,
        "sha256": ref.sha256,
        "seconds": round(time.monotonic() - started, 2),
    }


def score_shifts(sets: Sequence[ShiftedSet], predict: Callable[[np.ndarray], np.ndarray],
                 held_out: Sequence[str] = ()) -> dict:
    """Accuracy, ECE and mean confidence of ``predict`` (uint8 (N, 28, 28) -> probabilities (N, 10))
    on each shifted set of :func:`model.quality.robustness.build_suite`, and their averages over the shifts
    (each shift counts once; ``clean`` is reported but not averaged): over all of them, over those of the
    ``held_out`` families (never trained on: the headline) and over the others (``trained``). A set built
    with ``naive`` also gets ``naive_accuracy``: the model alone on the same files, without decode_image."""
    rows = []
    for s in sets:
        probs = np.asarray(predict(s.images)) if len(s.images) else np.zeros((0, 10), np.float32)
        correct = probs.argmax(axis=1) == s.labels
        row = {
            "name": s.shift.name,
            "family": s.shift.family,
            "held_out": s.shift.family in held_out,
            "description": s.shift.description,
            "digits": list(s.shift.labels) if s.shift.labels is not None else list(range(10)),
            "examples": int(len(s.labels)),
            "accuracy": round(float(correct.mean()), 6) if len(correct) else None,
            "ece": round(expected_calibration_error(probs, s.labels), 6),
            "mean_confidence": round(float(probs.max(axis=1).mean()), 6) if len(probs) else None,
        }
        if s.naive is not None and len(s.naive):
            alone = np.asarray(predict(s.naive)).argmax(axis=1) == s.labels
            row["naive_accuracy"] = round(float(alone.mean()), 6)
        rows.append(row)
    shifted = [r for r in rows if r["family"] != "none" and r["examples"]]
    average = _mean_of(shifted)
    average["worst"] = min(shifted, key=lambda r: r["accuracy"])["name"] if shifted else None
    return {"shifts": rows, "average": average, "held_out_families": list(held_out),
            "held_out": _mean_of([r for r in shifted if r["held_out"]]),
            "trained": _mean_of([r for r in shifted if not r["held_out"]])}


def _mean_of(rows: Sequence[dict]) -> dict:
    """The number of shifts and their mean accuracy and ECE (each shift counts once); None without any."""
    return {"shifts": len(rows),
            "accuracy": round(float(np.mean([r["accuracy"] for r in rows])), 6) if rows else None,
            "ece": round(float(np.mean([r["ece"] for r in rows])), 6) if rows else None}


#: What ``model.json`` keeps of each shift's row.
RECORDED_FIELDS = ("name", "family", "held_out", "examples", "accuracy", "ece", "mean_confidence")


def suite_record(scores: dict, set_description: str, limit: int | None, **extra) -> dict:
    """The suite's table as a version's ``model.json`` keeps it (``robustness``): per shift the
    :data:`RECORDED_FIELDS`, the averages, and which families were held out; ``extra`` (the build's
    seconds, whether it was calibrated) after the build's parameters."""
    return {"suite": "robustness", "set": set_description, "seed": SEED, "limit": limit, "ece_bins": ECE_BINS,
            **extra, "shifts": [{k: row[k] for k in RECORDED_FIELDS} for row in scores["shifts"]],
            "average": scores["average"], "held_out_families": scores["held_out_families"],
            "held_out": scores["held_out"], "trained": scores["trained"]}


def held_out_of(meta: dict) -> tuple[str, ...]:
    """The families a version never trained on, as its ``model.json`` records them; a version that records
    none is taken to have trained on none of the suite's held-out families."""
    recorded = meta.get("held_out_families")
    return tuple(recorded) if recorded is not None else HELD_OUT_FAMILIES


def evaluate_robustness(settings: Settings, data: str | None, model_version: str | None = None,
                        limit: int | None = None) -> dict:
    """The robustness suite (:mod:`model.quality.robustness`) on the test split, scored by the served
    predictor of a (checksum-verified) model version: what ``digitq evaluate --suite robustness`` prints."""
    ref = Registry(settings.models_dir).resolve(model_version)
    dataset = load_dataset(data if data is not None else settings.mnist)
    if not len(dataset.x_test):
        raise DataError(f"{dataset.source} has no test images")
    predictor = load_predictor(ref)
    started = time.monotonic()
    sets = build_suite(dataset.x_test, dataset.y_test, limit=limit, naive=True)
    built = time.monotonic()
    scores = score_shifts(sets, predictor.predict, held_out_of(ref.meta))
    return {
        "suite": "robustness",
        "model_version": ref.version,
        "runtime": predictor.runtime,
        "sha256": ref.sha256,
        "data_source": dataset.source,
        "seed": SEED,
        "limit": limit,
        "ece_bins": ECE_BINS,
        **scores,
        "note": "style shifts use only the test digits of their class (digits); the averages are over "
                "the shifts, each counted once, without clean; held_out: the families this version never "
                "trained on (the headline); naive_accuracy: the model alone on the same files, without "
                "decode_image",
        "seconds": round(time.monotonic() - started, 2),
        "build_seconds": round(built - started, 2),  # making and decoding the images: most of the cost
    }
