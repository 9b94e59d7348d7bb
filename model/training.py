"""One training request, run to its end: train, evaluate fairly, publish, pass the promotion gate.

Plain functions over :class:`digitq.trainings.Training`; the Celery task is a
thin wrapper. Whatever fails, the outcome says why and production is untouched:
a version is published only once it is complete, and promoted only afterwards.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from digitq.errors import DigitqError
from digitq.settings import Settings
from digitq.storage import atomic_write_json
from digitq.trainings import Training, TrainingClaimed, release_claim
from model import plots
from model.evaluation import profile
from model.export import check_agreement, to_onnx
from model.registry import MODEL_FILE, ONNX_FILE, ModelRef, Registry, sha256_file
from model.runtime import KerasPredictor, OnnxPredictor, load_keras, load_predictor
from model.sources import TrainingData, load_training_data
from model.train import ARCHITECTURE, Recipe, fit, rounded_history, score

log = logging.getLogger("digitq.training")
#: Fine-tuning starts from trained weights: a tenth of the recipe's peak rate, no warm-up.
FINE_TUNE_LR_FACTOR = 0.1


def gate(policy: str, accuracy: float, baseline: float, baseline_version: str, tolerance_pts: float,
         examples: int) -> tuple[bool, str]:
    """The promotion decision and its reason, with both figures."""
    figures = (f"accuracy {accuracy:.2%} vs production {baseline_version} {baseline:.2%} "
               f"on the same {examples} evaluation images")
    if policy == "never":
        return False, f"--promote never: published as a candidate ({figures})"
    if policy == "always":
        return True, f"--promote always ({figures})"
    if accuracy >= baseline - tolerance_pts / 100 - 1e-12:
        return True, f"passed the gate: {figures}, tolerance {tolerance_pts:g} points"
    return False, (f"refused by the gate: {figures}, {(baseline - accuracy) * 100:.2f} points below; "
                   f"the tolerance is {tolerance_pts:g} points (DIGITQ_PROMOTE_TOLERANCE). Kept as a candidate")


def run_training(settings: Settings, training_id: str) -> dict:
    """Run a training request once; a finished or live one is left alone (duplicate delivery).

    Of two concurrent deliveries only the one that wins the claim (atomic, in Redis: see
    :meth:`Training.claim`) trains; the other is acknowledged and touches nothing."""
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
        if training.still_claimed(lease):
            training.finish(outcome)
        else:  # paused past its lease: the delivery that took the claim over records its own outcome
            log.error("training %s: this attempt lost its claim; its outcome is not recorded", training_id)
            outcome = {**outcome, "duplicate": True}
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


def _published_outcome(registry: Registry, ref: ModelRef) -> dict:
    meta = ref.meta
    return {"state": "done", "version": ref.version, "promoted": registry.current() == ref.version,
            "accuracy": meta.get("accuracy"), "loss": meta.get("loss"),
            "baseline_version": meta.get("baseline", {}).get("version"),
            "baseline_accuracy": meta.get("baseline", {}).get("accuracy"),
            "reason": "published by an earlier delivery of this training; not published again"}


def _train_and_publish(settings: Settings, training: Training, attempt: int) -> dict:
    req = training.request
    registry = Registry(settings.models_dir)
    earlier = registry.find_training(training.id)
    if earlier is not None:  # a crash after publishing: never publish twice
        return _published_outcome(registry, earlier)

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
        ref, created, figures = _stage_and_publish(staging, registry, training, data, recipe, parent, model,
                                                   history, seconds, ema)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed training leaves nothing behind
        raise
    if not created:
        return _published_outcome(registry, ref)
    accuracy, baseline = figures["accuracy"], figures["baseline"]
    log.info("published version %s", ref.version)
    promoted, reason = _promote(settings, registry, ref, req.get("promote", "auto"), training, data,
                                accuracy, baseline["version"], baseline["accuracy"])
    log.info("%s: %s", "promoted" if promoted else "not promoted", reason)
    return {"state": "done", "version": ref.version, "promoted": promoted, "accuracy": accuracy,
            "loss": figures["loss"], "baseline_version": baseline["version"],
            "baseline_accuracy": baseline["accuracy"], "reason": reason,
            "evaluation_examples": int(len(data.y_eval)), "skipped_files": data.skipped,
            "training_seconds": figures["training_seconds"]}


def _stage_and_publish(staging: Path, registry: Registry, training: Training, data: TrainingData, recipe: Recipe,
                       parent: ModelRef | None, model, history: dict, seconds: float,
                       ema: bool) -> tuple[ModelRef, bool, dict]:
    """Assemble the version in ``staging`` (model, serving exports checked against Keras, plots, metadata),
    score production on the same set, then publish. Returns ``(version, created, figures)``."""
    model.save(staging / MODEL_FILE)
    # Score what will be published: the saved file, loaded back as workers load it, in both runtimes.
    saved = ModelRef("candidate", staging / MODEL_FILE, sha256_file(staging / MODEL_FILE))
    keras_model = load_keras(saved)
    probs = KerasPredictor(saved, keras_model).predict(data.x_eval)
    accuracy, loss = score(probs, data.y_eval)
    onnx_bytes = to_onnx(keras_model.get_weights())
    (staging / ONNX_FILE).write_bytes(onnx_bytes)
    agreement = check_agreement(probs, OnnxPredictor(saved, onnx_bytes).predict(data.x_eval), data.y_eval)
    log.info("ONNX export agrees with Keras on %.2f%% of the evaluation set", agreement["agreement"] * 100)
    baseline = registry.resolve("production")
    base_acc, base_loss = score(load_predictor(baseline, "keras").predict(data.x_eval), data.y_eval)
    log.info("candidate accuracy %.4f loss %.4f; production %s accuracy %.4f on %d images",
             accuracy, loss, baseline.version, base_acc, len(data.y_eval))
    figures = {"training_seconds": round(seconds, 1), "ema_used": ema, "accuracy": round(accuracy, 6),
               "loss": round(loss, 6), "baseline": {"version": baseline.version, "accuracy": round(base_acc, 6),
                                                    "loss": round(base_loss, 6)}}
    meta = _metadata(training, data, recipe, parent, model, history, probs, figures)
    meta["onnx_agreement"] = agreement
    # The float graph only: no int8 graph kept every probability within 0.005 of Keras (BENCHMARKS.md).
    meta["artifacts"] = {ONNX_FILE: sha256_file(staging / ONNX_FILE),
                         **_plots(staging, history, data, probs, training.id)}
    meta["sha256"] = sha256_file(staging / MODEL_FILE)
    atomic_write_json(staging / "model.json", meta)
    ref, created = registry.publish(staging, training.id)
    return ref, created, figures


def _promote(settings: Settings, registry: Registry, ref: ModelRef, policy: str, training: Training,
             data: TrainingData, accuracy: float, baseline_version: str, base_acc: float) -> tuple[bool, str]:
    """Apply the gate; if production moved while we trained, score the new one on the same set and decide again."""
    for _ in range(3):
        ok, reason = gate(policy, accuracy, base_acc, baseline_version, settings.promote_tolerance, len(data.y_eval))
        if not ok:
            return False, reason
        moved = registry.promote(ref.version, reason=reason, by=f"training {training.id}", expect=baseline_version)
        if moved["moved"]:
            return True, reason
        baseline_version = moved["from"]
        base_acc, _ = score(load_predictor(registry.resolve(baseline_version), "keras").predict(data.x_eval),
                            data.y_eval)
    return False, "production kept moving while this training was promoted; promote it by hand if still wanted"


def _progress_callback(training: Training, attempt: int, epochs: int):
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
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
        "data": data.sources,
        # What people corrected in `digitq review` folders: images moved to another digit than predicted.
        "corrections": sum(int(source.get("corrections", 0)) for source in data.sources),
        "train_examples": int(len(data.y_train)),
        "skipped_files": data.skipped,
        "evaluation": {**data.evaluation, "accuracy": figures["accuracy"], "loss": figures["loss"], **profile(probs)},
        **figures,
        "history": rounded_history(history),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
