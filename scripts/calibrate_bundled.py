"""Fit the temperature of a model directory (the bundled model) and record it in its ``model.json``.

    .venv/bin/python scripts/calibrate_bundled.py DIR MNIST [LIMIT]

The bundled model trained on all of MNIST's training split, so it has no calibration split: its
temperature is fitted (:mod:`model.quality.calibration`) on clean copies of a seeded sample of MNIST
training digits and on the robustness suite's shifts of them (seed ``CALIBRATION_SEED``, never the
held-out families). The suite is then scored on the test split before and after, and ``DIR/model.json``
gets the calibration record, the suite's table and the calibrated evaluation profile. A training
fits its own version's temperature (:mod:`model.training.run`); this is for a directory built by hand
(``python -m model.training``, then ``python -m model.training.export``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, installed or not

#: Training digits the temperature is fitted on.
DIRECTORY_SAMPLE = 5000


def main(argv: list[str] | None = None) -> None:
    """Fit ``DIR``'s temperature on MNIST (``MNIST``: an IDX dir or npz), score the suite (``LIMIT`` images
    per shift at most; all by default), record both in ``DIR/model.json``."""
    from digitq.disk.storage import atomic_write
    from model.dataset import load_dataset
    from model.quality.calibration import CALIBRATION_SEED, calibration_images, fit
    from model.quality.evaluation import held_out_of, score_shifts, suite_record
    from model.quality.metrics import expected_calibration_error, profile, score
    from model.quality.robustness import build_suite
    from model.registry import ONNX_FILE, read_version
    from model.serving.runtime import OnnxPredictor
    from model.serving.temperature import apply_temperature

    args = argv if argv is not None else sys.argv[1:]
    directory, mnist = Path(args[0]), args[1]
    limit = int(args[2]) if len(args) > 2 else None
    ref = read_version(directory, directory.name)
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
                 "variants (model/training/variants.py) trained on others drawn by the same renderers; never the "
                 f"held-out families ({', '.join(held_out)})")
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
    meta = dict(ref.meta)
    meta["calibration"] = record
    meta["held_out_families"] = list(held_out)
    meta["robustness"] = suite_record(after, "MNIST test split", limit, calibrated=True)
    # What the version serves on the test split, calibrated: the profile a job's report compares with.
    accuracy, loss = score(clean, data.y_test)
    meta["evaluation"] = {**meta.get("evaluation", {}), "set": "MNIST test split", "examples": int(len(data.y_test)),
                          "accuracy": round(accuracy, 6), "loss": round(loss, 6), **profile(clean),
                          "ece": record["test_ece_after"]}
    atomic_write(directory / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    print(json.dumps({k: v for k, v in record.items() if k != "suite_ece_before"}))


if __name__ == "__main__":
    main()
