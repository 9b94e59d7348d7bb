"""Pixel cleaning before framing: what a scan or a photo of a digit on real paper brings, taken away.

:func:`clean_ink` turns a grayscale image (any size, either polarity) into light ink on a flat black
background, or says that the image is clean already (None), in which case the framing's own polarity
and background rules apply unchanged. In order:

1. speckle: impulse noise (isolated pixels far from all their neighbours) is counted, and only where
   there is enough of it are the impulses replaced by their neighbours' median, so strokes stay whole;
2. polarity: which side of the paper the ink lies on, from the mass of what stands out of a local
   background (light ink on darker paper, or dark ink on lighter paper, at any paper tone);
3. background: the paper's level on a coarse grid (a high percentile of each cell, median-filtered
   across cells), bilinearly upsampled, and the ink taken as reflectance against it, so grey, bright
   and shaded paper all become a flat background;
4. lines: thin straight lines that cross the whole image beyond the digit (ruled lines, stripes,
   box borders) are found in a Hough accumulator by the share of their chord that is ink, and
   removed except where a stroke crosses them;
5. outlines: hollow strokes (an edge filter's or an outline font's) are filled.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from PIL import Image

#: A pixel this far (gray levels) above or below all its neighbours is an impulse.
IMPULSE = 60.0
#: Paper this close to pure black or white (gray levels) is clean MNIST-style paper.
PAPER_SLACK = 6.0
#: Paper that varies less than this across the image (gray levels) needs no flattening.
FLAT = 12.0
#: Ink above this share of the peak is ink for line finding.
LINE_INK = 0.3
#: A line: at least this share of its chord across the image is ink (3x3 tolerance).
LINE_COVER = 0.9


def clean_ink(gray: np.ndarray, exact: bool | None = None) -> np.ndarray | None:
    """Light ink on a flat 0 background (float32, peak 255), or None when ``gray`` is clean already.

    ``exact`` (default: a 28x28 image) asks for the strict test a 28x28 file gets, whose pixels are kept as
    they are: clean there means paper at pure black or white, not merely flat.
    """
    g = np.asarray(gray, np.float32)
    if g.ndim != 2 or min(g.shape) < 8:
        return None
    if exact is None:
        exact = g.shape == (28, 28)
    g, speckled = _despeckle(g)
    dark = _dark_ink(g)
    p = g if dark else 255.0 - g  # ink dark on light paper from here on
    paper = _paper_grid(p)
    if exact:
        flat = float(paper.min()) >= 255.0 - PAPER_SLACK
    else:
        flat = float(paper.max() - paper.min()) <= FLAT and dark == (_border_median(g) > 127.0)
    if flat:
        ink = np.clip(255.0 - p, 0, None) if exact else np.clip(float(np.median(paper)) - p, 0, None)
    else:
        level = _paper_level(p, paper)
        ink = np.clip(1.0 - p / np.maximum(level, 16.0), 0, 1) * 255.0
    lines = _remove_lines(ink)
    if flat and not speckled and lines is None:
        return None
    if lines is not None:
        ink = lines
    peak = float(ink.max())
    return ink * (255.0 / peak) if peak > 0 else ink


def _border_median(a: np.ndarray) -> float:
    return float(np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])))


def _neighbours(a: np.ndarray) -> np.ndarray:
    """The 8 neighbours of every pixel, (8, H, W), mirrored at the edges (a pixel is never its own neighbour)."""
    h, w = a.shape
    p = np.pad(a, 1, mode="reflect")
    return np.stack([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)])


def _despeckle(g: np.ndarray) -> tuple[np.ndarray, bool]:
    """``g`` with impulse noise removed, and whether there was any. Detection is strict (a pixel beyond
    all 8 neighbours), so that clean strokes never trigger it; removal then also takes pairs of impulses
    (a pixel beyond 7 of its neighbours) and leaves every pixel with two like neighbours (a stroke) alone."""
    nb = _neighbours(g)
    count = np.count_nonzero(g - nb.max(axis=0) > IMPULSE) + np.count_nonzero(nb.min(axis=0) - g > IMPULSE)
    if count < max(3, 0.002 * g.size):
        return g, False
    for _ in range(2):
        nb.sort(axis=0)
        hit = (g - nb[6] > IMPULSE) | (nb[1] - g > IMPULSE)
        if not hit.any():
            break
        g = np.where(hit, (nb[3] + nb[4]) * 0.5, g)
        nb = _neighbours(g)
    return g, True


def _cells(shape: tuple[int, ...], size: int) -> int:
    """Grid cells across the short side: cells about ``size`` px, 4 to 8 of them."""
    return int(np.clip(min(shape) // size, 4, 8))


def _blocks(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` cut into an ``n`` x ``n`` grid of cells, (n, n, cell pixels) (a remainder strip left out)."""
    h, w = a.shape
    ch, cw = h // n, w // n
    return a[: ch * n, : cw * n].reshape(n, ch, n, cw).transpose(0, 2, 1, 3).reshape(n, n, ch * cw)


