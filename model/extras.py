"""The ``train`` extra: TensorFlow, Keras and the ONNX exporter, installed only where training runs.

Prediction workers, the ``digitq`` CLI and beat run without them (``pip install digitq``, the slim
image). Whatever needs them calls :func:`require_train` first, so a missing package is one line of
advice naming what to install, never a traceback from deep inside a training.
"""

from __future__ import annotations

from importlib.util import find_spec

from digitq.errors import DigitqError

#: The import names of the ``train`` extra (``tensorflow-cpu`` installs ``tensorflow``).
TRAIN_PACKAGES = ("tensorflow", "keras", "onnx")
INSTALL_TRAIN = "pip install 'digitq[train]'"


class MissingExtra(DigitqError):
    """A training-only package is not installed here."""


def missing(packages: tuple[str, ...] = TRAIN_PACKAGES) -> list[str]:
    """The packages of ``packages`` that cannot be imported here (found without importing them)."""
    return [name for name in packages if find_spec(name) is None]


def require_train(what: str, packages: tuple[str, ...] = TRAIN_PACKAGES,
                  error: type[DigitqError] = MissingExtra) -> None:
    """Raise ``error`` saying to install ``digitq[train]`` when any of ``packages`` is missing."""
    absent = missing(packages)
    if absent:
        raise error(f"{what} needs {', '.join(absent)}, which this install lacks (digitq without its `train` extra, "
                    f"or the slim worker image): install digitq[train] ({INSTALL_TRAIN}), or use the full image "
                    f"(docker build --target full)")
