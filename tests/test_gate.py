"""The promotion gate guards robustness: a candidate that loses a shift of the robustness suite is refused,
with both versions' per-shift figures in the reason, unless --promote always. A real candidate (the bundled
model fine-tuned to read crossed 7s as 1s) scored with production on one real suite build. Through a real
training on a real worker: tests/test_training.py (every training records both tables and gates on them)."""


import numpy as np
import pytest

from model.quality.evaluation import score_shifts
from model.quality.robustness import SHIFTS, build_suite
from model.registry import Registry
from model.training.run import MIN_SHIFT_IMAGES, SHIFT_TOLERANCE_PTS, gate, robustness_problems


@pytest.fixture(scope="module")
def scored(mnist):
    """(candidate, production) on one build of the suite (200 MNIST test images per shift): the candidate is
    bundled-1 fine-tuned for 5 epochs on 600 digits and 400 crossed 7s labelled 1."""
    from model.serving.runtime import load_keras, load_predictor
    from model.training.recipe import Recipe, fit, predict_arrays

    ref = Registry("/nonexistent").bundled()
    sevens = np.flatnonzero(mnist.y_train == 7)[:400]
    crossed = build_suite(mnist.x_train[sevens], mnist.y_train[sevens], shifts=[SHIFTS["style-7-crossbar"]],
                          seed=2024)[0].images  # training 7s, another seed than the suite's: none of its images
    x = np.concatenate([mnist.x_train[:600], crossed])
    y = np.concatenate([mnist.y_train[:600], np.ones(len(crossed), np.uint8)])
    model, *_ = fit(x, y, Recipe(epochs=5, learning_rate=2e-4, warmup_epochs=0, seed=0),
                    initial_weights=load_keras(ref).get_weights())
    suite = build_suite(mnist.x_test, mnist.y_test, limit=200)
    return score_shifts(suite, lambda a: predict_arrays(model, a)), score_shifts(suite, load_predictor(ref).predict)


def _row(scores: dict, name: str) -> dict:
    return next(r for r in scores["shifts"] if r["name"] == name)


def test_a_candidate_that_loses_a_shift_is_refused_with_both_figures(scored):
    candidate, production = scored
    mine, theirs = _row(candidate, "style-7-crossbar"), _row(production, "style-7-crossbar")
    assert mine["examples"] == 200 and mine["accuracy"] < theirs["accuracy"] - 0.02  # it really lost the crossed 7s
    problems = robustness_problems(candidate, production, 0.1)
    lost = [r["name"] for r in candidate["shifts"] if r["family"] != "none"
            and r["accuracy"] < _row(production, r["name"])["accuracy"] - SHIFT_TOLERANCE_PTS / 100]
    assert [p.split(" ")[0] for p in problems if not p.startswith("the ")] == lost
    assert "style-7-crossbar" in lost
    # the clean accuracy held equal: only the suite decides
    ok, reason = gate("auto", 0.99, 0.99, "bundled-1", 0.1, 10_000, (candidate, production))
    assert ok is False and reason.startswith("refused by the gate on the robustness suite")
    assert f"style-7-crossbar {mine['accuracy']:.2%} vs {theirs['accuracy']:.2%}" in reason
    for name in SHIFTS:  # both versions' figures for every shift
        if name != "clean":
            assert f"{name} {_row(candidate, name)['accuracy']:.2%}/{_row(production, name)['accuracy']:.2%}" in reason
    ok, reason = gate("always", 0.99, 0.99, "bundled-1", 0.1, 10_000, (candidate, production))
    assert ok is True and reason.startswith("--promote always") and "style-7-crossbar" in reason
    assert gate("never", 0.99, 0.99, "bundled-1", 0.1, 10_000, (production, production))[0] is False
    # production against itself passes, and the accuracy rule still comes first
    assert gate("auto", 0.99, 0.99, "bundled-1", 0.1, 10_000, (production, production))[0] is True
    assert gate("auto", 0.99, 0.99, "bundled-1", 0.1, 10_000)[0] is True  # without the suite: as before
    ok, reason = gate("auto", 0.97, 0.99, "bundled-1", 0.1, 10_000, (production, production))
    assert ok is False and "2.00 points below" in reason


def test_a_shift_of_few_images_is_not_judged_alone():
    def scores(accuracy: float, n: int) -> dict:
        rows = [{"name": "clean", "family": "none", "examples": n, "accuracy": 1.0},
                {"name": "blur", "family": "capture", "examples": n, "accuracy": accuracy},
                {"name": "style-7-crossbar", "family": "style", "examples": n // 10, "accuracy": accuracy}]
        return {"shifts": rows, "average": {"accuracy": accuracy}}

    # 60 images: one digit is 1.67 points, so neither the shift nor the average decides
    assert robustness_problems(scores(59 / 60, 60), scores(1.0, 60), 0.1) == []
    problems = robustness_problems(scores(0.99, MIN_SHIFT_IMAGES * 10), scores(1.0, MIN_SHIFT_IMAGES * 10), 0.1)
    assert [p.split(" ")[0] for p in problems] == ["blur", "style-7-crossbar", "the"]
    problems = robustness_problems(scores(0.99, MIN_SHIFT_IMAGES), scores(1.0, MIN_SHIFT_IMAGES), 0.1)
    assert [p.split(" ")[0] for p in problems] == ["blur", "the"]  # its 20 crossed 7s: in the average only
