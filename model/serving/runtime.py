"""Serving: load a verified model once per process and predict batches with it.

Runtimes behind one :class:`Predictor` interface, chosen by ``DIGITQ_RUNTIME``:

- ``onnx`` (default): ONNX Runtime on the version's ``model.onnx``, the float graph
  (within 2e-6 of Keras in every probability on the 10,000 MNIST test digits). The same
  graph on every CPU: which CPU a worker has never changes which graph scores a file.
  No TensorFlow in the process: a third of the memory, a fraction of the start-up time.
- ``keras``: the ``.keras`` file through TensorFlow, loaded with ``safe_mode=True``.
  Also used for a version that has no ONNX artifact.
- ``onnx-int8``: accepted, and serves the float graph. No int8 graph of the seed CNN keeps
  every probability within :data:`model.training.export.MAX_PROBABILITY_DIFF` of the float
  model (BENCHMARKS.md, "Confidence fidelity"), and int8 results differ between CPUs with and
  without VNNI. A version with a ``model.int8.onnx`` keeps it (it still verifies) but is served float.

Every runtime applies the version's recorded calibration (``model.json``'s ``calibration``, a
temperature) through the one function :func:`model.serving.temperature.apply_temperature`, in float64,
so the runtimes' calibrated probabilities agree as their raw ones do; a version with none is served
as published (``T = 1``).

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

from digitq.errors import ConfigError, ModelError
from model.extras import require_train
from model.registry import MODEL_FILE, ONNX_FILE, ModelRef
from model.serving.temperature import apply_temperature, temperature_of

log = logging.getLogger("digitq.model")
RUNTIMES = ("onnx", "keras", "onnx-int8")
DEFAULT_RUNTIME = "onnx"
#: Runtime names accepted for another runtime, and the runtime they serve.
RETIRED = {"onnx-int8": "onnx"}
#: Images per runtime call: small enough to stay in the CPU's caches (ONNX Runtime, 1 thread:
#: 19.1k images/s at 32, 17.7k at 64, 16.6k at 128).
CHUNK = 32
_tf_configured = False


def runtime_name() -> str:
    """The runtime ``DIGITQ_RUNTIME`` asks for (default ``onnx``)."""
    name = (os.environ.get("DIGITQ_RUNTIME") or DEFAULT_RUNTIME).strip().lower()
    if name not in RUNTIMES:
        raise ConfigError(f"DIGITQ_RUNTIME={name!r} must be one of {', '.join(RUNTIMES)}")
    return name


def inference_threads() -> int:
    """Threads per process for inference (``DIGITQ_THREADS``; 0 lets the runtime decide)."""
    raw = os.environ.get("DIGITQ_THREADS") or os.environ.get("DIGITQ_TF_THREADS") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise ConfigError(f"DIGITQ_THREADS={raw!r} is not a whole number") from None


def configure_threads(threads: int | None = None) -> None:
    """Size TensorFlow's pools before first use, so ``concurrency x threads`` does not oversubscribe the cores."""
    global _tf_configured
    if _tf_configured:
        return
    threads = threads or inference_threads()
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        except RuntimeError:
            pass  # runtime already started in this process; keep its pools
    _tf_configured = True


def load_keras(ref: ModelRef):
    """The Keras model of ``ref``: checksum verified, then loaded with ``safe_mode=True`` (no arbitrary code)."""
    require_train(f"serving model {ref.version} with Keras (DIGITQ_RUNTIME=keras, or a version without "
                  f"{ONNX_FILE})", ("tensorflow", "keras"), ModelError)
    configure_threads()
    data = ref.read_verified()
    # Load the bytes we verified, not the path again: no window to swap the file.
    from keras.src.saving import saving_lib

    try:
        return saving_lib.load_model(io.BytesIO(data), compile=False, safe_mode=True)
    except Exception as e:
        raise ModelError(f"cannot load model {ref.version} from {ref.path}: {e}") from e