def _smooth(grid: np.ndarray) -> np.ndarray:
    """Each cell the median of its 3x3 cells, the grid extended linearly at its edges: a cell that ink
    fills takes its neighbours' level, and a linear shading passes unchanged."""
    h, w = grid.shape
    p = np.pad(grid, 1, mode="reflect", reflect_type="odd")
    return np.median(np.stack([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]), axis=0)


def _grid(a: np.ndarray, q: float, size: int = 28) -> np.ndarray:
    """The ``q``-th percentile of each cell of a coarse grid over ``a``, smoothed across cells."""
    return _smooth(np.percentile(_blocks(a, _cells(a.shape, size)), q, axis=2).astype(np.float32))


def _upsample(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A grid over an image of ``shape`` bilinearly resized to it, cell centres on cell centres and
    extended linearly beyond the outer ones (so a shading reaches the image's edges)."""
    n = grid.shape[0]
    ch, cw = shape[0] / n, shape[1] / n
    padded = np.pad(grid.astype(np.float32), 1, mode="reflect", reflect_type="odd")
    size = (round(cw * (n + 2)), round(ch * (n + 2)))
    big = Image.fromarray(padded, mode="F").resize(size, Image.Resampling.BILINEAR)
    top, left = round(ch), round(cw)
    return np.asarray(big)[top : top + shape[0], left : left + shape[1]]


def _paper_level(p: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The paper's level at every pixel (dark ink on light paper): the median of each cell's paper pixels
    (those the ``coarse`` grid's level shows as no ink), on a grid twice as fine; cells with no paper take
    their neighbours' level."""
    first = _upsample(coarse, p.shape)
    paper = np.where(p > first * 0.85, p, np.nan)
    blocks = _blocks(paper, _cells(p.shape, 7))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        grid = np.nanmedian(blocks, axis=2)
        for _ in range(4):
            holes = np.isnan(grid)
            if not holes.any():
                break
            h, w = grid.shape
            padded = np.pad(grid, 1, mode="edge")
            near = np.nanmedian(np.stack([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]),
                                axis=0)
            grid = np.where(holes, near, grid)
    grid = np.where(np.isnan(grid), np.nanmax(coarse), grid)
    return _upsample(grid.astype(np.float32), p.shape)


def _dark_ink(g: np.ndarray) -> bool:
    """Whether the ink is darker than the paper: the side of a local background (the cells' medians) on
    which more mass stands out beyond the noise."""
    r = g - _upsample(_grid(g, 50), g.shape)
    spread = float(np.median(np.abs(r)))
    t = max(10.0, 4.5 * spread)
    return float(-r[r < -t].sum()) > float(r[r > t].sum())


def _paper_grid(p: np.ndarray) -> np.ndarray:
    """The paper's level per cell (dark ink on light paper): a high percentile, above all but the thickest ink
    (cells are several strokes wide), and still below the noise's peaks."""
    return _grid(p, 95)


# -- lines ------------------------------------------------------------------------------------------

_THETAS = np.deg2rad(np.arange(0.0, 180.0, 2.0))
_COS, _SIN = np.cos(_THETAS).astype(np.float32), np.sin(_THETAS).astype(np.float32)
#: Lines are looked for in images up to this size (larger ones are photos and page scans, framed as before).
LINE_MAX_SIDE = 160


@functools.lru_cache(maxsize=16)
def _chords(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Every pixel's count per (angle, distance) bin: the length of each line's chord across the image."""
    ys, xs = np.indices(shape)
    return _accumulate(ys.ravel(), xs.ravel(), shape)


def _accumulate(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    offset = int(np.ceil(np.hypot(*shape))) + 1
    rho = np.rint(xs[:, None] * _COS + ys[:, None] * _SIN).astype(np.int64) + offset
    flat = (np.arange(len(_THETAS)) * (2 * offset + 1))[None, :] + rho
    acc = np.bincount(flat.ravel(), minlength=len(_THETAS) * (2 * offset + 1))
    return acc.reshape(len(_THETAS), 2 * offset + 1), offset


def _remove_lines(ink: np.ndarray) -> np.ndarray | None:
    """``ink`` without the straight lines that cross the whole image beyond the digit, or None if none do."""
    h, w = ink.shape
    if max(h, w) > LINE_MAX_SIDE:
        return None
    peak = float(ink.max())
    if peak <= 0:
        return None
    mask = ink > LINE_INK * peak
    grown = np.max(_neighbours(mask.astype(np.uint8)), axis=0).astype(bool) | mask
    ys, xs = np.nonzero(grown)
    if len(ys) < max(h, w) * 0.6:
        return None
    acc, offset = _accumulate(ys, xs, (h, w))
    chords, _ = _chords((h, w))
    long = chords >= 0.6 * max(h, w)
    chords = np.maximum(chords, 1)
    yy, xx = np.indices((h, w), dtype=np.float32)
    widest = max(3.0, 0.12 * min(h, w))
    bands = []
    rejected = np.zeros(acc.shape, bool)
    my, mx = np.nonzero(mask)
    core = _accumulate(my, mx, (h, w))[0] / chords
    for _ in range(16):
        cover = np.where(long & ~rejected, acc / chords, 0.0)
        # of the bins whose chord is covered, the one most covered by the line's core: its true angle
        core3 = core + np.roll(core, 1, axis=1) + np.roll(core, -1, axis=1)
        best = np.where(cover >= LINE_COVER, 10.0 + core3 + 0.5 * core, cover)
        t, r = np.unravel_index(int(np.argmax(best)), cover.shape)
        if cover[t, r] < LINE_COVER:
            break
        r0 = r1 = r
        while r0 > 0 and long[t, r0 - 1] and acc[t, r0 - 1] >= LINE_COVER * chords[t, r0 - 1]:
            r0 -= 1
        while r1 < acc.shape[1] - 1 and long[t, r1 + 1] and acc[t, r1 + 1] >= LINE_COVER * chords[t, r1 + 1]:
            r1 += 1
        # the dilation widened the run by a pixel each side, and a pixel either side of it is the line's soft edge
        lo, hi = float(r0 - offset), float(r1 - offset)
        rho = xx * _COS[t] + yy * _SIN[t]
        band = (rho >= lo - 1.0) & (rho <= hi + 1.0)
        if hi - lo - 2 > widest or not _thin(mask, t, lo, hi, xx, yy):
            rejected[t, r0 : r1 + 1] = True
            continue
        bands.append((t, lo, hi, band))
        gone = grown & band
        grown &= ~band
        gy, gx = np.nonzero(gone)
        acc = acc - _accumulate(gy, gx, (h, w))[0]
        gy, gx = np.nonzero(mask & band)
        core = core - _accumulate(gy, gx, (h, w))[0] / chords
    if not bands:
        return None
    rest = mask.copy()
    for *_, band in bands:
        rest &= ~band
    rest &= np.min(_neighbours(rest.astype(np.uint8)), axis=0).astype(bool)  # eroded: no slivers of a line's edge
    out = ink
    for t, lo, hi, band in bands:
        if _beyond_digit(rest, band, t, xx, yy):
            out = _cut(out, t, lo, hi, xx, yy)
    return None if out is ink else out


def _thin(mask: np.ndarray, t: int, lo: float, hi: float, xs: np.ndarray, ys: np.ndarray) -> bool:
    """Whether the band is a thin line along most of its length: paper just beyond it on both sides."""
    h, w = mask.shape
    c, s = _COS[t], _SIN[t]
    centre, reach = (lo + hi) / 2, (hi - lo) / 2 + 2.0
    span = np.arange(-np.hypot(h, w), np.hypot(h, w), 1.0, dtype=np.float32)
    px, py = centre * c - span * s, centre * s + span * c  # points along the line's centre
    inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
    px, py = px[inside], py[inside]
    clear = np.ones(len(px), bool)
    for d in (reach, -reach):
        qx, qy = np.rint(px + d * c).astype(int), np.rint(py + d * s).astype(int)
        ok = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
        clear &= ~np.where(ok, mask[np.clip(qy, 0, h - 1), np.clip(qx, 0, w - 1)], False)
    return len(clear) > 0 and float(clear.mean()) >= 0.5


def _beyond_digit(rest: np.ndarray, band: np.ndarray, t: int, xs: np.ndarray, ys: np.ndarray) -> bool:
    """Whether the line reaches past the rest of the ink at both ends: a line, not a stroke of the digit."""
    if not rest.any():
        return False
    along = -xs * _SIN[t] + ys * _COS[t]
    ends = along[band]
    inner = np.percentile(along[rest], [1, 99])
    margin = max(2.0, 0.06 * float(ends.max() - ends.min()))
    return float(ends.min()) + margin <= inner[0] and float(inner[1]) <= float(ends.max()) - margin


def _cut(ink: np.ndarray, t: int, lo: float, hi: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``ink`` with a line's band bridged: each band pixel takes the best pair of ink values just beyond the
    band on either side that a straight stroke through it would join (crossing at up to 45 degrees from
    square), the lesser of the pair. Where a stroke crosses the line it stays; elsewhere the band becomes paper."""
    h, w = ink.shape
    c, s = _COS[t], _SIN[t]
    rho = xs * c + ys * s
    band = (rho >= lo - 1.0) & (rho <= hi + 1.0)
    centre, reach = (lo + hi) / 2, (hi - lo) / 2 + 1.5
    by, bx, br = ys[band], xs[band], rho[band]
    best = np.zeros(len(by), np.float32)
    for slide in range(-int(np.ceil(reach)), int(np.ceil(reach)) + 1):
        pair = []
        for side in (1.0, -1.0):
            shift = centre + side * reach - br
            qx = np.rint(bx + shift * c - side * slide * s).astype(int)
            qy = np.rint(by + shift * s + side * slide * c).astype(int)
            inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
            pair.append(np.where(inside, ink[np.clip(qy, 0, h - 1), np.clip(qx, 0, w - 1)], 0.0))
        np.maximum(best, np.minimum(*pair), out=best)
    out = ink.copy()
    out[band] = best
    return out
