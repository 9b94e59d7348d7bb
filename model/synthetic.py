"""Realistic test inputs made from MNIST digits: phone photos and page scans (benchmark, tests)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def phone_photo(digit: np.ndarray, rng: np.random.Generator, width: int = 3024, height: int = 4032,
                quality: int = 90) -> bytes:
    """A JPEG of an MNIST digit drawn dark on noisy, unevenly lit light paper (12 MP and 2-3 MB by default)."""
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    page = 215 + 20 * (xs - 0.5) - 15 * (ys - 0.5) + rng.normal(0, 5, (height, width)).astype(np.float32)
    size = int(min(width, height) * rng.uniform(0.4, 0.8))
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    page[top : top + size, left : left + size] -= ink * 170
    rgb = np.stack([page, page - 6, page - 14], axis=-1).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def page_scan(digit: np.ndarray, width: int = 4960, height: int = 7016) -> bytes:
    """A PNG of an A4 page scanned at 600 dpi (RGB) with one large dark digit on it and some specks."""
    page = np.full((height, width, 3), 250, np.uint8)
    size = min(width, height) * 3 // 10
    ink = np.asarray(Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BICUBIC))
    top, left = height * 2 // 7, width * 3 // 10
    page[top : top + size, left : left + size] = ink[..., None]
    page[np.random.default_rng(1).random((height, width)) < 0.01] = 200
    out = io.BytesIO()
    Image.fromarray(page).save(out, format="PNG")
    return out.getvalue()
