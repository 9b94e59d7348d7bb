"""Training data from several sources: MNIST plus labelled folders, and the evaluation set they imply.

The evaluation set is recorded, so the candidate and production are scored on
exactly the same images: MNIST's test split when MNIST is a source, plus a
seeded hold-out share of every labelled folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitq.errors import DataError
from model.dataset import is_mnist_source, load_dataset, read_labelled_folder


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of images and labels: the same data gives the same fingerprint, wherever it lives."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def holdout_count(n: int, holdout: float) -> int:
    """How many of ``n`` images to hold out: a share (< 1) or a count (>= 1), leaving one to train on."""
    if n < 2 or holdout <= 0:
        return 0
    wanted = round(n * holdout) if holdout < 1 else int(holdout)
    return min(max(wanted, 1), n - 1)


def seeded_split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indexes of the :func:`holdout_count` images held out of ``range(n)``, and of the rest: a permutation
    seeded with ``seed``, so the same arguments always split the same way."""
    order = np.random.default_rng(seed).permutation(n)
    held = holdout_count(n, holdout)
    return order[:held], order[held:]


@dataclass
class TrainingData:
    """Arrays to train and evaluate on, and a description of each source for the metadata."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    sources: list[dict] = field(default_factory=list)
    eval_parts: list[str] = field(default_factory=list)
    #: The calibration split: training examples held out of training, that a temperature is fitted on
    #: (:mod:`model.quality.calibration`); empty when no source gives one.
    x_cal: np.ndarray = field(default_factory=lambda: np.zeros((0, 28, 28), np.uint8))
    y_cal: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    cal_parts: list[str] = field(default_factory=list)

    @property
    def evaluation(self) -> dict:
        """What the evaluation set is, for the version's metadata."""
        return {"description": " + ".join(self.eval_parts), "examples": int(len(self.y_eval)),
                "fingerprint": fingerprint(self.x_eval, self.y_eval)}

    @property
    def skipped(self) -> int:
        return sum(s.get("undecodable", 0) for s in self.sources)


#: MNIST training digits held out (seeded) as the calibration split: 3.3% of the 60,000, enough to fit one
#: number. Only MNIST gives one: a labelled folder is small and a review folder's corrections must be learnt.
CALIBRATION_MNIST = 2000


#: A `digitq review` folder is repeated in training until it makes about this share of the examples:
#: a few dozen corrections among 60,000 MNIST digits would otherwise be seen too rarely to be learnt.
REVIEW_SHARE = 0.05
MAX_REPEAT = 50


def _weigh_reviews(xs: list[np.ndarray], ys: list[np.ndarray], sources: list[dict]) -> None:
    """Repeat the training images of review folders (those with corrections or confirmations), in place."""
    total = sum(len(y) for y in ys)
    for i, source in enumerate(sources):
        reviewed = source.get("corrections", 0) + source.get("confirmed", 0)
        n = len(ys[i])
        if not reviewed or not n:
            continue
        repeat = int(min(MAX_REPEAT, max(1, round(REVIEW_SHARE * (total - n) / n))))
        if repeat > 1:
            xs[i], ys[i] = np.repeat(xs[i], repeat, axis=0), np.repeat(ys[i], repeat)
        source["repeated"] = repeat


def load_training_data(paths: list[str], *, holdout: float = 0.2, seed: int = 0,
                       calibration: int = CALIBRATION_MNIST) -> TrainingData:
    """Combine every source; a missing or unusable source is a :class:`DataError` naming it.

    ``calibration`` training digits of each MNIST source (a split seeded with ``seed``) are held out of
    training as the calibration split."""
    if not paths:
        raise DataError("no training data: give --data (an MNIST folder or a labelled DIR/<digit>/ folder)")
    xs, ys, xe, ye, sources, parts = [], [], [], [], [], []
    xc, yc, cal_parts = [], [], []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DataError(f"training source {path} does not exist")
        if is_mnist_source(path):
            data = load_dataset(path)
            cal, train = (np.sort(part) for part in seeded_split(len(data.y_train), calibration, seed))
            held = len(cal)
            xs.append(data.x_train[train])
            ys.append(data.y_train[train])
            xc.append(data.x_train[cal])
            yc.append(data.y_train[cal])
            if held:
                cal_parts.append(f"seeded split (seed {seed}) of {held} MNIST training digits of {path}")
            xe.append(data.x_test)
            ye.append(data.y_test)
            parts.append(f"MNIST test split of {path} ({len(data.y_test)})")
            sources.append({"path": str(path), "kind": "mnist", "train_images": int(len(train)),
                            "eval_images": int(len(data.y_test)), "calibration_images": int(held),
                            "fingerprint": fingerprint(np.concatenate([data.x_train, data.x_test]),
                                                       np.concatenate([data.y_train, data.y_test]))})
            continue
        folder = read_labelled_folder(path)
        test, train = seeded_split(len(folder.y), holdout, seed)
        held = len(test)
        xs.append(folder.x[train])
        ys.append(folder.y[train])
        xe.append(folder.x[test])
        ye.append(folder.y[test])
        if held:
            parts.append(f"seeded hold-out (seed {seed}) of {path} ({held})")
        sources.append({"path": str(path), "kind": "folder", "train_images": int(len(train)),
                        "eval_images": int(held), "undecodable": len(folder.undecodable),
                        "undecodable_examples": folder.undecodable[:5], "blank": folder.blank,
                        "unlabelled": folder.unlabelled,
                        "discarded": folder.discarded, "corrections": folder.corrections,
                        "confirmed": folder.confirmed, "fingerprint": fingerprint(folder.x, folder.y)})
    _weigh_reviews(xs, ys, sources)
    data = TrainingData(np.concatenate(xs), np.concatenate(ys), np.concatenate(xe), np.concatenate(ye),
                        sources, parts)
    if xc:
        data.x_cal, data.y_cal, data.cal_parts = np.concatenate(xc), np.concatenate(yc), cal_parts
    if not len(data.y_eval):
        raise DataError("nothing to evaluate on: add MNIST as a source, or give each labelled folder at least "
                        "two images (a share is held out with --holdout)")
    return data
