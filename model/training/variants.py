"""Rendered variants of training digits: the ways other hands and other scanners differ from MNIST.

A training adds a pool of variants of its own training digits, each drawn the way a user's image
would be (pen width, rotation, slant, low resolution, a crossed 7, a 1 with a flag and a base; grey and
bright paper, gradients, lamp light and fog, ruled lines, stripes and form boxes, low resolution enlarged
onto a page; hollow strokes, speckle, blur, noise and ink diffused into the paper) and
read back through :func:`model.serving.preprocess.decode_image`, so the model learns from what it will be
shown, not from MNIST's framing alone. The renderers are the robustness suite's
(:mod:`model.quality.robustness`), with parameters drawn from ranges around the suite's fixed points; the
pool is seeded, and never made from evaluation images. Recipe chosen on held-out training digits and
the suite applied to them with another seed (README, "The model").

No renderer here draws a family of :data:`model.quality.robustness.HELD_OUT_FAMILIES` (elastic, bleed-through,
halftone, dotted) or anything close to one: no local bending of strokes (only whole-image rotation, shear
and zoom), no second digit behind the first, no dot screen or dotted pen (:data:`FAMILIES_DRAWN` says which
suite families the pool covers; a test holds them apart).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from model.quality import robustness as shifts


def _rotated(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return shifts.rotate(float(rng.uniform(12, 32)))(digit, rng)


def _thick(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return shifts.stroke(int(rng.integers(2, 8)), grow=True)(digit, rng)


def _thin(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return shifts.stroke(int(rng.integers(1, 3)), grow=False)(digit, rng)


def _low(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return shifts.low_resolution(int(rng.integers(7, 17)))(digit, rng)


def _slanted(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return shifts.shear(float(rng.uniform(-0.4, 0.45)))(digit, rng)


def _grey_light(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light digit on grey paper, at MNIST's size or a 2x scan."""
    return shifts.paper_tone((50, 150), (60, 160), scale=int(rng.integers(1, 3)))(digit, rng)


