"""The robustness suite: named, seeded shifts of MNIST digits, as users' files differ from MNIST.

Each :class:`Shift` is a pure function of a 28x28 MNIST digit (white on black, uint8) and a
generator seeded by (suite seed, shift name, image index): it returns the image a user's file
would hold (any size, gray or RGB, either polarity), and :meth:`Shift.encode` turns it into the
bytes of that file (PNG, or JPEG for the JPEG shift). :func:`build_suite` sends those bytes
through :func:`model.serving.preprocess.decode_image`, so the production preprocessing (polarity, framing,
resizing) takes part; scoring is in :mod:`model.quality.evaluation`.

The families, and how each shift is made (the README's "Robustness" table lists them too):

- ``none``: ``clean``, the digit as MNIST has it (a 28x28 PNG), the reference row.
- ``resolution``: ``lowres-8/12/16``, the digit area-averaged (box filter, as a low-dpi sensor
  integrates) to 8, 12 or 16 px tall, dark on white paper with a margin: faxes, thumbnails.
- ``stroke``: ``stroke-thin/thick/bold``, the digit upsampled 4x and sharpened into a pen shape,
  then eroded or dilated with an octagon (a near-disk) at that resolution (so thin strokes stay whole): stroke
  width -1, +2 and +3 px at MNIST's scale. The 112x112 image is what decode_image frames.
- ``geometry``: ``slant`` (shear 0.35, italic), ``backslant`` (shear -0.25), ``rotate-25``
  (25 degrees, clockwise or counter-clockwise by the seed), on a 40x40 canvas.
- ``canvas``: ``small-noisy-canvas``, the digit 24 px tall at a seeded place on a 128x128 gray
  paper with Gaussian noise (sigma 6): a crop that was not cropped.
- ``capture``: ``blur`` (Gaussian, sigma 1.2 at MNIST's scale), ``sensor-noise`` (Gaussian,
  sigma 20 of 255), ``jpeg-q10`` (JPEG at quality 10), each on a 2x scan (56x56, dark on paper).
- ``paper``: ``uneven-light`` (illumination falling by 30% across the sheet in a seeded
  direction, multiplied into paper and ink), ``coloured-paper`` (yellow, pink, blue or green
  paper, dark ink), ``coloured-ink`` (red, blue, green or purple ink on white), RGB PNGs.
- ``style``, on the test digits of one class only (``Shift.labels``): ``style-1-flag-base``
  and ``style-7-crossbar`` edit MNIST's own 1s and 7s (a flag and a base, a crossbar, drawn
  at 4x with the digit's own stroke width, where its stroke is); ``style-4-open``,
  ``style-4-closed`` and ``style-9-straight-stem`` are drawn from stroke templates (polylines
  with seeded proportions, width and pen) in the slant of the MNIST digit they stand for.
- ``paper-tone``, ``shading``, ``lines``, ``fog``, ``outline``, ``speckle``, ``diffusion``: grey and bright
  paper, light falling across the sheet, ruled lines, stripes and form boxes, haze, hollow strokes, impulse
  noise and ink scattered into the paper (each shift's description says how much).
- Held out of training (:data:`HELD_OUT_FAMILIES`): ``elastic`` (strokes bent by a smooth random
  displacement field, as a hand wobbles), ``bleed-through`` (a faint mirrored digit from the back of the
  sheet behind the ink), ``halftone`` (the digit printed through a clustered-dot screen, as printed and
  photocopied forms give it) and ``dotted`` (``dot-matrix``: strokes as rows of separate round dots).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw, ImageFilter

from digitq.errors import ConfigError

#: The suite's seed: every shifted image is a function of (SEED, shift name, image index).
SEED = 15
FAMILIES = ("none", "resolution", "stroke", "geometry", "canvas", "capture", "paper", "style",
            "paper-tone", "shading", "lines", "fog", "outline", "speckle", "diffusion",
            "elastic", "bleed-through", "halftone", "dotted")
#: Families no training renders, recorded in a version's ``model.json`` as ``held_out_families``: the
#: suite's honest measure, fixed before any model was scored on them. None is a near-copy of a trained one:
#: elastic bends strokes along a smooth random field (training has only global rotation, shear and zoom,
#: which keep strokes straight), bleed-through puts a second, mirrored digit's faint ghost behind the ink
#: (training's lines, boxes and shading are no digit's strokes), halftone breaks every stroke into a regular
#: dot pattern (training's speckle is random and sparse, and no pen is ever screened), and dotted strokes are
#: rows of separate dots with paper between them (training's outlines keep the stroke's edge unbroken).
HELD_OUT_FAMILIES = ("elastic", "bleed-through", "halftone", "dotted")

Render = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Shift:
    """One named shift: ``render`` maps an MNIST digit and a seeded generator to a user's image."""

    name: str
    family: str
    description: str
    render: Render
    #: The digits it applies to (style shifts); None: all ten.
    labels: tuple[int, ...] | None = None
    #: How the image reaches decode_image: "PNG", or "JPEG" at ``quality``.
    format: str = "PNG"
    quality: int = 75

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"shift {self.name}: family {self.family!r} is not one of {FAMILIES}")

    def rng(self, index: int, seed: int = SEED) -> np.random.Generator:
        """The generator for one image: independent of the other shifts and of the order of calls."""
        return np.random.default_rng([seed, zlib.crc32(self.name.encode()), int(index)])

    def image(self, digit: np.ndarray, index: int, seed: int = SEED) -> np.ndarray:
        """The shifted image (uint8, (H, W) gray or (H, W, 3) RGB) of MNIST digit number ``index``."""
        return self.render(np.asarray(digit, np.uint8), self.rng(index, seed))

    def encode(self, digit: np.ndarray, index: int, seed: int = SEED) -> bytes:
        """The bytes of the file a user would send: the shifted image as PNG (or JPEG)."""
        out = io.BytesIO()
        img = Image.fromarray(self.image(digit, index, seed))
        if self.format == "JPEG":
            img.save(out, format="JPEG", quality=self.quality)
        else:
            img.save(out, format="PNG", compress_level=0)  # lossless at any level; 0 is the fastest
        return out.getvalue()


