"""Line removal restores the strokes it cut: a stroke that reaches a removed line from both sides is bridged
across it, a stroke that shows through a line (brighter than it) is kept, paper the line ran over stays paper,
and a clean digit is never touched."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.serving.cleaning import _restore, clean_ink
from model.serving.preprocess import decode_image


def _png(a: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(a).save(out, format="PNG")
    return out.getvalue()


def _line(points: list[tuple[float, float]], width: float, size: int = 28) -> np.ndarray:
    """A white anti-aliased polyline on black (drawn at 4x), uint8 ``size`` x ``size``."""
    big = Image.new("L", (4 * size, 4 * size), 0)
    ImageDraw.Draw(big).line([(4 * x, 4 * y) for x, y in points], fill=255, width=round(4 * width))
    return np.asarray(big.resize((size, size), Image.Resampling.BOX))


def _stem() -> np.ndarray:
    """A slanted stem, a 1 written with a forward lean, 2.5 px wide."""
    return _line([(17.0, 4.0), (12.0, 24.0)], 2.5)


def _stroke_gaps(out: np.ndarray, stem: np.ndarray) -> int:
    """Rows along the stem where its centre line holds no ink (under 40% of the peak): cuts in the stroke."""
    rows = np.flatnonzero(stem.max(axis=1) > 200)
    centres = [int(np.argmax(stem[r])) for r in rows]
    peak = float(out.max())
    return sum(out[r, max(c - 1, 0) : c + 2].max() < 0.4 * peak for r, c in zip(rows, centres, strict=True))


def test_a_stroke_cut_by_a_removed_line_is_restored_and_the_paper_under_it_stays_paper():
    """The repair on its own: a shallow stroke and a line over it, the line's band cleared; the stroke's pixels
    in the band come back at the stroke's level, the band over paper stays empty."""
    stem = _line([(8.0, 24.0), (20.0, 4.0)], 2.5)  # crosses the line at 31 degrees from square
    line = np.zeros((28, 28), np.float32)
    line[13:16] = 200.0
    before = np.maximum(stem.astype(np.float32), line)
    after = before.copy()
    after[13:16] = 0.0  # the band cleared, strokes and all
    out = _restore(before, after, 45, 3.0)  # index 45 of the accumulator's angles: a horizontal line
    crossing = stem[13:16] > 200
    assert crossing.sum() >= 6
    assert (out[13:16][crossing] >= 150).all()  # the stroke, back across the line
    paper = _line([(8.0, 24.0), (20.0, 4.0)], 6.0)[13:16] == 0  # well away from the stroke
    assert paper.sum() > 40 and out[13:16][paper].max() == 0  # the line over paper: still gone
    np.testing.assert_array_equal(out[:13], after[:13])  # nothing else changes
    np.testing.assert_array_equal(out[16:], after[16:])
    untouched = np.zeros((28, 28), np.float32)
    np.testing.assert_array_equal(_restore(untouched, untouched, 45, 3.0), untouched)


@pytest.mark.parametrize("degrees", [0, 24, 33, 39])
def test_a_digit_crossed_by_a_bright_stripe_keeps_its_stroke_whole(degrees):
    """A bright stripe 3 px wide, rising at ``degrees``, across a slanted stem (a 28x28 file): the stripe is gone
    beyond the stroke and the stroke has no gap where the stripe crossed it (the steeper ones, crossing the
    stroke far from square, were cut before the repair)."""
    stem = _stem()
    rise = 16 * np.tan(np.radians(degrees))
    stripe = _line([(-2.0, 14.0 + rise), (30.0, 14.0 - rise)], 3.0)
    crossed = np.maximum(stem, (stripe.astype(np.float32) * 0.8).astype(np.uint8))
    out = clean_ink(crossed)
    assert out is not None
    far = (stripe > 100) & (_line([(17.0, 4.0), (12.0, 24.0)], 9.0) == 0)
    assert far.sum() > 20 and out[far].max() < 0.15 * out.max()  # the stripe over paper: gone
    assert _stroke_gaps(out, stem) == 0  # the stroke: whole across it
    decoded = decode_image(_png(crossed))
    assert decoded.shape == (28, 28) and decoded.max() > 200