def _grey_dark(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dark digit on grey or bright paper (lighter than the ink), faint or strong."""
    return shifts.paper_tone((130, 250), (-150, -40), scale=int(rng.integers(1, 3)))(digit, rng)


def _shaded(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light falling across the sheet (a plane) or from a lamp (radial), at MNIST's size or a 2x scan."""
    scale = int(rng.integers(1, 3))
    if rng.random() < 0.5:
        return shifts.gradient((200, 250), (50, 140), scale=scale)(digit, rng)
    return shifts.vignette((215, 250), (70, 170), scale=scale)(digit, rng)


def _lined(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ruled paper, a stripe across a 28x28 digit, or a form's box around (and through) the digit."""
    pick = rng.random()
    if pick < 0.4:
        return shifts.ruled_lines((11, 26), (1.0, 3.5), (20, 190))(digit, rng)
    if pick < 0.7:
        return shifts.stripe((1.0, 3.5), (110, 255))(digit, rng)
    return shifts.box_border((-6, 8), (1.5, 4.0))(digit, rng)


def _fogged(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Haze over dark ink in blobs, at MNIST's size or a 2x scan."""
    low = float(rng.uniform(0.0, 0.2))
    return shifts.fog((low, low + float(rng.uniform(0.3, 0.55))), int(rng.integers(1, 3)))(digit, rng)


def _hollow(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hollow strokes: walls of 0.75 to 1.25 MNIST px around a pen 2 to 4 px thicker, at 28x28 (white on
    black) or as a 42 to 84 px scan (dark on paper)."""
    size = 28 if rng.random() < 0.6 else int(rng.integers(42, 85))
    return shifts.outline(int(rng.integers(4, 9)), int(rng.integers(3, 6)), size)(digit, rng)


def _speckled(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on 2% to 12% of the pixels, at 28x28 or on a 2x scan."""
    return shifts.salt_and_pepper(float(rng.uniform(0.02, 0.12)), int(rng.integers(1, 3)))(digit, rng)


def _smeared(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink diffused into the paper (scattered between blurs), or a plain blur, or sensor noise, on a 2x scan."""
    pick = rng.random()
    if pick < 0.6:
        return shifts.diffusion(int(rng.integers(1, 5)), int(rng.integers(1, 3)), float(rng.uniform(0.3, 0.7)))(
            digit, rng)
    if pick < 0.8:
        return shifts.blur(float(rng.uniform(0.5, 1.6)))(digit, rng)
    return shifts.sensor_noise(float(rng.uniform(8, 30)))(digit, rng)


_RESAMPLE = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _low_page(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """6 to 12 px tall, enlarged 4 to 10 times (blocky or smooth) onto a page."""
    resample = _RESAMPLE[int(rng.integers(len(_RESAMPLE)))]
    return shifts.low_resolution_page(int(rng.integers(6, 13)), int(rng.integers(4, 11)), resample)(digit, rng)


#: Drawn uniformly for each variant (rotation and a thicker pen twice as often: MNIST's weakest shifts).
_GENERIC = (_rotated, _rotated, _thick, _thick, _thin, _low, _slanted)
#: Paper, page and degraded-ink conditions, drawn for a share :data:`PAPER_SHARE` of the variants: lines three
#: times as often as the rest, grey paper, hollow strokes, pages and diffusion twice (the weakest of them; the
#: shares were chosen on hold-out digits, docs/model.md "How the recipe was chosen").
_PAPER = (_grey_light, _grey_dark, _grey_light, _grey_dark, _shaded, _lined, _lined, _lined, _low_page, _low_page,
          _fogged, _hollow, _hollow, _speckled, _smeared, _smeared)
PAPER_SHARE = 0.65
#: The robustness suite's families the pool draws (none of them held out).
FAMILIES_DRAWN = ("resolution", "stroke", "geometry", "style", "paper-tone", "shading", "lines",
                  "fog", "outline", "speckle", "diffusion", "capture")
#: Share of the 7s drawn with a crossbar, and of the 1s with a flag and a base (styles MNIST lacks).
STYLE_SHARE = 0.5


#: Decoded variants with less contrast than this (max - min) are blanks the preprocessing made.
MIN_CONTRAST = 40


def variant(digit: np.ndarray, label: int, rng: np.random.Generator, generic: bool = False) -> np.ndarray:
    """One rendered variant of an MNIST digit, as ``decode_image`` gives it to the model (uint8 28x28);
    ``generic``: one of the pen, geometry and resolution renderers only."""
    from model.serving.preprocess import decode_image

    if generic:
        image = _GENERIC[int(rng.integers(len(_GENERIC)))](digit, rng)
    elif label == 7 and rng.random() < STYLE_SHARE:
        image = shifts.seven_with_crossbar(digit, rng)
    elif label == 1 and rng.random() < STYLE_SHARE:
        image = shifts.one_with_flag_and_base(digit, rng)
    elif rng.random() < PAPER_SHARE:
        image = _PAPER[int(rng.integers(len(_PAPER)))](digit, rng)
    else:
        image = _GENERIC[int(rng.integers(len(_GENERIC)))](digit, rng)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=0)
    decoded = decode_image(out.getvalue())
    if not generic and int(decoded.max()) - int(decoded.min()) < MIN_CONTRAST:
        # The preprocessing lost the digit (a blank frame): no lesson in it, and a label on a blank
        # teaches a guess. A generic variant of the same digit takes its place.
        return variant(digit, label, rng, generic=True)
    return decoded


def make_pool(x: np.ndarray, y: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` variants of digits drawn (seeded) from ``x``/``y``: images (N, 28, 28) uint8 and labels.
    About 0.6 ms a variant on one core (30,000 in 17 s)."""
    if count <= 0 or not len(y):
        return np.zeros((0, 28, 28), np.uint8), np.zeros((0,), y.dtype)
    picks = np.random.default_rng([seed, 7]).integers(0, len(y), count)
    images = np.empty((count, 28, 28), np.uint8)
    for k, i in enumerate(picks):
        images[k] = variant(x[i], int(y[i]), np.random.default_rng([seed, 7, k]))
    return images, np.asarray(y[picks])
