"""Training recipe: the seed CNN with light augmentation, warm-up + cosine LR and weight EMA.

:func:`train` (``python -m model.training --data DIR --out DIR``) writes ``model.keras`` and
``model.json`` (metrics, recipe, sha256). Settings are chosen on a hold-out
part of the training split (``--holdout``), never on the test split.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model.dataset import Dataset
from model.quality.metrics import score
from model.quality.robustness import HELD_OUT_FAMILIES
from model.registry import sha256_file
from model.training.variants import make_pool

#: Weight EMA (momentum 0.999) averages over ~1,000 steps; a shorter run would end near its random start.
EMA_MIN_STEPS = 2000
ARCHITECTURE = "seed-cnn: Conv32-Pool-Conv64-Pool-Dense128-Dropout0.2-Dense10"


@dataclass(frozen=True)
class Recipe:
    """The knobs of a training run."""

    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_epochs: int = 1
    augment: bool = True
    rotation_deg: float = 15.0
    zoom: float = 0.1
    shift: float = 0.1
    clean_epochs: int = 3  # the last epochs see unaugmented images (no interpolation blur)
    #: Rendered variants of the training digits added to them, as a share of their number (model/training/variants.py):
    #: thicker and thinner pens, rotation, slant, low resolution, crossed 7s, 1s with a flag and a base,
    #: grey and bright paper, shading, ruled lines, stripes and boxes, low resolution enlarged onto a page.
    variants: float = 0.8
    ema: bool = True
    holdout: int = 0
    seed: int = 0
    limit: int = 0  # train on the first N examples only (tests, smoke runs)


def evaluate_arrays(model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on uint8 images ``x``."""
    return score(predict_arrays(model, x, batch_size), y)


def predict_arrays(model, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities for uint8 (N, 28, 28) images, batched, without ``model.predict`` overhead."""
    out = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size].astype(np.float32)[..., None] / 255.0
        out.append(np.asarray(model(chunk, training=False)))
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


def _augmenter(recipe: Recipe):
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomRotation(recipe.rotation_deg / 360.0, fill_mode="constant", seed=recipe.seed),
            layers.RandomZoom(recipe.zoom, fill_mode="constant", seed=recipe.seed + 1),
            layers.RandomTranslation(recipe.shift, recipe.shift, fill_mode="constant", seed=recipe.seed + 2),
        ],
        name="augment",
    )


def fit(x_train: np.ndarray, y_train: np.ndarray, recipe: Recipe, *, validation=None, callbacks=(),
        initial_weights: list | None = None, verbose: int = 0):
    """Fit the seed CNN with ``recipe``: augmented epochs, then the clean tail.

    ``validation`` is ``(x, y)`` uint8 images and labels (monitoring only);
    ``initial_weights`` fine-tunes from an existing model instead of a random start.
    Returns ``(model, history, seconds, ema_used)``; the model is uncompiled and ready to save.
    """
    import keras
    import tensorflow as tf

    from model.training.architecture import build_model  # Keras at import: only where a model is fitted

    keras.utils.set_random_seed(recipe.seed)
    if recipe.variants > 0:
        extra_x, extra_y = make_pool(x_train, y_train, round(len(y_train) * recipe.variants), recipe.seed)
        x_train, y_train = np.concatenate([x_train, extra_x]), np.concatenate([y_train, extra_y])
    steps = math.ceil(len(x_train) / recipe.batch_size)
    warmup = min(recipe.warmup_epochs * steps, steps * recipe.epochs - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.learning_rate / 10 if warmup else recipe.learning_rate,
        decay_steps=max(1, steps * recipe.epochs - warmup),
        warmup_target=recipe.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    ema = recipe.ema and steps * recipe.epochs >= EMA_MIN_STEPS
    model = build_model(schedule, use_ema=ema)
    if initial_weights is not None:
        model.set_weights(initial_weights)

    ds = tf.data.Dataset.from_tensor_slices((x_train[..., None], y_train.astype(np.int32)))
    ds = ds.shuffle(len(x_train), seed=recipe.seed, reshuffle_each_iteration=True).batch(recipe.batch_size)
    clean = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE)
    augmented = None
    if recipe.augment:
        aug = _augmenter(recipe)
        augmented = clean.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    clean_epochs = recipe.epochs if augmented is None else min(recipe.clean_epochs, recipe.epochs)
    val = None
    if validation is not None and len(validation[0]):
        val = (validation[0][..., None].astype(np.float32) / 255.0, validation[1].astype(np.int32))
    callbacks = list(callbacks)
    if ema and val is not None:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))

    started = time.monotonic()
    history: dict[str, list] = {}
    # Augmented epochs first, then the tail of the LR schedule on clean images.
    first = 0
    for phase, last in ((augmented, recipe.epochs - clean_epochs), (clean, recipe.epochs)):
        if phase is None or last <= first:
            continue
        fitted = model.fit(phase.prefetch(tf.data.AUTOTUNE), initial_epoch=first, epochs=last, validation_data=val,
                           callbacks=callbacks, verbose=verbose, shuffle=False)
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(values)
        first = last
    seconds = time.monotonic() - started

    # A fresh, uncompiled copy: no optimizer state, a quarter of the size when saved.
    final = build_model(compile=False)
    final.set_weights(model.get_weights())
    return final, history, seconds, ema


def train(data: Dataset, recipe: Recipe, out_dir: str | Path, *, verbose: int = 2, command: str = "",
          version: str | None = None) -> dict:
    """Train the seed CNN on ``data`` with ``recipe``; write model.keras + model.json into ``out_dir``."""
    import keras
    import tensorflow as tf

    x_train, y_train = data.x_train, data.y_train
    if recipe.limit:
        x_train, y_train = x_train[: recipe.limit], y_train[: recipe.limit]
    x_val = y_val = None
    if recipe.holdout:
        if recipe.holdout >= len(x_train):
            raise ValueError(f"holdout {recipe.holdout} leaves no training data (have {len(x_train)})")
        x_train, x_val = x_train[: -recipe.holdout], x_train[-recipe.holdout :]
        y_train, y_val = y_train[: -recipe.holdout], y_train[-recipe.holdout :]
    final, history, seconds, ema = fit(x_train, y_train, recipe, verbose=verbose,
                                       validation=None if x_val is None else (x_val, y_val))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.keras"
    final.save(model_path)

    meta: dict = {
        **({"version": version} if version else {}),
        "architecture": ARCHITECTURE,
        # Families of the robustness suite no renderer of the recipe draws: the suite's honest measure.
        "held_out_families": list(HELD_OUT_FAMILIES),
        "params": int(final.count_params()),
        "epochs": recipe.epochs,
        "recipe": asdict(recipe),
        "ema_used": ema,
        "data_source": data.source,
        "train_examples": int(len(x_train)),
        "training_seconds": round(seconds, 1),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "history": rounded_history(history),
    }
    if x_val is not None:
        meta["holdout_accuracy"], meta["holdout_loss"] = evaluate_arrays(final, x_val, y_val)
    if len(data.x_test):
        meta["test_accuracy"], meta["test_loss"] = evaluate_arrays(final, data.x_test, data.y_test)
    meta["sha256"] = sha256_file(model_path)
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def rounded_history(history: dict[str, list]) -> dict[str, list[float]]:
    """Keras' per-epoch history as plain, rounded floats (JSON)."""
    return {k: [round(float(v), 5) for v in vals] for k, vals in history.items()}