class Predictor:
    """A loaded model: ``predict`` maps uint8 images (N, 28, 28) to class probabilities (N, 10)."""

    runtime = "?"
    chunk = CHUNK
    #: The artifact whose bytes compute the probabilities (a file name of the version).
    artifact = MODEL_FILE

    def __init__(self, ref: ModelRef):
        self.ref = ref
        #: The version's calibration (1.0: none recorded); read once, at load.
        self.temperature = temperature_of(ref.meta)

    @property
    def artifact_sha256(self) -> str | None:
        """The recorded sha256 of :attr:`artifact` (None for an unrecorded candidate): with the image's
        bytes, what a row's probabilities follow from."""
        return self.ref.artifacts().get(self.artifact)

    @property
    def version(self) -> str:
        return self.ref.version

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: what a row's confidence is."""
        return apply_temperature(self.predict_raw(images), self.temperature)

    def predict_raw(self, images: np.ndarray) -> np.ndarray:
        """The artifact's own probabilities, before calibration (what a temperature is fitted on)."""
        if len(images) == 0:
            return np.zeros((0, 10), np.float32)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return np.concatenate([self._run(images[i : i + self.chunk]) for i in range(0, len(images), self.chunk)])

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class KerasPredictor(Predictor):
    """TensorFlow through a compiled ``tf.function``."""

    runtime = "keras"

    def __init__(self, ref: ModelRef, keras_model):
        import tensorflow as tf

        super().__init__(ref)
        self.model = keras_model
        self._fn = tf.function(
            lambda x: keras_model(x, training=False),
            input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)],
            reduce_retracing=True,
        )

    #: TensorFlow's kernels prefer big calls; 1,000 images bound the float copy (3 MB).
    chunk = 1000

    def _run(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(images.astype(np.float32)[..., None] / 255.0))


class OnnxPredictor(Predictor):
    """ONNX Runtime on an exported graph (uint8 in, probabilities out)."""

    runtime = "onnx"
    artifact = ONNX_FILE

    def __init__(self, ref: ModelRef, data: bytes, threads: int = 0):
        import onnxruntime as ort

        super().__init__(ref)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads must not spin: worker processes share the cores with each other.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"cannot load the ONNX model of version {ref.version}: {e}") from e

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"image": images})[0]


def load_predictor(ref: ModelRef, runtime: str | None = None) -> Predictor:
    """Verify, then load ``ref`` in ``runtime`` (default ``DIGITQ_RUNTIME``).

    Nothing about the CPU enters the choice: every worker scores a file with the same graph (its rows agree to
    within one unit of the 6th decimal across instruction sets, BENCHMARKS.md)."""
    runtime = runtime or runtime_name()
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} must be one of {', '.join(RUNTIMES)}")
    if runtime in RETIRED:
        _note_retired(runtime)
        runtime = RETIRED[runtime]
    if runtime == "onnx":
        if ONNX_FILE in ref.artifacts():
            return OnnxPredictor(ref, ref.read_verified(ONNX_FILE), inference_threads())
        log.warning("model %s has no %s; serving it with Keras (DIGITQ_RUNTIME=keras)", ref.version, ONNX_FILE)
    return KerasPredictor(ref, load_keras(ref))


_noted: set[str] = set()


def _note_retired(runtime: str) -> None:
    # Once per process: a worker loads many versions, the setting is the same for all.
    if runtime not in _noted:
        _noted.add(runtime)
        log.warning("DIGITQ_RUNTIME=%s now serves the float graph (%s): no int8 graph keeps every probability "
                    "within 0.005 of the float model, and int8 rows differ between CPUs; set DIGITQ_RUNTIME=%s "
                    "to silence this", runtime, RETIRED[runtime], RETIRED[runtime])


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
            log.info("loaded model %s (%s, sha256 %s...) in %.2fs, pid %d", ref.version, predictor.runtime,
                     ref.sha256[:12], time.monotonic() - started, os.getpid())
            self._items[key] = predictor
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return predictor