def test_a_digit_on_ruled_paper_keeps_its_stroke_whole():
    """A 2x scan of the stem on ruled paper, dark lines 3 px wide crossing it: lines gone, stroke whole."""
    stem = _line([(17.0, 4.0), (12.0, 24.0)], 2.5, 28)
    big = np.asarray(Image.fromarray(stem).resize((56, 56), Image.Resampling.BICUBIC)).astype(np.float32)
    page = 245.0 - 220.0 * big / 255.0
    for y in (4, 18, 34, 52):  # two cross the stem, two run over paper above and below it
        page[y : y + 3] = np.minimum(page[y : y + 3], 60.0)
    out = clean_ink(np.clip(page, 0, 255).astype(np.uint8))
    assert out is not None
    ink = np.asarray(Image.fromarray(out.astype(np.float32), mode="F").resize((28, 28), Image.Resampling.BOX))
    assert _stroke_gaps(ink, stem) == 0
    assert ink[:, :6].max() < 0.15 * ink.max() and ink[:, -6:].max() < 0.15 * ink.max()  # lines beyond it: gone


def test_a_clean_digit_is_not_touched():
    """A clean 28x28 stroke (and the stem drawn here): no line is found, nothing is cleaned."""
    assert clean_ink(_stem()) is None
    np.testing.assert_array_equal(decode_image(_png(_stem())), _stem())


def test_a_stroke_under_a_lighter_stripe_along_it_shows_through():
    """A stripe lighter than the ink lying along a 7's stem (a 28x28 file): the stem is brighter than the stripe, so
    it is kept whole where the stripe lies on it, and the stripe is gone beyond the digit."""
    seven = _line([(7.0, 6.0), (20.0, 6.0), (12.0, 24.0)], 2.5)
    stripe = _line([(24.6, -2.0), (10.3, 30.0)], 2.5)  # the stem's own slant, a pixel beside its centre line
    crossed = np.maximum(seven, (stripe.astype(np.float32) * 0.65).astype(np.uint8))
    out = clean_ink(crossed)
    assert out is not None
    for row in range(9, 24):  # the stem, clear of the bar
        assert out[row][seven[row] > 200].max() >= 0.4 * out.max()
    beyond = (stripe > 100) & ((np.arange(28) < 3) | (np.arange(28) > 26))[:, None]
    assert beyond.sum() > 6 and out[beyond].max() < 0.15 * out.max()


@pytest.mark.parametrize("left, right", [(8, 49), (12, 44)])
def test_a_bar_under_a_box_side_is_kept(left, right):
    """A 2x scan of a 7 in a form's box whose top side lies on the 7's bar (dark ink over dark ink is darker), the
    box wide or as narrow as the bar, so that the bar runs along most of the side: the bar stays, and the box's
    other sides, over paper, are gone."""
    seven = _line([(7.0, 6.0), (20.0, 6.0), (12.0, 24.0)], 2.5)
    seven = np.asarray(Image.fromarray(seven).resize((56, 56), Image.Resampling.BICUBIC)).astype(np.float32) / 255.0
    box = np.zeros((56, 56), np.float32)
    box[11:14, left:right] = box[49:52, left:right] = 1.0  # the top on the bar (rows 10-14), the bottom below the stem
    box[11:52, left : left + 3] = box[11:52, right - 3 : right] = 1.0
    page = 245.0 * (1.0 - 0.9 * seven) * (1.0 - 0.9 * box)
    out = clean_ink(np.clip(page, 0, 255).astype(np.uint8))
    assert out is not None
    bar = out[10:15, 16:38].max(axis=0)  # the bar, clear of the box's corners
    assert (bar > 0.4 * out.max()).all()
    sides = out[20:45, left : left + 3].max(), out[20:45, right - 3 : right].max()
    assert max(sides) < 0.15 * out.max()


@pytest.mark.parametrize("y", [18.0, 19.0])
def test_a_stripe_beside_a_round_digit_for_most_of_its_length_is_removed(y):
    """A 0 filling a 28x28 file, a bright stripe crossing its lower part at a shallow angle: the ring's wall runs
    beside the stripe for most of its length, and the stripe is still found and gone beyond the ring."""
    big = Image.new("L", (112, 112), 0)
    ImageDraw.Draw(big).ellipse((16, 8, 96, 104), outline=255, width=12)
    ring = np.asarray(big.resize((28, 28), Image.Resampling.BOX))
    stripe = _line([(-2.0, y), (30.0, y + 3.0)], 2.0)
    out = clean_ink(np.maximum(ring, stripe))
    assert out is not None
    beyond = (stripe > 100) & ((np.arange(28) < 3) | (np.arange(28) > 25))[None, :]
    assert beyond.sum() > 6 and out[beyond].max() < 0.15 * out.max()
