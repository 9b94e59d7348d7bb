"""MNIST loaders: IDX files, a Keras-style ``mnist.npz``, or a labelled image folder.

All loaders return uint8 arrays of shape (N, 28, 28), white digit on black,
and uint8 labels; no TensorFlow needed except for the Keras download fallback.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitq.disk.files import read_file
from digitq.errors import DataError

_IDX_NAMES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8}


@dataclass(frozen=True)
class Dataset:
    """A train and a test split; ``source`` says where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


#: Largest IDX file read (MNIST's training images are 47 MB unpacked, 9.9 MB gzipped).
MAX_IDX_BYTES = 1 << 30


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its declared shape."""
    path = Path(path)
    try:
        raw = read_file(os.fsencode(path), MAX_IDX_BYTES + 1)  # a regular file only: a FIFO would block
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype not in _IDX_DTYPES:
        raise DataError(f"{path}: IDX element type 0x{dtype:02x} is not supported (only unsigned bytes)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - header != count:
        raise DataError(f"{path} holds {len(raw) - header} data bytes, its header promises {count}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, stem_options: tuple[str, ...]) -> Path | None:
    for stem in stem_options:
        for name in (stem + ".gz", stem):
            if (directory / name).is_file():
                return directory / name
    return None


def load_idx_dir(directory: str | os.PathLike[str]) -> Dataset:
    """Load the four standard MNIST IDX files from a directory."""
    directory = Path(directory)
    arrays = {}
    for key, stems in _IDX_NAMES.items():
        found = _find_idx(directory, stems)
        if found is None:
            raise DataError(f"{directory} has no {stems[0]}[.gz]; expected the four MNIST IDX files there")
        arrays[key] = read_idx(found)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{directory}: {split} images {x.shape} do not match labels {y.shape}")
    return Dataset(**arrays, source=str(directory))


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    """Load a Keras-style ``mnist.npz`` (x_train, y_train, x_test, y_test)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise DataError(f"{path} lacks array {e}; an MNIST npz has x_train, y_train, x_test, y_test") from e
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as an npz file: {e}") from e
    for key in ("x_train", "x_test"):
        if arrays[key].ndim != 3 or arrays[key].shape[1:] != (28, 28):
            raise DataError(f"{path}: {key} has shape {arrays[key].shape}, expected (N, 28, 28)")
    return Dataset(**{k: v.astype(np.uint8) for k, v in arrays.items()}, source=str(path))


#: A labelled folder's sub-folder for images a reviewer rejected; never trained on.
DISCARD = "discard"
#: The only names of label folders: ``str.isdigit`` would also take ``³`` or ``٣``.
DIGIT_FOLDERS = tuple(str(d) for d in range(10))
#: Largest image file read for training (a labelled folder holds digits, not pages).
MAX_IMAGE_BYTES = 64 << 20
#: A decoded image with fewer pixels than this above :data:`_INK_LEVEL` holds no digit (a blank page, a
#: 1x1 file); the sparsest of MNIST's 70,000 digits has 34.
MIN_INK_PIXELS = 5
_INK_LEVEL = 64


def has_ink(image: np.ndarray) -> bool:
    """Whether a decoded 28x28 image has enough ink to be a digit worth learning from."""
    return int(np.count_nonzero(image > _INK_LEVEL)) >= MIN_INK_PIXELS


@dataclass
class LabelledFolder:
    """The images of ``DIR/<digit>/...``, and what was passed over and why."""

    x: np.ndarray
    y: np.ndarray
    undecodable: list[str]
    unlabelled: int
    discarded: int
    #: Images that decoded to no digit (blank, a single pixel): skipped, never taught as a label.
    blank: int = 0
    #: From a `digitq review` folder: images moved to another digit (corrections) or left where exported.
    corrections: int = 0
    confirmed: int = 0


