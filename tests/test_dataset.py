"""MNIST loaders on small files the tests make, and on the real MNIST files."""

import gzip
import os
import struct

import numpy as np
import pytest
from PIL import Image

from digitq.errors import DataError
from model.dataset import load_dataset, load_image_folder, load_npz, read_idx, read_labelled_folder

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_dir(directory, n_train=7, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir(tmp_path, gz):
    arrays = _write_idx_dir(tmp_path, gz=gz)
    data = load_dataset(tmp_path)
    assert data.x_train.shape == (7, 28, 28) and data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(data.x_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    arr = np.zeros((2, 28, 28), np.uint8)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(_idx_bytes(arr)[:-10])
    with pytest.raises(DataError, match="header promises"):
        read_idx(short)


def test_npz(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), "y_train": np.arange(4),
              "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), "y_test": np.arange(3)}
    np.savez(tmp_path / "mnist.npz", **arrays)
    for source in (tmp_path / "mnist.npz", tmp_path):
        data = load_dataset(source)
        np.testing.assert_array_equal(data.x_test, arrays["x_test"])
        np.testing.assert_array_equal(data.y_train, arrays["y_train"])
    np.savez(tmp_path / "partial.npz", x_train=arrays["x_train"])
    with pytest.raises(DataError, match="lacks array"):
        load_npz(tmp_path / "partial.npz")


def test_image_folder_uses_inference_preprocessing(tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    (tmp_path / "1").mkdir()
    (tmp_path / "7" / "nested").mkdir(parents=True)
    Image.fromarray(digit).save(tmp_path / "1" / "a.png")
    Image.fromarray(255 - digit).save(tmp_path / "1" / "b.PNG")  # dark on light: inverted
    Image.fromarray(digit).resize((56, 56)).save(tmp_path / "7" / "nested" / "c.bmp")
    (tmp_path / "7" / "notes.txt").write_text("not an image")
    (tmp_path / "1" / ".hidden.png").write_bytes(b"junk")
    x, y = load_image_folder(tmp_path)
    assert x.shape == (3, 28, 28) and list(y) == [1, 1, 7]
    np.testing.assert_array_equal(x[0], digit)
    np.testing.assert_array_equal(x[1], digit)
    assert x[2].max() > 200 and x[2][:, :4].max() == 0


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("name", ["12", "\u00b3", "\u0663", "\uff13"])  # 12, superscript 3, Arabic-Indic 3, fullwidth 3
def test_a_label_folder_that_is_not_an_ascii_digit_is_refused(tmp_path, name):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    for folder in ("3", name):
        (tmp_path / folder).mkdir()
        Image.fromarray(digit).save(tmp_path / folder / "a.png")
    with pytest.raises(DataError, match="not digits 0-9"):
        read_labelled_folder(tmp_path)


def test_blank_images_are_skipped_and_counted_not_taught(tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    (tmp_path / "4").mkdir()
    Image.fromarray(digit).save(tmp_path / "4" / "real.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "4" / "one-pixel.png")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "4" / "white.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "4" / "black.png")
    os.mkfifo(tmp_path / "4" / "fifo.png")  # a special file is never read (it would block)
    folder = read_labelled_folder(tmp_path)
    assert (len(folder.y), folder.blank) == (1, 3)
    np.testing.assert_array_equal(folder.x[0], digit)
    (tmp_path / "4" / "real.png").unlink()
    with pytest.raises(DataError, match="3 decodable image.* are blank"):
        read_labelled_folder(tmp_path)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_real_mnist_label_counts(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert np.bincount(mnist.y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.y_test, minlength=10).tolist() == TEST_COUNTS
