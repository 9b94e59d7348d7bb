"""One training request, run to its end: train, evaluate fairly, publish, pass the promotion gate.

Plain functions over :class:`digitq.disk.training_requests.Training`; the Celery task is a
thin wrapper. Whatever fails, the outcome says why and production is untouched:
a version is published only once it is complete, and promoted only afterwards.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from digitq.disk.storage import atomic_write_json
from digitq.disk.training_requests import Training, TrainingClaimed, TrainingUnfinished, release_claim
from digitq.errors import DigitqError
from digitq.settings import Settings
from model.extras import require_train
from model.quality import calibration
from model.quality.evaluation import score_shifts, suite_record
from model.quality.metrics import expected_calibration_error, profile, score
from model.quality.robustness import HELD_OUT_FAMILIES, build_suite
from model.registry import MODEL_FILE, ONNX_FILE, ModelRef, Registry, sha256_file
from model.serving.runtime import KerasPredictor, OnnxPredictor, load_keras, load_predictor
from model.serving.temperature import apply_temperature
from model.training import plots
from model.training.export import check_agreement, to_onnx
from model.training.recipe import ARCHITECTURE, Recipe, fit, rounded_history
from model.training.sources import TrainingData, load_training_data

log = logging.getLogger("digitq.training")
#: Fine-tuning starts from trained weights: a tenth of the recipe's peak rate, no warm-up.
FINE_TUNE_LR_FACTOR = 0.1


#: The robustness gate: a candidate may trail production by at most this many points on any one shift.
SHIFT_TOLERANCE_PTS = 0.5
#: ... and by at most this many points on the mean over the families held out of training (the headline).
HELD_OUT_TOLERANCE_PTS = 0.5
#: A shift is judged on its own only with at least this many images: below 200, one image is more than
#: 0.5 points, and a single digit flipping would decide (a training on a small folder's hold-out).
MIN_SHIFT_IMAGES = 200


def robustness_problems(candidate: dict, production: dict, tolerance_pts: float) -> list[str]:
    """Why a candidate loses robustness, from both versions' :func:`model.quality.evaluation.score_shifts` on the
    same suite build: every shift of at least :data:`MIN_SHIFT_IMAGES` images where it trails production
    by more than :data:`SHIFT_TOLERANCE_PTS` points, the mean over the shifts of its held-out families when
    that trails by more than :data:`HELD_OUT_TOLERANCE_PTS` (judged once they hold that many images
    together), and its average over the shifts when that trails by more than ``tolerance_pts`` (the
    accuracy gate's tolerance: "worse" means the same for both) and the suite has a shift of that size.
    Empty: no loss.

    A held-out shift is judged in the mean, not alone: no training aimed at it, so the model may have
    little skill there to keep, and a retraining that changes nothing about it moves such a shift by more
    than 0.5 points either way at 1,000 images (a 3-epoch fine-tune of the bundled model: -0.7 and +0.2
    points on two of them)."""
    families = candidate.get("held_out_families") or ()
    theirs = {r["name"]: r["accuracy"] for r in production["shifts"] if r["accuracy"] is not None}
    problems = []
    for row in candidate["shifts"]:
        base = theirs.get(row["name"])
        if row["family"] == "none" or row["accuracy"] is None or base is None:
            continue  # clean is the accuracy gate's
        if row["family"] in families:
            continue  # judged in the held-out mean, below
        if row["examples"] >= MIN_SHIFT_IMAGES and row["accuracy"] < base - SHIFT_TOLERANCE_PTS / 100 - 1e-12:
            problems.append(f"{row['name']} {row['accuracy']:.2%} vs {base:.2%} "
                            f"({(base - row['accuracy']) * 100:.2f} points below, more than {SHIFT_TOLERANCE_PTS:g})")
    mine, base = held_out_mean(candidate, families), held_out_mean(production, families)
    images = sum(r["examples"] for r in candidate["shifts"] if r["family"] in families)
    if images >= MIN_SHIFT_IMAGES and mine is not None and base is not None \
            and mine < base - HELD_OUT_TOLERANCE_PTS / 100 - 1e-12:
        problems.append(f"the held-out mean ({', '.join(families)}: never trained on) {mine:.2%} vs {base:.2%} "
                        f"({(base - mine) * 100:.2f} points below, more than {HELD_OUT_TOLERANCE_PTS:g})")
    mine, base = candidate["average"]["accuracy"], production["average"]["accuracy"]
    judged = max((r["examples"] for r in candidate["shifts"]), default=0) >= MIN_SHIFT_IMAGES
    if judged and mine is not None and base is not None and mine < base - tolerance_pts / 100 - 1e-12:
        problems.append(f"the suite's average {mine:.2%} vs {base:.2%} ({(base - mine) * 100:.2f} points below, "
                        f"more than {tolerance_pts:g})")
    return problems


def held_out_mean(scores: dict, families) -> float | None:
    """Mean accuracy over the shifts of ``families`` in one version's suite scores (each shift once);
    None when it has none. Both versions are judged on the candidate's held-out families."""
    rows = [r["accuracy"] for r in scores["shifts"]
            if r["family"] in families and r["family"] != "none" and r["accuracy"] is not None]
    return float(np.mean(rows)) if rows else None


def suite_figures(candidate: dict, production: dict) -> str:
    """Both versions' accuracy on every shift and on average, for a gate's reason."""
    theirs = {r["name"]: r["accuracy"] for r in production["shifts"]}
    rows = [f"{r['name']} {r['accuracy']:.2%}/{theirs.get(r['name'], 0) or 0:.2%}"
            + ("" if r["examples"] >= MIN_SHIFT_IMAGES else f" ({r['examples']} images: not judged alone)")
            for r in candidate["shifts"] if r["family"] != "none" and r["accuracy"] is not None]
    families = candidate.get("held_out_families") or ()
    mine, base = held_out_mean(candidate, families), held_out_mean(production, families)
    held = f"held-out mean {mine:.2%}/{base:.2%}; " if mine is not None and base is not None else ""
    return (f"robustness suite (candidate/production, {max(r['examples'] for r in candidate['shifts'])} images per "
            f"shift at most): {held}average {candidate['average']['accuracy']:.2%}/"
            f"{production['average']['accuracy']:.2%}; " + ", ".join(rows))


def gate(policy: str, accuracy: float, baseline: float, baseline_version: str, tolerance_pts: float,
         examples: int, robustness: tuple[dict, dict] | None = None) -> tuple[bool, str]:
    """The promotion decision and its reason, with both figures.

    ``robustness``: ``(candidate, production)`` scores on one build of the robustness suite
    (:func:`model.quality.evaluation.score_shifts`); ``auto`` then also refuses a candidate that loses a shift
    (:func:`robustness_problems`), and the reason carries both versions' per-shift figures."""
    figures = (f"accuracy {accuracy:.2%} vs production {baseline_version} {baseline:.2%} "
               f"on the same {examples} evaluation images")
    if robustness is not None:
        figures += "; " + suite_figures(*robustness)
    if policy == "never":
        return False, f"--promote never: published as a candidate ({figures})"
    if policy == "always":
        return True, f"--promote always ({figures})"
    if accuracy < baseline - tolerance_pts / 100 - 1e-12:
        return False, (f"refused by the gate: {figures}, {(baseline - accuracy) * 100:.2f} points below; "
                       f"the tolerance is {tolerance_pts:g} points (DIGITQ_PROMOTE_TOLERANCE). Kept as a candidate")
    problems = robustness_problems(*robustness, tolerance_pts) if robustness is not None else []
    if problems:
        return False, (f"refused by the gate on the robustness suite: {'; '.join(problems)}. Figures: {figures}. "
                       "Kept as a candidate (--promote always to promote it anyway)")
    return True, f"passed the gate: {figures}, tolerance {tolerance_pts:g} points" + (
        f", {SHIFT_TOLERANCE_PTS:g} per shift" if robustness is not None else "")


def run_training(settings: Settings, training_id: str) -> dict:
    """Run a training request once; a finished or live one is left alone (duplicate delivery).

    Of two concurrent deliveries only the one that wins the claim (atomic, in Redis: see
    :meth:`Training.claim`) trains; the other is acknowledged and touches nothing. A run that loses its
    claim once the version is published raises :class:`TrainingUnfinished` (the task looks again later):
    the delivery that then holds the claim finishes it (:func:`_finish_published`)."""
    training = Training.load(settings.trainings_dir, training_id)
    outcome = training.outcome()
    if outcome:
        log.info("training %s already ended (%s); nothing to do", training_id, outcome.get("state"))
        return {**outcome, "duplicate": True}
    previous = training.run_record()
    try:
        lease = training.claim(settings)
    except TrainingClaimed as e:
        if not e.holder.local():
            raise  # alive, or dead with its lease still running: the task looks again later
        log.warning("%s; this delivery is a duplicate", e)
        return {"training_id": training_id, "state": "running", "duplicate": True}
    outcome = training.outcome()  # the claimant before us may have finished between our two looks
    if outcome:
        release_claim(lease, training_id)
        log.info("training %s already ended (%s); nothing to do", training_id, outcome.get("state"))
        return {**outcome, "duplicate": True}
    if previous and not previous.get("ended"):
        log.warning("training %s: attempt %s on %s (pid %s) died; running it again", training_id,
                    previous.get("attempt"), previous.get("host"), previous.get("pid"))
    with training.running(lease) as attempt, _logging_to(training.log_path):
        log.info("training %s: attempt %d, request %s", training_id, attempt, json.dumps(training.request))
        try:
            outcome = _train_and_publish(settings, training, attempt)
        except DigitqError as e:
            log.error("training %s failed: %s", training_id, e)
            outcome = {"state": "failed", "error": str(e)}
        except Exception as e:  # a bug must still end the training with a reason, not leave it "running"
            log.exception("training %s failed", training_id)
            outcome = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
        outcome.setdefault("version", None)
        outcome.setdefault("promoted", False)
        if not (training.still_claimed(lease) and training.finish(outcome)):
            # Its claim was lost (or an outcome is there already): the holder of the claim records its own.
            log.error("training %s: this attempt lost its claim; its outcome is not recorded", training_id)
            outcome = {**outcome, "duplicate": True}
    if outcome.get("duplicate") and training.outcome() is None and lease.lost.is_set():
        published = Registry(settings.models_dir).find_training(training_id)
        if published is not None:
            # Published, then the claim was lost before the outcome: whoever holds the claim now, or the
            # next delivery once it lapses, finishes it (promotes it if its gate said so, records the outcome).
            raise TrainingUnfinished(training_id, published.version, lease.taker)
    return outcome


@contextmanager
def _logging_to(path: Path):
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def _finish_published(registry: Registry, training: Training, ref: ModelRef) -> dict:
    """The outcome of a training whose version an earlier delivery published (it died, or lost its claim,
    before recording the outcome): never published again, and promoted now if the gate's decision recorded
    in ``model.json`` was to promote and production has not moved since that decision (the same version,
    the same number of moves: see :meth:`Registry.position`). A move since, even away and back, superseded
    it: then it stays a candidate, and the reason says so. At most once: the promotion is itself a move."""
    meta, decision = ref.meta, ref.meta.get("gate") or {}
    by = "published by an earlier delivery of this training (not published again)"
    current, moves = registry.position()
    if current == ref.version:
        promoted, reason = True, f"{by}; already production: {decision.get('reason', 'promoted earlier')}"
    elif not decision.get("promote"):
        promoted, reason = False, f"{by}; {decision.get('reason', 'not promoted')}"
    else:
        moved = {"moved": False, "from": current, "moves": moves}
        if (current, moves) == (decision.get("production"), decision.get("moves")):
            training.check_claim()  # only the holder of the claim finishes the training
            moved = registry.promote(ref.version, reason=decision["reason"], by=f"training {training.id}",
                                     expect=decision["production"], expect_moves=decision["moves"])
        promoted = moved["moved"] or moved["from"] == ref.version
        if promoted:
            reason = f"{by}; promoted now, as its gate decided: {decision['reason']}"
            log.info("training %s: promoted version %s, published by an earlier delivery", training.id, ref.version)
        else:
            reason = (f"{by}; its gate decided to promote it ({decision['reason']}), but production has moved "
                      f"since (now {moved['from']}, {moved['moves'] - decision.get('moves', 0)} move(s) later: "
                      f"see `digitq models history`): not promoted over a newer decision. Promote it by hand "
                      f"if still wanted: `digitq models promote {ref.version}`")
            log.warning("training %s: %s", training.id, reason)
    robustness = meta.get("robustness")
    base_robustness = meta.get("baseline", {}).get("robustness")
    return {"state": "done", "version": ref.version, "promoted": promoted,
            "accuracy": meta.get("accuracy"), "loss": meta.get("loss"), "ece": meta.get("ece"),
            "temperature": meta.get("calibration", {}).get("temperature"),
            "baseline_version": meta.get("baseline", {}).get("version"),
            "baseline_accuracy": meta.get("baseline", {}).get("accuracy"), "reason": reason,
            "robustness": _compare_shifts(robustness, base_robustness) if robustness and base_robustness else None}


def _train_and_publish(settings: Settings, training: Training, attempt: int) -> dict:
    req = training.request
    registry = Registry(settings.models_dir)
    earlier = registry.find_training(training.id)
    if earlier is not None:  # a crash, or a lost claim, after publishing: never publish twice
        return _finish_published(registry, training, earlier)
    # A worker without TensorFlow (the slim image, `pip install digitq`) took the `train` queue: the outcome
    # says what to install; `digitq train --retry ID` once a full trainer runs.
    require_train(f"training {training.id} on {socket.gethostname()}")

    data = load_training_data(req["sources"], holdout=req.get("holdout", 0.2), seed=req.get("seed", 0))
    for source in data.sources:
        log.info("source %s (%s): %d to train, %d to evaluate%s", source["path"], source["kind"],
                 source["train_images"], source["eval_images"],
                 f", {source['undecodable']} undecodable file(s) skipped" if source.get("undecodable") else "")
        if source.get("corrections") or source.get("confirmed"):
            log.info("source %s: %d correction(s) and %d confirmed prediction(s) from `digitq review`",
                     source["path"], source["corrections"], source["confirmed"])
    log.info("evaluation set: %s", data.evaluation["description"])

    recipe = Recipe(epochs=int(req["epochs"]), seed=int(req.get("seed", 0)))
    parent = initial = None
    if req.get("from_version"):
        parent = registry.resolve(req["from_version"])
        initial = load_keras(parent).get_weights()
        recipe = replace(recipe, learning_rate=recipe.learning_rate * FINE_TUNE_LR_FACTOR, warmup_epochs=0)
        log.info("fine-tuning from version %s", parent.version)

    model, history, seconds, ema = fit(data.x_train, data.y_train, recipe, validation=(data.x_eval, data.y_eval),
                                       callbacks=[_progress_callback(training, attempt, recipe.epochs)],
                                       initial_weights=initial)

    staging = registry.staging_dir(training.id)
    try:
        ref, created, figures, suite = _stage_and_publish(settings, staging, registry, training, data, recipe,
                                                          parent, model, history, seconds, ema)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed training leaves nothing behind
        raise
    if not created:
        return _finish_published(registry, training, ref)
    accuracy, baseline = figures["accuracy"], figures["baseline"]
    log.info("published version %s", ref.version)
    training.check_claim()
    promoted, reason, against = _promote(settings, registry, ref, ref.meta["gate"], training, data, suite,
                                         (figures["robustness"], figures.pop("baseline_robustness")))
    log.info("%s: %s", "promoted" if promoted else "not promoted", reason)
    return {"state": "done", "version": ref.version, "promoted": promoted, "accuracy": accuracy,
            "loss": figures["loss"], "ece": figures["ece"], "temperature": figures["calibration"]["temperature"],
            "baseline_version": baseline["version"],
            "baseline_accuracy": baseline["accuracy"], "reason": reason,
            "robustness": _compare_shifts(*against),
            "evaluation_examples": int(len(data.y_eval)), "skipped_files": data.skipped,
            "training_seconds": figures["training_seconds"]}


def _stage_and_publish(settings: Settings, staging: Path, registry: Registry, training: Training,
                       data: TrainingData, recipe: Recipe, parent: ModelRef | None, model, history: dict,
                       seconds: float, ema: bool) -> tuple[ModelRef, bool, dict, list]:
    """Assemble the version in ``staging`` (model, serving exports checked against Keras, calibration, plots,
    metadata with the robustness suite's table), score production on the same sets, then publish.
    Returns ``(version, created, figures, suite)``: ``suite`` is the build both versions were scored on."""
    model.save(staging / MODEL_FILE)
    # Score what will be published: the saved file, loaded back as workers load it, in both runtimes.
    saved = ModelRef("candidate", staging / MODEL_FILE, sha256_file(staging / MODEL_FILE))
    keras_model = load_keras(saved)
    candidate = KerasPredictor(saved, keras_model)
    raw = candidate.predict_raw(data.x_eval)
    onnx_bytes = to_onnx(keras_model.get_weights())
    (staging / ONNX_FILE).write_bytes(onnx_bytes)
    agreement = check_agreement(raw, OnnxPredictor(saved, onnx_bytes).predict_raw(data.x_eval), data.y_eval)
    log.info("ONNX export agrees with Keras on %.2f%% of the evaluation set", agreement["agreement"] * 100)
    started = time.monotonic()
    fitted = _calibrate(settings, data, candidate, parent)
    fitted["seconds"] = round(time.monotonic() - started, 1)
    temperature = fitted["temperature"]
    log.info("calibration: temperature %.3f fitted on %d images (NLL %.4f -> %.4f) in %.1f s", temperature,
             fitted["examples"], fitted["nll_before"], fitted["nll_after"], fitted["seconds"])
    # What the version will serve: every runtime applies the recorded temperature (model/serving/runtime.py).
    probs = apply_temperature(raw, temperature)
    accuracy, loss = score(probs, data.y_eval)
    production, moves = registry.position()  # what the gate's decision is against, recorded with it
    baseline = registry.resolve(production)
    base_predictor = load_predictor(baseline, "keras")
    base_probs = base_predictor.predict(data.x_eval)
    base_acc, base_loss = score(base_probs, data.y_eval)
    log.info("candidate accuracy %.4f loss %.4f; production %s accuracy %.4f on %d images",
             accuracy, loss, baseline.version, base_acc, len(data.y_eval))
    started = time.monotonic()
    suite = _suite(settings, data)
    mine = score_shifts(suite, lambda x: apply_temperature(candidate.predict_raw(x), temperature),
                        HELD_OUT_FAMILIES)
    theirs = score_shifts(suite, base_predictor.predict, HELD_OUT_FAMILIES)  # judged on the candidate's families
    suite_seconds = round(time.monotonic() - started, 1)
    log.info("robustness suite (%d images): average accuracy %.2f%% vs production %.2f%%, in %.1f s",
             sum(len(s.labels) for s in suite), mine["average"]["accuracy"] * 100,
             theirs["average"]["accuracy"] * 100, suite_seconds)
    described = data.evaluation["description"]
    figures = {"training_seconds": round(seconds, 1), "ema_used": ema, "accuracy": round(accuracy, 6),
               "loss": round(loss, 6), "ece": round(expected_calibration_error(probs, data.y_eval), 6),
               "calibration": fitted,
               "robustness": suite_record(mine, described, settings.suite_limit, seconds=suite_seconds),
               "baseline": {"version": baseline.version, "accuracy": round(base_acc, 6),
                            "loss": round(base_loss, 6),
                            "ece": round(expected_calibration_error(base_probs, data.y_eval), 6),
                            "robustness": suite_record(theirs, described, settings.suite_limit,
                                                         seconds=suite_seconds)}}
    meta = _metadata(training, data, recipe, parent, model, history, probs, figures)
    meta["onnx_agreement"] = agreement
    # The float graph only: no int8 graph kept every probability within 0.005 of Keras (BENCHMARKS.md).
    meta["artifacts"] = {ONNX_FILE: sha256_file(staging / ONNX_FILE),
                         **_plots(staging, history, data, probs, training.id)}
    meta["sha256"] = sha256_file(staging / MODEL_FILE)
    # Decided before publishing and published with the version: a delivery that finds the version published
    # but not promoted (its publisher died or lost its claim in between) promotes it on this decision.
    policy = training.request.get("promote", "auto")
    ok, reason = gate(policy, figures["accuracy"], figures["baseline"]["accuracy"], baseline.version,
                      settings.promote_tolerance, len(data.y_eval), (mine, theirs))
    meta["gate"] = {"policy": policy, "promote": ok, "reason": reason, "production": baseline.version,
                    "moves": moves}
    atomic_write_json(staging / "model.json", meta)
    training.check_claim()  # a run that lost its claim publishes nothing
    ref, created = registry.publish(staging, training.id)
    return ref, created, {**figures, "baseline_robustness": theirs, "robustness": mine}, suite


#: Images of the training data the calibration falls back to when no source gives a calibration split.
CALIBRATION_FALLBACK = 2000


def _calibrate(settings: Settings, data: TrainingData, candidate: KerasPredictor, parent: ModelRef | None) -> dict:
    """Fit the candidate's temperature on the calibration split (clean, and the suite's shifts of it made
    with another seed than the evaluation suite's); without one (no MNIST source), on a seeded sample of
    the training images, whose shifted copies at least were never trained on (the bundled model's way)."""
    shifts = f"clean and the robustness suite's shifts (seed {calibration.CALIBRATION_SEED}, {settings.suite_limit} " \
             "images per shift at most)"
    if len(data.y_cal):
        x, y = data.x_cal, data.y_cal
        where = " + ".join(data.cal_parts) + ", held out of this training"
        if parent is not None:
            where += f" (its parent {parent.version} may have trained on them)"
    else:
        pick = np.random.default_rng(calibration.CALIBRATION_SEED).permutation(len(data.y_train))
        pick = np.sort(pick[:CALIBRATION_FALLBACK])
        x, y = data.x_train[pick], data.y_train[pick]
        where = (f"{len(pick)} of this training's own images (no MNIST source, so no calibration split: "
                 "the clean ones were trained on, their shifted copies never)")
    images, labels = calibration.calibration_images(x, y, settings.suite_limit, HELD_OUT_FAMILIES)
    return calibration.fit(candidate.predict_raw, images, labels,
                           f"{where}; {shifts}, without the held-out families ({', '.join(HELD_OUT_FAMILIES)})")


def _suite(settings: Settings, data: TrainingData) -> list:
    """The robustness suite on the evaluation set, the same build for both versions."""
    return build_suite(data.x_eval, data.y_eval, limit=settings.suite_limit)


def _compare_shifts(candidate: dict, production: dict) -> dict:
    """Both versions' accuracy and ECE per shift and on average, for a training's outcome."""
    theirs = {r["name"]: r for r in production["shifts"]}
    return {"shifts": [{"name": r["name"], "accuracy": r["accuracy"], "ece": r["ece"],
                        "baseline_accuracy": theirs.get(r["name"], {}).get("accuracy"),
                        "baseline_ece": theirs.get(r["name"], {}).get("ece")} for r in candidate["shifts"]],
            "average": {"accuracy": candidate["average"]["accuracy"], "ece": candidate["average"]["ece"],
                        "baseline_accuracy": production["average"]["accuracy"],
                        "baseline_ece": production["average"]["ece"]},
            "held_out": {"families": candidate.get("held_out_families") or [],
                         "accuracy": held_out_mean(candidate, candidate.get("held_out_families") or ()),
                         "baseline_accuracy": held_out_mean(production, candidate.get("held_out_families") or ())}}


def _promote(settings: Settings, registry: Registry, ref: ModelRef, decision: dict, training: Training,
             data: TrainingData, suite: list, robustness: tuple[dict, dict]) -> tuple[bool, str, tuple[dict, dict]]:
    """Act on the gate's ``decision`` (recorded in ``model.json``); if production moved since it, score the
    new one on the same sets and decide again. Returns ``(promoted, reason, (candidate, production) suite
    scores the decision used)``."""
    ok, reason = decision["promote"], decision["reason"]
    baseline_version, moves = decision["production"], decision["moves"]
    accuracy = ref.meta["accuracy"]
    for _ in range(3):
        if not ok:
            return False, reason, robustness
        moved = registry.promote(ref.version, reason=reason, by=f"training {training.id}", expect=baseline_version,
                                 expect_moves=moves)
        if moved["moved"] or moved["from"] == ref.version:  # or a delivery that took our claim promoted it
            return True, reason, robustness
        baseline_version, moves = moved["from"], moved["moves"]
        other = load_predictor(registry.resolve(baseline_version), "keras")
        base_acc, _ = score(other.predict(data.x_eval), data.y_eval)
        robustness = (robustness[0], score_shifts(suite, other.predict, HELD_OUT_FAMILIES))
        training.check_claim()
        ok, reason = gate(decision["policy"], accuracy, base_acc, baseline_version, settings.promote_tolerance,
                          len(data.y_eval), robustness)
    return False, "production kept moving while this training was promoted; promote it by hand if still wanted", \
        robustness


def _progress_callback(training: Training, attempt: int, epochs: int):
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            training.check_claim()  # its claim lost: stop here (TrainingLost), train and write nothing more
            figures = {k: round(float(v), 5) for k, v in (logs or {}).items() if k != "learning_rate"}
            training.add_progress({"attempt": attempt, "epoch": epoch + 1, "epochs": epochs, **figures})
            log.info("epoch %d/%d %s", epoch + 1, epochs, " ".join(f"{k} {v:.4f}" for k, v in figures.items()))

    return EpochProgress()


def _plots(staging: Path, history: dict, data: TrainingData, probs: np.ndarray, training_id: str) -> dict[str, str]:
    paths = [
        plots.training_curves({k: list(map(float, v)) for k, v in history.items()}, staging / plots.CURVES,
                              f"training {training_id}"),
        plots.confusion(data.y_eval, probs.argmax(axis=1), staging / plots.CONFUSION),
        plots.samples(data.x_eval, data.y_eval, probs, staging / plots.SAMPLES),
    ]
    return {p.name: sha256_file(p) for p in paths}


def _metadata(training: Training, data: TrainingData, recipe: Recipe, parent: ModelRef | None, model,
              history: dict, probs: np.ndarray, figures: dict) -> dict:
    import keras
    import tensorflow as tf

    req = training.request
    return {
        "version": None,  # numbered by the registry at publish time
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "training_id": training.id,
        "requested_by": req.get("by"),
        "parent": parent.version if parent else None,
        "architecture": ARCHITECTURE,
        "params": int(model.count_params()),
        "epochs": recipe.epochs,
        "recipe": asdict(recipe),
        # Families of the robustness suite no renderer of this recipe draws: the suite's honest measure.
        "held_out_families": list(HELD_OUT_FAMILIES),
        "data": data.sources,
        # What people corrected in `digitq review` folders: images moved to another digit than predicted.
        "corrections": sum(int(source.get("corrections", 0)) for source in data.sources),
        "train_examples": int(len(data.y_train)),
        "skipped_files": data.skipped,
        # Of the calibrated probabilities: what the version serves, and what a job's report compares with.
        "evaluation": {**data.evaluation, "accuracy": figures["accuracy"], "loss": figures["loss"],
                       "ece": figures["ece"], **profile(probs)},
        **figures,
        "history": rounded_history(history),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