def read_labelled_folder(directory: str | os.PathLike[str]) -> LabelledFolder:
    """Read ``DIR/<digit>/<image>`` with the same preprocessing as inference.

    Files that do not decode are listed in ``undecodable`` (the caller decides),
    images with no ink are counted in ``blank`` and skipped; a sub-folder that is
    not a digit 0-9 (or ``discard``) is an error, since a label cannot be guessed
    from it.
    """
    from digitq.disk.paths import is_image_name
    from model.serving.preprocess import decode_image

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} does not exist or is not a folder; expected DIR/<digit>/<image>")
    bad = sorted(e.name for e in directory.iterdir()
                 if e.is_dir() and not e.name.startswith(".") and e.name != DISCARD and e.name not in DIGIT_FOLDERS)
    if bad:
        raise DataError(f"{directory}: sub-folder(s) {', '.join(repr(b) for b in bad[:5])} are not digits 0-9; "
                        "a labelled folder is DIR/<0-9>/<image> (rename or move them)")
    images, labels, undecodable, blank = [], [], [], 0
    exported = _review_labels(directory)
    corrections = confirmed = 0
    unlabelled = sum(1 for e in directory.iterdir() if e.is_file() and is_image_name(e.name))
    discarded = sum(1 for e in (directory / DISCARD).rglob("*") if e.is_file()) if (directory / DISCARD).is_dir() else 0
    for digit in range(10):
        sub = directory / str(digit)
        if not sub.is_dir():
            continue
        for entry in sorted(sub.rglob("*")):
            if not entry.is_file() or entry.name.startswith(".") or not is_image_name(entry.name):
                continue
            try:  # read_file: a FIFO or device swapped in after the listing is refused, never waited on
                data = read_file(os.fsencode(entry), MAX_IMAGE_BYTES + 1)
                if len(data) > MAX_IMAGE_BYTES:
                    raise DataError(f"over {MAX_IMAGE_BYTES >> 20} MiB")
                image = decode_image(data)
            except Exception as e:  # any decoder failure costs the file, never the training
                undecodable.append(f"{entry}: {e}")
                continue
            if not has_ink(image):
                blank += 1
                continue
            images.append(image)
            labels.append(digit)
            if entry.name in exported:
                confirmed += exported[entry.name] == str(digit)
                corrections += exported[entry.name] != str(digit)
    if not images:
        if blank:
            raise DataError(f"{directory}: its {blank} decodable image(s) are blank (no digit in them)")
        if undecodable:
            raise DataError(f"{directory}: none of its {len(undecodable)} image file(s) could be decoded "
                            f"(first: {undecodable[0]})")
        raise DataError(f"{directory} has no images in digit folders 0..9 (expected DIR/<digit>/<image>)")
    return LabelledFolder(np.stack(images), np.asarray(labels, dtype=np.uint8), undecodable, unlabelled, discarded,
                          blank=blank, corrections=corrections, confirmed=confirmed)


def _review_labels(directory: Path) -> dict[str, str | None]:
    """File name -> the digit folder `digitq review` put it in (None: unlabelled), if it made this folder."""
    from digitq.disk.paths import REVIEW_MANIFEST

    try:
        manifest = json.loads(read_file(os.fsencode(directory / REVIEW_MANIFEST), 256 << 20).decode("utf-8"))
        return {f["file"]: f.get("exported_to") for f in manifest.get("files", [])}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{directory / REVIEW_MANIFEST} is unreadable ({e}); restore it or remove it") from e


def load_image_folder(directory: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load ``DIR/<digit>/<image>``; a file that does not decode is an error here
    (an evaluation set should not silently shrink)."""
    folder = read_labelled_folder(directory)
    if folder.undecodable:
        raise DataError(folder.undecodable[0])
    return folder.x, folder.y


def is_mnist_source(path: Path) -> bool:
    """Whether ``path`` holds MNIST itself (IDX files or an npz), not a labelled folder."""
    if path.is_file():
        return True
    return (_find_idx(path, _IDX_NAMES["x_train"]) is not None or _find_idx(path, _IDX_NAMES["x_test"]) is not None
            or (path / "mnist.npz").is_file())


def load_keras_download() -> Dataset:
    """Keras' own MNIST download; needs the internet (and Keras: the `train` extra)."""
    from model.extras import missing

    if missing(("keras",)):
        raise DataError("no MNIST source given: point DIGITQ_MNIST or --data at a directory with the four MNIST "
                        "IDX files or at an mnist.npz (Keras' download needs digitq[train]: "
                        "pip install 'digitq[train]')")
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as e:
        raise DataError(
            "no MNIST source given and Keras could not download MNIST "
            f"({type(e).__name__}: {e}). Point DIGITQ_MNIST or --data at a directory "
            "with the four MNIST IDX files or at an mnist.npz."
        ) from e
    return Dataset(x_train, y_train, x_test, y_test, source="keras.datasets.mnist")


def load_dataset(source: str | os.PathLike[str] | None) -> Dataset:
    """Load MNIST from ``source`` (IDX dir, npz file or digit folder); None downloads."""
    if source is None or str(source) == "":
        return load_keras_download()
    path = Path(source).expanduser()
    if path.is_file():
        return load_npz(path)
    if not path.is_dir():
        raise DataError(f"MNIST source {path} does not exist; give an IDX directory, an mnist.npz or a digit folder")
    if _find_idx(path, _IDX_NAMES["x_train"]) is not None or _find_idx(path, _IDX_NAMES["x_test"]) is not None:
        return load_idx_dir(path)
    if (path / "mnist.npz").is_file():
        return load_npz(path / "mnist.npz")
    # A labelled folder is a single split: serve it as both, callers pick.
    x, y = load_image_folder(path)
    return Dataset(x, y, x, y, source=str(path))


def write_image_folder(directory: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """Write arrays as ``DIR/<label>/<n>.png`` (the layout :func:`load_image_folder` reads)."""
    from PIL import Image

    directory = Path(directory)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        sub = directory / str(int(label))
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:05d}.png"
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
