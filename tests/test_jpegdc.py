"""The C reader of baseline JPEGs at 1/8 scale (model/jpegdc.c), held to libjpeg's pixels through Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from model import preprocess
from model.preprocess import decode_image

jpegdc = preprocess._jpegdc


def _jpeg(img: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    saved, ImageFile.MAXBLOCK = ImageFile.MAXBLOCK, 1 << 24  # optimize/progressive need room to write
    try:
        img.save(out, format="JPEG", **options)
    finally:
        ImageFile.MAXBLOCK = saved
    return out.getvalue()


def _libjpeg_eighth(data: bytes) -> np.ndarray:
    """What libjpeg gives through Pillow: grayscale at 1/8 scale."""
    img = Image.open(io.BytesIO(data))
    img.draft("L", (max(1, img.width // 8), max(1, img.height // 8)))
    img.load()
    return np.asarray(img)


def _read(data: bytes) -> np.ndarray | None:
    got = jpegdc.luma_dc(data)
    return None if got is None else np.frombuffer(got[2], np.uint8).reshape(got[1], got[0])


def _noise(width: int, height: int, spread: float, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 220, width, dtype=np.float32)[None, :, None]
    return Image.fromarray((ramp + rng.normal(0, spread, (height, width, 3))).clip(0, 255).astype(np.uint8))


def test_the_reader_is_built():
    assert jpegdc is not None, "model._jpegdc is missing: reinstall with a C compiler (scripts/bootstrap.sh)"


VARIANTS = {
    "grayscale": ("L", {}),
    "4:2:0": ("RGB", {"subsampling": 2}),
    "4:2:2": ("RGB", {"subsampling": 1}),
    "4:4:4": ("RGB", {"subsampling": 0}),
    "optimized tables": ("RGB", {"optimize": True}),
    "quality 5": ("RGB", {"quality": 5}),
    "quality 100": ("RGB", {"quality": 100, "subsampling": 0}),
    "restart every 7 blocks": ("RGB", {"restart_marker_blocks": 7}),
    "restart every row": ("L", {"restart_marker_rows": 1}),
}


@pytest.mark.parametrize("size", [(640, 480), (9, 13), (1001, 17)])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_pixels_as_libjpeg(variant, size):
    mode, options = VARIANTS[variant]
    for seed, spread in enumerate((3, 40)):
        data = _jpeg(_noise(*size, spread, seed).convert(mode), **options)
        got = _read(data)
        assert got is not None, "a baseline JPEG must not be left to libjpeg"
        np.testing.assert_array_equal(got, _libjpeg_eighth(data))


def test_other_jpegs_and_other_bytes_are_left_to_libjpeg():
    img = _noise(200, 150, 20)
    assert _read(_jpeg(img, progressive=True)) is None
    assert _read(_jpeg(img.convert("CMYK"))) is None
    png = io.BytesIO()
    img.save(png, format="PNG")
    for data in (b"", b"\xff\xd8", png.getvalue(), _jpeg(img)[:-2]):
        assert _read(data) is None


def test_damaged_jpegs_give_libjpeg_pixels_or_are_left_to_it():
    """A damaged file is never read into pixels libjpeg would not give, nor where Pillow fails on it."""
    rng = np.random.default_rng(3)
    outcomes = {"left": 0, "read": 0}
    for i in range(30):
        data = _jpeg(_noise(int(rng.integers(16, 300)), int(rng.integers(16, 300)), 25, i),
                     restart_marker_blocks=int(rng.integers(0, 20)))
        start = data.index(b"\xff\xda")
        for _ in range(10):
            bad = bytearray(data)
            kind = rng.integers(3)
            if kind == 0:  # a byte anywhere, tables included
                bad[int(rng.integers(2, len(bad)))] = int(rng.integers(256))
            elif kind == 1:  # bytes in the scan
                for _ in range(3):
                    bad[int(rng.integers(start, len(bad)))] ^= int(rng.integers(1, 256))
            else:
                bad = bad[: int(rng.integers(start, len(bad)))]
            got = _read(bytes(bad))
            if got is None:
                outcomes["left"] += 1
                continue
            outcomes["read"] += 1
            np.testing.assert_array_equal(got, _libjpeg_eighth(bytes(bad)))
    assert outcomes["left"] > 20 and outcomes["read"] > 20  # both outcomes were exercised


def test_phone_photos_decode_the_same_with_or_without_the_reader(mnist, monkeypatch):
    from model.synthetic import phone_photo

    rng = np.random.default_rng(5)
    photos = [phone_photo(mnist.x_test[i], rng) for i in range(2)]
    exif = Image.Exif()
    exif[0x0112] = 6  # taken with the phone on its side
    photos.append(_jpeg(Image.open(io.BytesIO(photos[0])), quality=90, exif=exif.tobytes()))
    calls = []
    monkeypatch.setattr(preprocess, "_jpegdc", type("Spy", (), {
        "luma_dc": staticmethod(lambda data: calls.append(1) or jpegdc.luma_dc(data))}))
    fast = [decode_image(p) for p in photos]
    assert len(calls) == len(photos)
    monkeypatch.setattr(preprocess, "_jpegdc", None)
    for data, got in zip(photos, fast, strict=True):
        np.testing.assert_array_equal(got, decode_image(data))
    assert not np.array_equal(fast[2], fast[0])  # the orientation was applied