# -- helpers ----------------------------------------------------------------------------------------

def _crop(digit: np.ndarray) -> np.ndarray:
    """The digit's ink bounding box (the whole image if it has no ink)."""
    rows, cols = np.flatnonzero(digit.max(axis=1)), np.flatnonzero(digit.max(axis=0))
    if not len(rows):
        return digit
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """``a`` (float or uint8, 0..255) resized to ``size`` = (width, height), as float32."""
    img = Image.fromarray(np.asarray(a, np.float32), mode="F")
    return np.asarray(img.resize(size, resample), np.float32)


def _on_paper(ink: np.ndarray, paper: float = 245.0, pen: float = 25.0) -> np.ndarray:
    """White-on-black ``ink`` (0..255) drawn dark on light paper, as float32."""
    return paper - (paper - pen) * (np.clip(ink, 0, 255) / 255.0)


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _pad(digit: np.ndarray, size: int) -> np.ndarray:
    """The 28x28 digit centred on a black ``size`` x ``size`` canvas."""
    out = np.zeros((size, size), np.float32)
    top = (size - digit.shape[0]) // 2
    left = (size - digit.shape[1]) // 2
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return out


def _scan(digit: np.ndarray, factor: int = 2) -> np.ndarray:
    """The digit as a ``factor``x scan would see it: upsampled (bicubic), white on black, float32."""
    side = digit.shape[0] * factor
    return np.clip(_resize(digit, (side, side), Image.Resampling.BICUBIC), 0, 255)


def _neighbours(out: np.ndarray, src: np.ndarray, pick: np.ufunc) -> None:
    """``out[i] = pick(out[i], src[i - 1], src[i + 1])`` along the first axis, in place."""
    pick(out[1:], src[:-1], out=out[1:])
    pick(out[:-1], src[1:], out=out[:-1])


