"""Serving: load a verified model once per process and predict batches with it.

Runtimes behind one :class:`Predictor` interface, chosen by ``DIGITQ_RUNTIME``:

- ``onnx-int8`` (default): ONNX Runtime on the version's ``model.int8.onnx``, a
  static int8 quantisation (1.5x the fp32 speed on CPUs with VNNI), published
  only where it agrees with Keras (>= 99.9% of predictions, accuracy within 0.05
  points); a version without one, or a CPU without VNNI (:func:`int8_exact_here`),
  is served by ``onnx``.
- ``onnx``: ONNX Runtime on ``model.onnx``, the float graph (identical predictions
  to Keras, within 1e-6 in probability). No TensorFlow in the process for either:
  a third of the memory, a fraction of the start-up time.
- ``keras``: the ``.keras`` file through TensorFlow, loaded with ``safe_mode=True``.
  Also used for a version that has no ONNX artifact (published by an older digitq).

:class:`ModelCache` is keyed by version, so a worker can serve jobs pinned to
different versions side by side and load a newly published one without restart.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import platform
import threading
import time
from collections import OrderedDict

import numpy as np

from digitq.errors import ConfigError, ModelError
from model.registry import INT8_FILE, ONNX_FILE, ModelRef

log = logging.getLogger("digitq.model")
RUNTIMES = ("onnx-int8", "onnx", "keras")
#: Images per runtime call: small enough to stay in the CPU's caches (ONNX Runtime, 1 thread:
#: 19.1k images/s at 32, 17.7k at 64, 16.6k at 128).
CHUNK = 32
_tf_configured = False


def runtime_name() -> str:
    """The runtime ``DIGITQ_RUNTIME`` asks for (default ``onnx-int8``)."""
    name = (os.environ.get("DIGITQ_RUNTIME") or "onnx-int8").strip().lower()
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


def verify(ref: ModelRef) -> bytes:
    """The model file's bytes, after checking them against the recorded sha256."""
    return ref.read_verified()


def load_keras(ref: ModelRef):
    """The Keras model of ``ref``: checksum verified, then loaded with ``safe_mode=True`` (no arbitrary code)."""
    configure_threads()
    data = verify(ref)
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

    def __init__(self, ref: ModelRef):
        self.ref = ref

    @property
    def version(self) -> str:
        return self.ref.version

    def predict(self, images: np.ndarray) -> np.ndarray:
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

    def __init__(self, ref: ModelRef, data: bytes, threads: int = 0, runtime: str = "onnx"):
        import onnxruntime as ort

        super().__init__(ref)
        self.runtime = runtime
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
    """Verify, then load ``ref`` in ``runtime`` (default ``DIGITQ_RUNTIME``)."""
    runtime = runtime or runtime_name()
    artifacts = ref.artifacts()
    if runtime == "onnx-int8" and INT8_FILE in artifacts:
        if int8_exact_here():
            return OnnxPredictor(ref, ref.read_verified(INT8_FILE), inference_threads(), "onnx-int8")
        log.info("model %s: this CPU has no VNNI, where int8 is neither exact nor faster; serving the float graph",
                 ref.version)
    if runtime in ("onnx-int8", "onnx"):
        if ONNX_FILE in artifacts:
            return OnnxPredictor(ref, ref.read_verified(ONNX_FILE), inference_threads())
        log.warning("model %s has no %s; serving it with Keras (DIGITQ_RUNTIME=keras)", ref.version, ONNX_FILE)
    return KerasPredictor(ref, load_keras(ref))


@functools.cache
def int8_exact_here() -> bool:
    """Whether this CPU computes the int8 graph exactly as it was checked at publish time.

    x86 CPUs without VNNI (AVX2 only, AVX-512 before Cascade Lake) multiply uint8 by int8
    in pairs summed to 16 bits, which 8-bit weights saturate: on an AVX2 AMD EPYC,
    bundled-1's int8 graph agreed with Keras on only 99.79% of the test digits (99.35%
    accuracy instead of 99.40%), and ran no faster than the float graph. With VNNI the
    products add up in 32 bits. Other architectures are taken as exact."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False  # cannot tell: the float graph is the safe choice
    return not flags.isdisjoint({"avx512_vnni", "avx_vnni"})


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
