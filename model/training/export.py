"""The serving artifact: the seed CNN written as an ONNX graph, op for op, from the Keras weights.

No converter is involved: the architecture is fixed, so the graph is spelled out
here (Cast/Scale -> Conv -> Relu -> MaxPool -> Conv -> Relu -> MaxPool -> Flatten
-> Gemm -> Relu -> Gemm -> Softmax) and only the weights are copied. The graph
takes the uint8 (N, 28, 28) arrays that preprocessing makes, so serving needs
neither TensorFlow nor a float copy. An export is published only where it agrees
with Keras (:func:`check_agreement`): the same predictions, and every probability
within :data:`MAX_PROBABILITY_DIFF`, so that a confidence means what it says.

No int8 graph is published. :func:`to_int8` (static quantisation) is here to
measure against (``scripts/benchmark.py fidelity``) and to make a version with an
int8 artifact in tests: on the 10,000 MNIST test digits it gave 71 distinct
confidences and probabilities up to 0.077 off the float model; quantising only the
convolutions (per channel, any calibration tried), or only conv1's weights, still
left 35-100 digits beyond 0.005, and its results changed on CPUs without VNNI (u8 x s8
pairs saturate in 16 bits). The float graph is also the fastest here (BENCHMARKS.md).

``python -m model.training.export DIR MNIST`` writes ``DIR/model.onnx`` for the ``model.keras``
there, checks it on MNIST's test split, and records its sha256 in ``DIR/model.json``
(how the bundled model got it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from digitq.errors import ModelError
from model.registry import INT8_FILE, ONNX_FILE, ModelRef, read_version, sha256_bytes

#: Training images the int8 calibration saw (activation ranges), for :func:`to_int8`.
CALIBRATION_IMAGES = 2000

#: The agreement a serving artifact must reach with Keras on an evaluation set.
MIN_AGREEMENT = 0.999
MAX_ACCURACY_GAP = 0.0005
#: The largest difference from Keras allowed in any probability of any image (served confidences
#: match the float model within 0.005). The float graph stays within 2e-6.
MAX_PROBABILITY_DIFF = 0.005


def to_onnx(weights: list[np.ndarray]) -> bytes:
    """Serialized ONNX model for the seed CNN's eight weight arrays (Keras order)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shapes = [w.shape for w in weights]
    if shapes != [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (1600, 128), (128,), (128, 10), (10,)]:
        raise ModelError(f"weights {shapes} are not the seed CNN's; cannot export to ONNX")
    c1k, c1b, c2k, c2b, d1k, d1b, d2k, d2b = (np.asarray(w, np.float32) for w in weights)
    tensors = {
        "c1k": c1k.transpose(3, 2, 0, 1),  # Keras HWIO -> ONNX OIHW
        "c1b": c1b,
        "c2k": c2k.transpose(3, 2, 0, 1),
        "c2b": c2b,
        # Keras flattens (h, w, c), ONNX (c, h, w): permute the rows of the first dense kernel to match.
        "d1k": d1k.reshape(5, 5, 64, 128).transpose(2, 0, 1, 3).reshape(1600, 128),
        "d1b": d1b,
        "d2k": d2k,
        "d2b": d2b,
        "shape": np.array([-1, 1, 28, 28], np.int64),
        "scale": np.array(1 / 255, np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        node("Mul", ["xf", "scale"], ["xs"]),
        node("Reshape", ["xs", "shape"], ["x0"]),
        node("Conv", ["x0", "c1k", "c1b"], ["a1"], kernel_shape=[3, 3]),
        node("Relu", ["a1"], ["r1"]),
        node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["p1", "c2k", "c2b"], ["a2"], kernel_shape=[3, 3]),
        node("Relu", ["a2"], ["r2"]),
        node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Flatten", ["p2"], ["f"], axis=1),
        node("Gemm", ["f", "d1k", "d1b"], ["h"]),
        node("Relu", ["h"], ["hr"]),
        node("Gemm", ["hr", "d2k", "d2b"], ["logits"]),
        node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digitq_cnn",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 28, 28])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="digitq")
    model.ir_version = 8  # readable by every onnxruntime of the last years
    onnx.checker.check_model(model)
    return model.SerializeToString()


def to_int8(fp32: bytes, calibration: np.ndarray) -> bytes:
    """Static int8 quantisation of an exported model (QDQ, per-channel weights, MinMax-calibrated activations).

    Neither published nor served (see the module's docstring)."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(np.array_split(np.ascontiguousarray(calibration, np.uint8),
                                                max(1, len(calibration) // 100)))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(prefix="digitq-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(fp32)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return target.read_bytes()


def check_agreement(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    """Compare two runtimes' probabilities; a :class:`ModelError` when they disagree beyond the bounds
    (predictions, accuracy, or any single probability)."""
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(labels) else 1.0
    gap = abs(float((reference.argmax(1) == labels).mean()) - float((candidate.argmax(1) == labels).mean())) \
        if len(labels) else 0.0
    report = {"agreement": round(agreement, 6), "accuracy_gap": round(gap, 6), "examples": int(len(labels)),
              "max_probability_diff": float(np.abs(reference - candidate).max()) if len(labels) else 0.0}
    if agreement < MIN_AGREEMENT or gap > MAX_ACCURACY_GAP or report["max_probability_diff"] > MAX_PROBABILITY_DIFF:
        raise ModelError(f"the ONNX export disagrees with Keras ({report}; the bounds: agreement >= {MIN_AGREEMENT}, "
                         f"accuracy gap <= {MAX_ACCURACY_GAP}, every probability within {MAX_PROBABILITY_DIFF}); "
                         "nothing is published with it")
    return report


def confidence_fidelity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    """How faithful ``candidate``'s confidences are to the float ``reference`` (both (N, 10) probabilities).

    ``max_abs_diff`` is over every class of every image; ``distinct_confidences`` counts the top
    probabilities as a row carries them (6 decimals); ``below_0_999`` is what ``review --below 0.999`` takes."""
    confidence = np.round(candidate.max(1).astype(np.float64), 6)
    return {"examples": int(len(labels)), "max_abs_diff": float(np.abs(reference - candidate).max()),
            "distinct_confidences": int(len(np.unique(confidence))), "max_confidence": float(confidence.max()),
            "below_0_999": int((confidence < 0.999).sum()),
            "accuracy": float((candidate.argmax(1) == labels).mean()),
            "agreement": float((candidate.argmax(1) == reference.argmax(1)).mean())}


def main(argv: list[str] | None = None) -> None:
    """Export ``DIR/model.keras`` (verified) to ONNX, check it, record it in ``DIR/model.json``.

    A ``model.int8.onnx`` there is removed and dropped from the record: no int8 graph is published."""
    from digitq.disk.storage import atomic_write
    from model.dataset import load_dataset
    from model.extras import MissingExtra, require_train
    from model.serving.runtime import OnnxPredictor, load_keras, load_predictor

    try:
        require_train("python -m model.training.export")
    except MissingExtra as e:
        sys.exit(f"error: {e}")
    directory, mnist = (argv or sys.argv[1:])[:2]
    directory = Path(directory)
    ref: ModelRef = read_version(directory, directory.name)
    data = load_dataset(mnist)
    fp32 = to_onnx(load_keras(ref).get_weights())
    reference = load_predictor(ref, "keras").predict(data.x_test)
    meta = dict(ref.meta)
    meta["onnx_agreement"] = check_agreement(reference, OnnxPredictor(ref, fp32).predict(data.x_test), data.y_test)
    atomic_write(directory / ONNX_FILE, fp32)
    artifacts = {name: sha for name, sha in meta.get("artifacts", {}).items() if name != INT8_FILE}
    meta["artifacts"] = {**artifacts, ONNX_FILE: sha256_bytes(fp32)}
    meta.pop("int8_agreement", None)
    atomic_write(directory / "model.json", json.dumps(meta, indent=2) + "\n")
    (directory / INT8_FILE).unlink(missing_ok=True)  # after the record stops naming it
    print(json.dumps({k: meta[k] for k in ("onnx_agreement", "artifacts")}))


if __name__ == "__main__":
    main()
