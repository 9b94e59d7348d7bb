"""The seed CNN, layer for layer: Conv32-Pool-Conv64-Pool-Dense128-Dropout-Dense10."""

from __future__ import annotations

import keras
from keras import layers

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
PARAMS = 225_034


def build_model(learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
                *, compile: bool = True, use_ema: bool = False) -> keras.Model:
    """Build (and by default compile) the seed architecture; inputs are floats in [0, 1]."""
    model = keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name="image"),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="digitq_cnn",
    )
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate, use_ema=use_ema, ema_momentum=0.999),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model