def _morph(a: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    """Gray-level dilation (``grow``) or erosion of ``a`` by an octagon of ``radius`` pixels: 3x3
    crosses and squares in turn, a near-disk at a few array operations per step."""
    pick = np.maximum if grow else np.minimum
    out = _u8(a)
    for step in range(radius):
        if step % 2 == 0:  # a cross: both axes from the same source
            src = out.copy()
            _neighbours(out, src, pick)
            _neighbours(out.T, src.T, pick)
        else:  # a square: one axis, then the other from that result
            _neighbours(out, out.copy(), pick)
            _neighbours(out.T, out.T.copy(), pick)
    return out


def _slant_of(digit: np.ndarray) -> float:
    """How far the digit leans forward: -dx/dy of its ink's principal axis (second moments)."""
    ink = digit.astype(np.float64)
    total = ink.sum()
    if total <= 0:
        return 0.0
    ys, xs = np.indices(ink.shape)
    cy, cx = (ys * ink).sum() / total, (xs * ink).sum() / total
    var_y = (((ys - cy) ** 2) * ink).sum() / total
    cov = ((ys - cy) * (xs - cx) * ink).sum() / total
    return float(np.clip(-cov / var_y, -0.3, 0.5)) if var_y > 0 else 0.0


def stroke_width(digit: np.ndarray) -> float:
    """The digit's pen width in pixels: the median length of its horizontal ink runs (> 50% ink)."""
    ink = digit > 127
    edges = np.diff(np.pad(ink, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    runs = np.flatnonzero(edges.ravel() == -1) - np.flatnonzero(edges.ravel() == 1)
    return float(np.clip(np.median(runs), 1.5, 4.0)) if len(runs) else 2.5


# -- the shifts -----------------------------------------------------------------------------------

def _clean(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return digit


def low_resolution(height: int) -> Render:
    """The digit area-averaged to ``height`` px tall, dark on white paper with a margin."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        crop = _crop(digit)
        h, w = crop.shape
        small = _resize(crop, (max(1, round(w * height / h)), height), Image.Resampling.BOX)
        margin = max(2, height // 4)
        canvas = np.zeros((height + 2 * margin, small.shape[1] + 2 * margin), np.float32)
        canvas[margin : margin + height, margin : margin + small.shape[1]] = small
        return _u8(_on_paper(canvas, paper=250.0, pen=20.0))

    return render


#: Pixels per MNIST pixel where strokes are thinned or thickened.
STROKE_SCALE = 4


def stroke(radius: int, grow: bool) -> Render:
    """The digit at 4x, sharpened into a pen shape, then dilated (``grow``) or eroded by ``radius`` px."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        up = _scan(digit, STROKE_SCALE)
        # A steep ramp around a low level: the pen's full extent with a 1-px soft edge, so the
        # morphology moves edges instead of dimming them.
        pen = np.clip((up - 64.0) * 4.0, 0, 255)
        return _morph(pen, radius, grow)

    return render


def _affine(digit: np.ndarray, matrix: tuple[float, ...], size: int = 40) -> np.ndarray:
    """The digit on a black ``size`` canvas under the affine map (output -> input) about its centre."""
    a, b, c, d = matrix
    mid = size / 2
    # PIL's AFFINE maps output (x, y) to input (a x + b y + c0, d x + e y + f0).
    coeffs = (a, b, mid - a * mid - b * mid, c, d, mid - c * mid - d * mid)
    img = Image.fromarray(_pad(digit, size), mode="F")
    out = img.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)
    return _u8(np.asarray(out))


def shear(factor: float) -> Render:
    """Slant: rows above the centre move right by ``factor`` px per px (left when negative)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _affine(digit, (1.0, factor, 0.0, 1.0))  # input x = x + factor * (y - mid)

    return render


def rotate(degrees: float) -> Render:
    """Rotation by ``degrees``, clockwise or counter-clockwise by the seed."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        theta = np.radians(degrees) * (1 if rng.random() < 0.5 else -1)
        cos, sin = float(np.cos(theta)), float(np.sin(theta))
        return _affine(digit, (cos, -sin, sin, cos))

    return render


def small_in_canvas(canvas: int = 128, height: int = 24, noise: float = 6.0) -> Render:
    """The digit ``height`` px tall at a seeded place on a ``canvas`` px noisy gray paper."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        crop = _crop(digit)
        h, w = crop.shape
        ink = np.clip(_resize(crop, (max(1, round(w * height / h)), height), Image.Resampling.BILINEAR), 0, 255)
        sheet = np.zeros((canvas, canvas), np.float32)
        top = int(rng.integers(0, canvas - ink.shape[0] + 1))
        left = int(rng.integers(0, canvas - ink.shape[1] + 1))
        sheet[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
        paper = _on_paper(sheet, paper=float(rng.uniform(200, 230)), pen=35.0)
        return _u8(paper + noise * rng.standard_normal(paper.shape, np.float32))

    return render


def blur(sigma: float) -> Render:
    """A 2x scan on paper, Gaussian-blurred by ``sigma`` MNIST pixels."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = Image.fromarray(_u8(_on_paper(_scan(digit))))
        return np.asarray(img.filter(ImageFilter.GaussianBlur(sigma * 2)))

    return render


def sensor_noise(sigma: float) -> Render:
    """A 2x scan on paper with Gaussian noise of ``sigma`` gray levels."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        paper = _on_paper(_scan(digit))
        return _u8(paper + sigma * rng.standard_normal(paper.shape, np.float32))

    return render


def _paper_scan(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 2x scan on paper: what the JPEG shift compresses (the format is the shift)."""
    return _u8(_on_paper(_scan(digit)))


def uneven_light(falloff: float) -> Render:
    """A 2x scan lit unevenly: light falls by ``falloff`` across the sheet, in a seeded direction."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        reflectance = _on_paper(_scan(digit), paper=1.0, pen=0.1)
        side = reflectance.shape[0]
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = (np.indices((side, side), dtype=np.float32) / (side - 1)) - 0.5
        along = (xs * np.cos(angle) + ys * np.sin(angle)) / np.sqrt(0.5) + 0.5  # 0..1 corner to corner
        light = 250.0 * (1.0 - falloff * np.clip(along, 0, 1))
        return _u8(reflectance * light)

    return render


#: (paper, ink) RGB pairs: legal-pad yellow, pink, pale blue and recycled green paper, dark pens.
PAPERS = (((250, 236, 150), (30, 40, 90)), ((250, 205, 215), (40, 30, 40)),
          ((200, 225, 250), (25, 30, 35)), ((215, 230, 200), (20, 40, 30)))
#: Inks on white paper: red and green ballpoint, blue ballpoint, purple felt pen.
INKS = ((200, 30, 40), (30, 130, 60), (40, 60, 200), (120, 40, 150))


def coloured(pairs: Sequence[tuple[tuple[int, int, int], tuple[int, int, int]]]) -> Render:
    """A 2x scan in colour: a seeded (paper, ink) pair from ``pairs``, as an RGB image."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        paper, ink = pairs[int(rng.integers(len(pairs)))]
        alpha = (_scan(digit) / 255.0)[..., None]
        return _u8(np.asarray(paper, np.float32) * (1 - alpha) + np.asarray(ink, np.float32) * alpha)

    return render


# -- writing styles -------------------------------------------------------------------------------

def _draw(canvas: Image.Image, points: Sequence[tuple[float, float]], width: float) -> None:
    """A polyline with round joints and caps, in white."""
    draw = ImageDraw.Draw(canvas)
    pen = max(1, round(width))
    draw.line([tuple(p) for p in points], fill=255, width=pen, joint="curve")
    r = pen / 2
    for x, y in (points[0], points[-1]):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def _edit_at_4x(digit: np.ndarray, strokes: list[list[tuple[float, float]]], width: float) -> np.ndarray:
    """The MNIST digit at 4x with ``strokes`` (in MNIST pixel coordinates) drawn in its pen width."""
    up = Image.fromarray(_u8(_scan(digit, STROKE_SCALE)))
    for points in strokes:
        _draw(up, [(STROKE_SCALE * x + 1.5, STROKE_SCALE * y + 1.5) for x, y in points], width * STROKE_SCALE)
    return np.asarray(up.filter(ImageFilter.GaussianBlur(1.2)))  # the pen's soft edge, as MNIST's


def _ink_band(digit: np.ndarray, top: float, bottom: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and ink-centre columns of the digit between fractions ``top`` and ``bottom`` of its height."""
    rows = np.flatnonzero(digit.max(axis=1) > 127)
    if not len(rows):
        return np.zeros(0), np.zeros(0)
    r0, r1 = rows[0], rows[-1]
    band = np.arange(int(r0 + top * (r1 - r0)), int(r0 + bottom * (r1 - r0)) + 1)
    weights = digit[band].astype(np.float64)
    mass = weights.sum(axis=1)
    keep = mass > 0
    centres = (weights[keep] * np.arange(digit.shape[1])).sum(axis=1) / mass[keep]
    return band[keep].astype(np.float64), centres


def one_with_flag_and_base(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MNIST 1 given a flag (down-left from its top) and a base (centred under its foot)."""
    rows, centres = _ink_band(digit, 0.0, 1.0)
    if len(rows) < 2:
        return _u8(_scan(digit, STROKE_SCALE))
    height = rows[-1] - rows[0] + 1
    (x_top, y_top), (x_foot, y_foot) = (centres[0], rows[0]), (centres[-1], rows[-1])
    flag = rng.uniform(0.25, 0.35) * height
    drop = rng.uniform(0.15, 0.3) * height
    half_base = rng.uniform(0.25, 0.35) * height
    strokes = [[(x_top - flag, y_top + drop), (x_top, y_top)],
               [(x_foot - half_base, y_foot), (x_foot + half_base, y_foot)]]
    return _edit_at_4x(digit, strokes, stroke_width(digit))


def seven_with_crossbar(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MNIST 7 given a horizontal crossbar through its stem, a little below half its height."""
    rows, centres = _ink_band(digit, 0.45, 0.65)
    if not len(rows):
        return _u8(_scan(digit, STROKE_SCALE))
    at = int(rng.integers(len(rows)))
    y, x = rows[at], centres[at]
    all_rows = np.flatnonzero(digit.max(axis=1) > 127)
    half = rng.uniform(0.2, 0.28) * (all_rows[-1] - all_rows[0] + 1)
    return _edit_at_4x(digit, [[(x - half, y), (x + half, y)]], stroke_width(digit))


Template = Callable[[np.random.Generator], list[list[tuple[float, float]]]]


def four_open(rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """A 4 open at the top, in a unit box (x right, y down): a down-and-across stroke, then a stem
    that starts well right of it, so the two never meet above the bar."""
    u = rng.uniform
    left, bar, right, stem = u(0.0, 0.15), u(0.52, 0.68), u(0.72, 0.88), u(0.5, 0.62)
    return [[(left, u(0.0, 0.12)), (left + u(-0.06, 0.04), bar), (right, bar + u(-0.03, 0.03))],
            [(stem, u(-0.02, 0.1)), (stem + u(-0.03, 0.03), 1.0)]]


def four_closed(rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """A 4 closed at the top, a triangle: from the stem's top down-left to the bar, across, and the stem."""
    u = rng.uniform
    top = (u(0.5, 0.62), u(0.0, 0.08))
    bar = u(0.56, 0.7)
    return [[top, (u(0.0, 0.1), bar), (u(0.72, 0.88), bar + u(-0.03, 0.03))],
            [top, (top[0] + u(-0.03, 0.03), 1.0)]]


def nine_straight_stem(rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """A 9 whose stem is a straight line down from the right of its loop (drawn in one stroke)."""
    u = rng.uniform
    cx, cy, rx, ry = u(0.3, 0.38), u(0.24, 0.3), u(0.22, 0.3), u(0.2, 0.28)
    wobble, phase = u(0.0, 0.08), u(0, 2 * np.pi)  # a hand-drawn, not quite elliptic loop
    loop = [(cx + rx * (1 + wobble * np.sin(a + phase)) * np.cos(a),
             cy - ry * (1 + wobble * np.sin(a + phase)) * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 33)]
    start = loop[0]
    return [loop + [(start[0] + u(-0.02, 0.02), 1.0)]]


def from_template(template: Template) -> Render:
    """A digit drawn from a stroke ``template`` (seeded proportions) at 4x, in the slant of the MNIST
    digit it stands for, with a seeded width (0.85 to 1.15) and pen (1.8 to 3.2 MNIST pixels)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        side = 28 * STROKE_SCALE
        height = 20 * STROKE_SCALE * rng.uniform(0.9, 1.0)
        width = rng.uniform(0.85, 1.15)
        slant = _slant_of(digit) + rng.normal(0, 0.05)
        pen = rng.uniform(1.8, 3.2) * STROKE_SCALE
        canvas = Image.new("L", (side, side), 0)
        for line in template(rng):
            _draw(canvas, [(side / 2 + ((x - 0.4) * width + slant * (0.5 - y)) * height,
                            side / 2 + (y - 0.5) * height) for x, y in line], pen)
        return np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.2)))

    return render


# -- paper, shading, lines, fog, outlines, speckle, diffusion ------------------------------------------

def _tone(ink: np.ndarray, paper: float, pen: float) -> np.ndarray:
    """White-on-black ``ink`` (0..255) drawn in ``pen`` on ``paper`` (either lighter), as float32."""
    return paper + (pen - paper) * (np.clip(ink, 0, 255) / 255.0)


def paper_tone(paper: tuple[float, float], contrast: tuple[float, float], scale: int = 1) -> Render:
    """The digit on uniform paper of a seeded level in ``paper``, its ink ``contrast`` levels away (a
    positive contrast: lighter than the paper, negative: darker), at ``scale`` x MNIST's size."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        level = float(rng.uniform(*paper))
        ink = _scan(digit, scale) if scale > 1 else digit.astype(np.float32)
        return _u8(_tone(ink, level, level + float(rng.uniform(*contrast))))

    return render


def _ramp(side: int, rng: np.random.Generator) -> np.ndarray:
    """0 at one corner to 1 at the opposite one, in a seeded direction (float32, side x side)."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = (np.indices((side, side), dtype=np.float32) / (side - 1)) - 0.5
    return np.clip((xs * np.cos(angle) + ys * np.sin(angle)) / np.sqrt(0.5) + 0.5, 0, 1)


def gradient(bright: tuple[float, float], dark: tuple[float, float], scale: int = 2) -> Render:
    """Dark ink on paper whose light falls linearly from a level in ``bright`` to one in ``dark`` across
    the sheet in a seeded direction (multiplied into paper and ink), at ``scale`` x."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        reflectance = _on_paper(_scan(digit, scale) if scale > 1 else digit.astype(np.float32), paper=1.0, pen=0.1)
        top, bottom = float(rng.uniform(*bright)), float(rng.uniform(*dark))
        return _u8(reflectance * (top + (bottom - top) * _ramp(reflectance.shape[0], rng)))

    return render


def vignette(centre: tuple[float, float], corner: tuple[float, float], scale: int = 1) -> Render:
    """Dark ink on paper lit brightest at a seeded point near the middle, falling off radially to a
    level in ``corner`` at the far corners (a desk lamp, a phone's flash)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        reflectance = _on_paper(_scan(digit, scale) if scale > 1 else digit.astype(np.float32), paper=1.0, pen=0.1)
        side = reflectance.shape[0]
        cy, cx = rng.uniform(0.3, 0.7, 2) * (side - 1)
        ys, xs = np.indices((side, side), dtype=np.float32)
        r = np.hypot(ys - cy, xs - cx) / (side * 1.0)
        hi, lo = float(rng.uniform(*centre)), float(rng.uniform(*corner))
        return _u8(reflectance * (hi + (lo - hi) * np.clip(r / 0.75, 0, 1) ** 1.5))

    return render


def _page(digit: np.ndarray, side: int, scale: int = 2) -> np.ndarray:
    """The digit's ``scale`` x scan (white on black) centred on a black ``side`` x ``side`` page."""
    return _pad(_scan(digit, scale), side)


def _line_mask(side: int, points: Sequence[tuple[float, float]], width: float) -> np.ndarray:
    """A line (0..1, float32) through ``points`` of ``width`` px on a ``side`` page, anti-aliased at 4x."""
    big = Image.new("L", (side * 4, side * 4), 0)
    ImageDraw.Draw(big).line([(4 * x, 4 * y) for x, y in points], fill=255, width=max(1, round(4 * width)))
    return np.asarray(big.resize((side, side), Image.Resampling.BOX), np.float32) / 255.0


def ruled_lines(spacing: tuple[float, float], width: tuple[float, float], level: tuple[float, float],
                side: int = 64) -> Render:
    """A 2x scan on ruled paper: lines ``spacing`` px apart (seeded phase, tilt up to 3 degrees), ``width``
    px wide, of a grey ``level`` (the ink is 25), across the whole page and through the digit."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        reflectance = _on_paper(_page(digit, side), paper=1.0, pen=0.1)
        gap, pen, grey = float(rng.uniform(*spacing)), float(rng.uniform(*width)), float(rng.uniform(*level))
        tilt = np.tan(np.radians(rng.uniform(-3, 3))) * side
        lines = np.zeros((side, side), np.float32)
        for y in np.arange(rng.uniform(0, gap), side + abs(tilt), gap) - abs(tilt) / 2:
            lines = np.maximum(lines, _line_mask(side, [(-2, y), (side + 2, y + tilt)], pen))
        return _u8(245.0 * reflectance * (1 - lines * (1 - grey / 245.0)))

    return render


def stripe(width: tuple[float, float], level: tuple[float, float]) -> Render:
    """A bright stripe of ``width`` px and a seeded ``level`` across a 28x28 MNIST-polarity digit, at a seeded
    angle and offset through its middle: a ruled line on a scan already inverted and cut to 28x28."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(0, np.pi)
        cy, cx = 14 + rng.uniform(-5, 5, 2)
        dx, dy = 40 * np.cos(angle), 40 * np.sin(angle)
        band = _line_mask(28, [(cx - dx, cy - dy), (cx + dx, cy + dy)], float(rng.uniform(*width)))
        return _u8(np.maximum(digit.astype(np.float32), band * float(rng.uniform(*level))))

    return render


def box_border(gap: tuple[float, float], width: tuple[float, float], side: int = 72) -> Render:
    """A 2x scan inside a form's box: a dark rectangle whose sides lie ``gap`` px from the digit's ink box
    (seeded per side; negative: the border crosses the digit), ``width`` px wide, on a ``side`` page."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        page = _page(digit, side)
        rows, cols = np.flatnonzero(page.max(axis=1) > 64), np.flatnonzero(page.max(axis=0) > 64)
        top, bottom, left, right = (rows[0], rows[-1], cols[0], cols[-1]) if len(rows) else (8, side - 8, 8, side - 8)
        g = rng.uniform(*gap, 4)
        y0, y1 = max(1.0, top - g[0]), min(side - 2.0, bottom + g[1])
        x0, x1 = max(1.0, left - g[2]), min(side - 2.0, right + g[3])
        box = _line_mask(side, [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], float(rng.uniform(*width)))
        reflectance = _on_paper(page, paper=1.0, pen=0.1) * (1 - 0.9 * box)
        return _u8(245.0 * reflectance)

    return render


def _smooth_field(side: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """A random field on ``side`` px, smooth at ``side / cells`` px (bicubic from a seeded grid), 0..1."""
    grid = rng.random((cells + 3, cells + 3)).astype(np.float32)
    big = _resize(grid, (side + 3 * side // cells, side + 3 * side // cells), Image.Resampling.BICUBIC)
    off = int(rng.integers(0, 3 * side // cells // 2 + 1))
    field = big[off : off + side, off : off + side]
    return (field - field.min()) / max(float(field.max() - field.min()), 1e-6)


def fog(opacity: tuple[float, float], scale: int = 2) -> Render:
    """Dark ink on paper seen through haze: a random field at two scales (3 and 6 cells across the sheet)
    sets how much light grey haze covers each place, from ``opacity[0]`` to ``opacity[1]``, so contrast
    falls in blobs across the digit (ImageNet-C's fog, in spirit)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _on_paper(_scan(digit, scale) if scale > 1 else digit.astype(np.float32), paper=240.0, pen=25.0)
        side = img.shape[0]
        field = 0.65 * _smooth_field(side, 3, rng) + 0.35 * _smooth_field(side, 6, rng)
        cover = opacity[0] + (opacity[1] - opacity[0]) * field
        haze = float(rng.uniform(170, 230))
        return _u8(img * (1 - cover) + haze * cover)

    return render


def outline(grow: int = 6, wall: int = 4, size: int = 28) -> Render:
    """Hollow strokes, as an edge filter or an outline font gives: the pen at 4x grown by ``grow`` px, minus
    itself eroded by ``wall`` px (a wall of ``wall / 4`` MNIST pixels), area-reduced to ``size`` px: white on
    black at 28 (MNIST's own form), dark on paper when larger (a scan)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pen = np.clip((_scan(digit, STROKE_SCALE) - 64.0) * 4.0, 0, 255)
        thick = _morph(pen, grow, grow=True)
        inner = _morph(thick, wall, grow=False)
        hollow = thick.astype(np.float32) - inner.astype(np.float32)
        small = np.clip(_resize(hollow, (size, size), Image.Resampling.BOX), 0, 255)
        return _u8(small if size == 28 else _on_paper(small))

    return render


def salt_and_pepper(amount: float, scale: int = 2) -> Render:
    """A ``scale`` x scan, dark on paper (a 28x28 white-on-black digit at ``scale`` 1), with ``amount`` of its
    pixels set to black or white at random (impulse noise: photocopies, faxes)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = _u8(_on_paper(_scan(digit, scale))) if scale > 1 else digit.copy()
        hit = rng.random(out.shape) < amount
        out[hit] = np.where(rng.random(out.shape) < 0.5, 0, 255).astype(np.uint8)[hit]
        return out

    return render


def diffusion(radius: int, rounds: int = 2, sigma: float = 0.5) -> Render:
    """Ink diffused into the paper's fibres: a 2x scan on paper blurred (``sigma`` MNIST px), each pixel then
    taken from a seeded neighbour up to ``radius`` px away, ``rounds`` times, and blurred again
    (ImageNet-C's glass blur)."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = np.asarray(Image.fromarray(_u8(_on_paper(_scan(digit)))).filter(ImageFilter.GaussianBlur(2 * sigma)))
        side = img.shape[0]
        ys, xs = np.indices(img.shape)
        for _ in range(rounds):
            dy, dx = rng.integers(-radius, radius + 1, (2, side, side))
            img = img[np.clip(ys + dy, 0, side - 1), np.clip(xs + dx, 0, side - 1)]
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(2 * sigma)))

    return render


def low_resolution_page(height: int, factor: int, resample: Image.Resampling = Image.Resampling.NEAREST) -> Render:
    """The ``lowres`` digit ``height`` px tall, re-sampled ``factor`` times larger (a fax or a thumbnail
    enlarged onto a page: blocky with NEAREST), at a seeded place on a white page twice its size."""
    small = low_resolution(height)

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        tiny = small(digit, rng)
        h, w = tiny.shape
        big = np.clip(_resize(tiny, (w * factor, h * factor), resample), 0, 255)
        page = np.full((2 * big.shape[0], 2 * big.shape[1]), 250.0, np.float32)
        top = int(rng.integers(0, page.shape[0] - big.shape[0] + 1))
        left = int(rng.integers(0, page.shape[1] - big.shape[1] + 1))
        page[top : top + big.shape[0], left : left + big.shape[1]] = big
        return _u8(page)

    return render


# -- elastic, bleed-through, halftone, dotted -----------------------------------------------------

def _gaussian(a: np.ndarray, sigma: float) -> np.ndarray:
    """``a`` (float32, 2-D) smoothed by a Gaussian of ``sigma`` px, separably, edges mirrored."""
    r = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float32) / sigma) ** 2)
    kernel /= kernel.sum()
    p = np.pad(a.astype(np.float32), r, mode="reflect")
    p = sliding_window_view(p, len(kernel), axis=0) @ kernel
    return sliding_window_view(p, len(kernel), axis=1) @ kernel


def _sample(a: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``a`` read at fractional coordinates, bilinearly, outside the image as 0."""
    h, w = a.shape
    p = np.pad(a.astype(np.float32), 1)
    y, x = np.clip(ys + 1, 0, h), np.clip(xs + 1, 0, w)
    y0, x0 = np.floor(y).astype(np.intp), np.floor(x).astype(np.intp)
    fy, fx = y - y0, x - x0
    y1, x1 = np.minimum(y0 + 1, h + 1), np.minimum(x0 + 1, w + 1)
    return ((p[y0, x0] * (1 - fx) + p[y0, x1] * fx) * (1 - fy) + (p[y1, x0] * (1 - fx) + p[y1, x1] * fx) * fy)


def elastic(alpha: float, sigma: float, scale: int = 2) -> Render:
    """A hand's wobble (Simard et al.'s elastic distortion): every pixel displaced by a random field smoothed
    at ``sigma`` MNIST px, scaled to a spread (standard deviation) of ``alpha`` MNIST px, on a ``scale`` x
    scan, dark on paper."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        up = _scan(digit, scale)
        side = up.shape[0]
        ys, xs = np.indices((side, side), dtype=np.float32)
        fields = [_gaussian(rng.uniform(-1, 1, (side, side)), sigma * scale) for _ in range(2)]
        dy, dx = (f * (alpha * scale / max(float(f.std()), 1e-6)) for f in fields)
        return _u8(_on_paper(_sample(up, ys + dy, xs + dx)))

    return render


def bleed_through(strength: tuple[float, float], scale: int = 2) -> Render:
    """A 2x scan of a sheet written on both sides: another digit from the back (a stroke template, or the
    digit turned upside down), mirrored, blurred by the paper and at a seeded place, shows through at
    ``strength`` of the ink's darkness behind the digit."""
    backs = (from_template(four_open), from_template(four_closed), from_template(nine_straight_stem))

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pick = int(rng.integers(len(backs) + 1))
        if pick < len(backs):
            other = np.asarray(_resize(backs[pick](digit, rng), (28, 28), Image.Resampling.BOX))
        else:
            other = digit[::-1].astype(np.float32)
        other = np.roll(other[:, ::-1], tuple(int(v) for v in rng.integers(-4, 5, 2)), axis=(0, 1))
        ghost = _gaussian(_scan(np.clip(other, 0, 255).astype(np.uint8), scale), 1.0 * scale) / 255.0
        front = _on_paper(_scan(digit, scale), paper=1.0, pen=0.1)
        return _u8(240.0 * front * (1 - float(rng.uniform(*strength)) * ghost))

    return render


#: A clustered-dot screen (4x4): the order in which a halftone cell's pixels turn black as the tone darkens.
_SCREEN = np.array([[12, 5, 6, 13], [4, 0, 1, 7], [11, 3, 2, 8], [15, 10, 9, 14]], np.float32)


def halftone(tone: tuple[float, float], scale: int = 3) -> Render:
    """The digit printed through a dot screen, as a photocopied or printed form gives it: a ``scale`` x scan
    whose ink is a seeded grey ``tone`` (share of black), thresholded by a clustered-dot 4x4 screen at a
    seeded phase, so every stroke is a pattern of black dots on white paper."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        darkness = _scan(digit, scale) / 255.0 * float(rng.uniform(*tone))
        side = darkness.shape[0]
        reps = -(-(side + 4) // 4)
        screen = np.tile((_SCREEN + 0.5) / 16.0, (reps, reps))
        oy, ox = (int(v) for v in rng.integers(0, 4, 2))
        return np.where(darkness > screen[oy : oy + side, ox : ox + side], 20, 245).astype(np.uint8)

    return render


def dot_matrix(pitch: tuple[float, float], scale: int = 4) -> Render:
    """Strokes as rows of dots (a dot-matrix printer, a pen skipping): the pen at ``scale`` x sampled on a
    square lattice of a seeded ``pitch`` (MNIST px) and phase, each lattice point on the pen drawn as a round
    dot of 0.7 pitch, dark on paper, area-reduced to a 2x scan."""

    def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pen = np.clip((_scan(digit, scale) - 64.0) * 4.0, 0, 255)
        side = pen.shape[0]
        step = float(rng.uniform(*pitch)) * scale
        oy, ox = rng.uniform(0, step, 2)
        canvas = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(canvas)
        r = 0.35 * step
        for y in np.arange(oy, side, step):
            for x in np.arange(ox, side, step):
                if pen[int(y), int(x)] > 127:
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        dots = _resize(np.asarray(canvas), (side * 2 // scale, side * 2 // scale), Image.Resampling.BOX)
        return _u8(_on_paper(dots))

    return render


def _named(*shifts: Shift) -> dict[str, Shift]:
    return {s.name: s for s in shifts}


SHIFTS: dict[str, Shift] = _named(
    Shift("clean", "none", "MNIST as it is: a 28x28 PNG (the reference, not in the suite's average)", _clean),
    Shift("lowres-8", "resolution", "8 px tall, box-filtered, dark on paper (a fax)", low_resolution(8)),
    Shift("lowres-12", "resolution", "12 px tall (a thumbnail)", low_resolution(12)),
    Shift("lowres-16", "resolution", "16 px tall (a low-dpi scan)", low_resolution(16)),
    Shift("stroke-thin", "stroke", "pen 1 px thinner (4x erosion, octagon r=2)", stroke(2, grow=False)),
    Shift("stroke-thick", "stroke", "pen 2 px thicker (4x dilation, octagon r=4)", stroke(4, grow=True)),
    Shift("stroke-bold", "stroke", "pen 3 px thicker (4x dilation, octagon r=6)", stroke(6, grow=True)),
    Shift("slant", "geometry", "italic: sheared 0.35 (19 degrees) to the right", shear(0.35)),
    Shift("backslant", "geometry", "sheared 0.25 (14 degrees) to the left", shear(-0.25)),
    Shift("rotate-25", "geometry", "rotated 25 degrees either way", rotate(25.0)),
    Shift("small-noisy-canvas", "canvas", "24 px tall on 128x128 gray paper, noise sigma 6", small_in_canvas()),
    Shift("blur", "capture", "2x scan, Gaussian blur sigma 1.2 (MNIST px)", blur(1.2)),
    Shift("sensor-noise", "capture", "2x scan, Gaussian noise sigma 20", sensor_noise(20.0)),
    Shift("jpeg-q10", "capture", "2x scan as a JPEG at quality 10", _paper_scan, format="JPEG", quality=10),
    Shift("uneven-light", "paper", "2x scan, light falling 30% across the sheet", uneven_light(0.3)),
    Shift("coloured-paper", "paper", "yellow, pink, blue or green paper, dark ink (RGB)", coloured(PAPERS)),
    Shift("coloured-ink", "paper", "red, green, blue or purple ink on white (RGB)",
          coloured([((255, 255, 255), ink) for ink in INKS])),
    Shift("style-1-flag-base", "style", "MNIST 1s given a flag and a base", one_with_flag_and_base, labels=(1,)),
    Shift("style-7-crossbar", "style", "MNIST 7s given a crossbar", seven_with_crossbar, labels=(7,)),
    Shift("style-4-open", "style", "4s drawn open at the top (strokes)", from_template(four_open), labels=(4,)),
    Shift("style-4-closed", "style", "4s drawn closed, a triangle (strokes)", from_template(four_closed),
          labels=(4,)),
    Shift("style-9-straight-stem", "style", "9s drawn with a straight stem (strokes)",
          from_template(nine_straight_stem), labels=(9,)),
    Shift("lowres-8-page", "resolution", "8 px tall, enlarged 8x (blocky) onto a white page twice its size",
          low_resolution_page(8, 8)),
    Shift("grey-paper-light-ink", "paper-tone", "28x28, light digit on grey paper (paper 80-150, ink 90-130 lighter)",
          paper_tone((80, 150), (90, 130))),
    Shift("grey-paper-dark-ink", "paper-tone", "28x28, dark digit on grey paper lighter overall (paper 140-190, "
          "ink 80-120 darker)", paper_tone((140, 190), (-120, -80))),
    Shift("faint-pencil", "paper-tone", "2x scan, faint ink 45-70 levels below bright paper (225-250)",
          paper_tone((225, 250), (-70, -45), scale=2)),
    Shift("gradient", "shading", "2x scan, light falling from 230-250 to 70-110 across the sheet",
          gradient((230, 250), (70, 110))),
    Shift("vignette", "shading", "28x28, dark ink lit from near the middle, corners at 90-140",
          vignette((235, 250), (90, 140))),
    Shift("ruled-lines", "lines", "2x scan on ruled paper: lines 14-22 px apart, 1.5-3 px wide, grey 30-150",
          ruled_lines((14, 22), (1.5, 3.0), (30, 150))),
    Shift("stripe", "lines", "28x28, a bright line 1.5-3 px wide crossing the digit at any angle",
          stripe((1.5, 3.0), (160, 255))),
    Shift("box-border", "lines", "2x scan in a form's box whose sides run -4 to +6 px from the ink (crossing it)",
          box_border((-4, 6), (2.0, 3.5))),
    Shift("fog", "fog", "28x28, dark ink under haze covering 10-60% in blobs (random field)", fog((0.1, 0.6), 1)),
    Shift("outline", "outline", "28x28 hollow strokes: a 1 px wall around a pen 3 px thicker", outline()),
    Shift("speckle", "speckle", "28x28, 8% of pixels set black or white (salt and pepper)", salt_and_pepper(0.08, 1)),
    Shift("ink-diffusion", "diffusion", "2x scan, pixels scattered up to 1.5 MNIST px twice between blurs "
          "(glass blur)", diffusion(3)),
    Shift("elastic", "elastic", "2x scan, strokes bent by an elastic field (spread 1.2 MNIST px, smooth at 4)",
          elastic(1.2, 4.0)),
    Shift("bleed-through", "bleed-through", "2x scan, a mirrored digit from the back of the sheet showing "
          "through at 15-30% of the ink", bleed_through((0.15, 0.3))),
    Shift("halftone", "halftone", "3x scan printed through a 4x4 clustered-dot screen, ink tone 50-75%",
          halftone((0.5, 0.75))),
    Shift("dot-matrix", "dotted", "2x scan, strokes as round dots on a lattice 1.4-2 MNIST px apart",
          dot_matrix((1.4, 2.0))),
)


def resolve(names: Iterable[str] | None = None) -> list[Shift]:
    """The shifts called ``names`` (default: all, ``clean`` first), or a ConfigError naming the known ones."""
    if names is None:
        return list(SHIFTS.values())
    unknown = [n for n in names if n not in SHIFTS]
    if unknown:
        raise ConfigError(f"unknown shift {', '.join(unknown)}; the suite has: {', '.join(SHIFTS)}")
    return [SHIFTS[n] for n in names]


def calibration_shifts(held_out: Iterable[str] = HELD_OUT_FAMILIES) -> list[Shift]:
    """The shifts a temperature may be fitted on: every one but those of the ``held_out`` families."""
    held_out = set(held_out)
    return [s for s in resolve() if s.family not in held_out]


@dataclass(frozen=True)
class ShiftedSet:
    """One shift applied to (part of) a test split and decoded as production decodes it."""

    shift: Shift
    indices: np.ndarray  # into the test split
    images: np.ndarray  # uint8 (N, 28, 28): decode_image's output, what the model sees
    labels: np.ndarray
    #: The same files read by :func:`naive_decode` (the model alone, without the preprocessing), when asked.
    naive: np.ndarray | None = None


def naive_decode(data: bytes) -> np.ndarray:
    """The model alone on a file's pixels, without :func:`model.serving.preprocess.decode_image`'s work: the image in
    grey (Pillow's ``L``), area-resized to 28x28 as a whole (no framing, no cleaning), inverted when the
    median of its border is light (MNIST's polarity is the least the model needs). What the preprocessing
    is compared with: it must never do worse than this on any family."""
    img = Image.open(io.BytesIO(data)).convert("L")
    if img.size != (28, 28):
        img = img.resize((28, 28), Image.Resampling.BOX)
    a = np.asarray(img, np.uint8)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return 255 - a if np.median(border) > 127 else a.copy()


def pick(labels: np.ndarray, shift: Shift, limit: int | None = None, seed: int = SEED) -> np.ndarray:
    """The test indices a shift uses: its classes' images, in one seeded order, the first ``limit``
    (the same subset for every shift, so a CI run is a fair sample), sorted."""
    order = np.random.default_rng(seed).permutation(len(labels))
    if shift.labels is not None:
        order = order[np.isin(labels[order], shift.labels)]
    return np.sort(order[:limit] if limit is not None else order)


def build_suite(x: np.ndarray, y: np.ndarray, shifts: Sequence[Shift] | None = None,
                limit: int | None = None, seed: int = SEED, naive: bool = False) -> list[ShiftedSet]:
    """Every shift applied to test images ``x`` (uint8 (N, 28, 28)) with labels ``y``: each image
    encoded as a file and decoded by :func:`model.serving.preprocess.decode_image` (and by :func:`naive_decode`
    too with ``naive``). Scoring several models on one suite builds it once (building is most of the cost)."""
    from model.serving.preprocess import decode_image

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: give at least 1 image per shift")
    sets = []
    for shift in shifts if shifts is not None else resolve():
        indices = pick(y, shift, limit, seed)
        images = np.empty((len(indices), 28, 28), np.uint8)
        alone = np.empty((len(indices), 28, 28), np.uint8) if naive else None
        for row, index in enumerate(indices):
            data = shift.encode(x[index], int(index), seed)
            images[row] = decode_image(data)
            if alone is not None:
                alone[row] = naive_decode(data)
        sets.append(ShiftedSet(shift, indices, images, np.asarray(y[indices]), alone))
    return sets
