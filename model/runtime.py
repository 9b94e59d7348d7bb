"""Serving: load a verified model once per process and predict batches with it.

:class:`ModelCache` is keyed by version, so a worker can serve jobs pinned to
different versions side by side and load a newly published one without restart.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import OrderedDict

import numpy as np

from digitq.errors import ModelError
from model.registry import ModelRef

log = logging.getLogger("digitq.model")
_tf_configured = False


def configure_threads(threads: int | None = None) -> None:
    """Size TensorFlow's pools before first use (``DIGITQ_TF_THREADS``), so
    ``concurrency x threads`` does not oversubscribe the cores."""
    global _tf_configured
    if _tf_configured:
        return
    threads = threads or int(os.environ.get("DIGITQ_TF_THREADS", "0") or 0)
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        except RuntimeError:
            pass  # runtime already started in this process; keep its pools
    _tf_configured = True


def verify(ref: ModelRef) -> bytes:
    """The model file's bytes, after checking them against the recorded sha256."""
    return ref.read_verified()


class Predictor:
    """A loaded model plus a compiled inference function."""

    def __init__(self, ref: ModelRef, keras_model):
        import tensorflow as tf

        self.ref = ref
        self.model = keras_model
        self._fn = tf.function(
            lambda x: keras_model(x, training=False),
            input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)],
            reduce_retracing=True,
        )

    @property
    def version(self) -> str:
        return self.ref.version

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) for uint8 images (N, 28, 28)."""
        if len(images) == 0:
            return np.zeros((0, 10), np.float32)
        x = images.astype(np.float32)[..., None] / 255.0
        return np.asarray(self._fn(x))


def load_predictor(ref: ModelRef) -> Predictor:
    """Verify the checksum, then load with ``safe_mode=True`` (no arbitrary code)."""
    configure_threads()
    data = verify(ref)
    # Load the bytes we verified, not the path again: no window to swap the file.
    from keras.src.saving import saving_lib

    try:
        model = saving_lib.load_model(io.BytesIO(data), compile=False, safe_mode=True)
    except Exception as e:
        raise ModelError(f"cannot load model {ref.version} from {ref.path}: {e}") from e
    return Predictor(ref, model)


class ModelCache:
    """Loaded predictors by version; the least recently used is dropped past ``size``."""

    def __init__(self, size: int = 3):
        self.size = size
        self._items: OrderedDict[tuple[str, str], Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: ModelRef) -> Predictor:
        """The predictor for ``ref``, loading it on first use."""
        key = (ref.version, ref.sha256)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            started = time.monotonic()
            predictor = load_predictor(ref)
            log.info("loaded model %s (sha256 %s...) in %.1fs, pid %d", ref.version, ref.sha256[:12],
                     time.monotonic() - started, os.getpid())
            self._items[key] = predictor
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return predictor
