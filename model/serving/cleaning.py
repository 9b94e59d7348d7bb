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
4. lines: thin straight lines that cross the whole image beyond the digit (ruled lines, stripes) are
   found in a Hough accumulator by the share of their chord that is ink, and removed except where a
   stroke crosses them or shows through them (ink clearly above the line's own level); a box drawn
   round the digit (a form's field) likewise;
5. outlines: hollow strokes (an edge filter's or an outline font's) are filled: paper enclosed by thin
   walls in channels narrower than a loop's hole (:func:`fill_outlines`);
6. framing: lone specks of paper noise away from the strokes are dropped, so they do not widen the frame.

Each step changes the pixels only where its trigger is found. An image larger than ANALYSIS_SIDE that
needs any of it is cleaned (and then framed) box-reduced to about that size.
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
    if not exact and _plain(g):
        return None
    # A large image that needs cleaning is cleaned, and then framed, at about ANALYSIS_SIDE px: a digit
    # that fills a photo is still 50-100 px tall there, and every step costs a tenth of what it would.
    g = _shrunk(g)
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
    if lines is not None:
        ink = lines
    box = _remove_box(ink)
    if box is not None:
        ink = box
    filled = fill_outlines(ink)
    if filled is not None:
        ink = filled
    strays = None if exact else _strays(ink)
    if strays is not None:
        ink = np.where(strays, 0.0, ink)
    if flat and not speckled and lines is None and box is None and filled is None and strays is None:
        return None
    peak = float(ink.max())
    return ink * (255.0 / peak) if peak > 0 else ink


def _plain(g: np.ndarray) -> bool:
    """Clean at a glance: paper of one level all round the edge (no shading, speckle or line reaches it),
    ink on the side of it that the framing's border rule expects, and no box drawn round the digit."""
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    level = float(border[0])
    if float(border.max() - border.min()) > 2.0:
        return False
    below, above = level - float(g.min()), float(g.max()) - level
    if (below > above) != (level > 127.0):
        return False
    ink = np.abs(_shrunk(g) - level)
    return _find_box(ink) is None and fill_outlines(ink) is None


def _strays(ink: np.ndarray) -> np.ndarray | None:
    """Pixels bright enough to count as ink for framing (20% of the peak) that stand alone or in pairs
    (paper noise: a stroke, even 1 px wide, has at least two such neighbours) away from the strokes, where
    there are a few: what would widen the frame."""
    peak = float(ink.max())
    if peak <= 0:
        return None
    mask = ink > 0.2 * peak
    company = _neighbours(mask.astype(np.uint8)).sum(axis=0, dtype=np.int16)
    strays = mask & (company < 2)
    if np.count_nonzero(strays) < 3:
        return None
    strays &= ~_dilate(mask & ~strays, 2)  # specks beside a stroke are its own (a blur's, a scatter's)
    return strays if strays.any() else None


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


#: Images larger than this are cleaned (and framed) box-reduced to about this size.
ANALYSIS_SIDE = 160


def _shrunk(g: np.ndarray) -> np.ndarray:
    """``g`` box-reduced by a whole factor to at most :data:`ANALYSIS_SIDE` px (``g`` itself if small)."""
    factor = -(-max(g.shape) // ANALYSIS_SIDE)
    if factor < 2:
        return g
    return np.asarray(Image.fromarray(np.ascontiguousarray(g, np.float32), mode="F").reduce(factor))


def _paper_level(p: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The paper's level at every pixel (dark ink on light paper): the median of each cell's paper pixels
    (those the ``coarse`` grid's level shows as no ink), on a grid twice as fine; cells with no paper take
    their neighbours' level."""
    first = _upsample(coarse, p.shape)
    paper = np.where(p > first * 0.85, p, np.nan)
    grid = _nan_median(_blocks(paper, _cells(p.shape, 7)))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
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


def _nan_median(blocks: np.ndarray) -> np.ndarray:
    """The median of each cell's values that are not NaN (NaN where none are), along the last axis: NaN
    sorts last, so it is the middle of each row's valid prefix (a tenth of ``np.nanmedian``'s cost here)."""
    ordered = np.sort(blocks, axis=-1)
    valid = np.count_nonzero(~np.isnan(blocks), axis=-1)
    low = np.take_along_axis(ordered, np.maximum(valid - 1, 0)[..., None] // 2, axis=-1)[..., 0]
    high = np.take_along_axis(ordered, (valid // 2)[..., None], axis=-1)[..., 0]
    return np.where(valid > 0, (low + high) * 0.5, np.nan)


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
    bins = 2 * offset + 1
    rho = xs.astype(np.float32)[:, None] * _COS + ys.astype(np.float32)[:, None] * _SIN
    rho += offset + 0.5 + _BASES(bins)
    acc = np.bincount(rho.astype(np.int32).ravel(), minlength=len(_THETAS) * bins)
    return acc.reshape(len(_THETAS), bins), offset


@functools.lru_cache(maxsize=16)
def _BASES(bins: int) -> np.ndarray:
    """Where each angle's bins start in the flat accumulator."""
    return (np.arange(len(_THETAS), dtype=np.float32) * bins)[None, :]


def _remove_lines(ink: np.ndarray) -> np.ndarray | None:
    """``ink`` without the straight lines that cross the whole image beyond the digit, or None if none do."""
    h, w = ink.shape
    if max(h, w) > LINE_MAX_SIDE:
        return None
    peak = float(ink.max())
    if peak <= 0:
        return None
    mask = ink > LINE_INK * peak
    if not (mask[:2].any() or mask[-2:].any() or mask[:, :2].any() or mask[:, -2:].any()):
        return None  # a line across the image reaches its edges
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
    # of the bins whose chord is covered, the one most covered by the line's core is its true angle
    core3 = 10.0 + core + np.roll(core, 1, axis=1) + np.roll(core, -1, axis=1) + 0.5 * core
    for _ in range(16):
        cover = acc / chords
        cover[~long | rejected] = 0.0
        best = np.where(cover >= LINE_COVER, core3, cover)
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
    if not bands:
        return None
    lined = np.zeros_like(mask)
    for *_, band in bands:
        lined |= band
    rest = mask & ~lined
    eroded = rest & np.min(_neighbours(rest.astype(np.uint8)), axis=0).astype(bool)  # no slivers of a line's edge
    # a thin pen's strokes do not survive the erosion: then the digit is the ink a pixel clear of the lines
    rest = eroded if np.count_nonzero(eroded) >= 0.3 * np.count_nonzero(rest) else rest & ~_dilate(lined, 1)
    out = ink
    for t, lo, hi, band in bands:
        if _beyond_digit(rest, band, t, xx, yy):
            out = _taken_out(out, _bridge_or_clear(out, rest, t, lo, hi, band, xx, yy), t, lo, hi, band,
                             _line_level(out, [(t, band)]))
    return None if out is ink else out


#: Ink in a line's band above the line's own level by this share of the peak may be a stroke over the line...
ABOVE_LINE = 0.01
#: ...if the ink under the line, unmixed from it, is at least this share of the peak: a stroke's core.
UNDER_LINE = 0.5


def _taken_out(before: np.ndarray, cleared: np.ndarray, t: int, lo: float, hi: float, band: np.ndarray,
               level: float) -> np.ndarray:
    """``before`` with the line at angle ``t`` between ``lo`` and ``hi`` taken out, ``cleared`` being the ink with
    the line's pixels removed: the strokes the removal cut are restored (:func:`_restore`), and ink brighter than
    the line's own ``level`` shows through it (:func:`_above_line`)."""
    return _above_line(before, _restore(before, cleared, t, hi - lo + 2.0), band, level)


def _line_level(ink: np.ndarray, lines: list[tuple[int, np.ndarray]]) -> float:
    """The ink level of ``lines`` ((angle, band) pairs drawn with one pen): along each line, the brightest of its
    band across its width at each step, where that is ink; of those, the level that 30% of their length is at or
    under. A line lies over paper along most of its length and is at least as bright where it crosses a stroke, so
    the digit does not raise it."""
    peak = float(ink.max())
    profiles = []
    for t, band in lines:
        ys, xs = np.nonzero(band)
        along = np.rint(-xs * _SIN[t] + ys * _COS[t]).astype(np.intp)
        along -= along.min()
        profile = np.zeros(int(along.max()) + 1, np.float32)
        np.maximum.at(profile, along, ink[ys, xs])
        profiles.append(profile[profile > LINE_INK * peak])
    profile = np.concatenate(profiles)
    return float(np.percentile(profile, 30)) if len(profile) else peak


def _above_line(before: np.ndarray, after: np.ndarray, band: np.ndarray, level: float) -> np.ndarray:
    """``after`` with the band's pixels kept as they were in ``before`` where they are brighter than the line's own
    ``level`` and what lies under the line there is a stroke's core (:data:`ABOVE_LINE`, :data:`UNDER_LINE`): a
    stroke crossing or running along a line shows through it (a lighter line under darker ink, or two inks over
    each other), so it is the digit's, whatever the line's geometry."""
    peak = float(before.max())
    if peak <= 0:
        return after
    b, line = before / peak, level / peak
    # the ink under the line, were the two inks laid over each other (each passing a share of the light): a
    # stroke's soft edge beside the line adds little, a stroke's core across it much
    # (a line within 5% of the peak is taken at 95%: below that, no stroke under it can be told from it)
    under = 1.0 - (1.0 - b) / max(1.0 - line, 0.05)
    keep = band & (b > line + ABOVE_LINE) & (under > UNDER_LINE) & (before > after)
    return np.where(keep, before, after) if keep.any() else after


#: A stroke is looked for across a removed line up to this far from square to it (degrees): further, the two
#: sides' ink that a path would join is more often two strokes beside the line than one crossing it.
CROSSING = 30.0
#: Directions (radians from a line's normal) in which a stroke is looked for across a removed line.
_ACROSS = np.deg2rad(np.arange(-CROSSING, CROSSING + 1.0, 15.0))


def _restore(before: np.ndarray, after: np.ndarray, t: int, width: float) -> np.ndarray:
    """``after`` (a line of ``width`` px at angle ``t`` removed from ``before``) with the strokes that the removal
    cut restored: a removed pixel (ink before, paper after) that has ink on both sides across the line, along a
    straight path within :data:`CROSSING` degrees of square to it, within the line's width and a pixel and a half
    beyond, takes the lesser of the two sides' ink (never more than it had). Paper the line ran over stays paper:
    only a stroke reaching the line from both sides bridges it."""
    peak = float(before.max())
    removed = (before - after > LINE_INK * peak) & (after < LINE_INK * peak)
    if peak <= 0 or not removed.any():
        return after
    h, w = after.shape
    left = np.where(removed, 0.0, after)  # the ink the removal kept: what a stroke on either side is
    ry, rx = np.nonzero(removed)
    pad = int(np.ceil((width + 2.0) / np.cos(_ACROSS[0]))) + 1
    sheet = np.pad(left, pad)
    theta = float(_THETAS[t])
    best = np.zeros(len(ry), np.float32)
    for a in _ACROSS:
        uy, ux = np.sin(theta + a), np.cos(theta + a)
        steps = np.arange(1, int(np.ceil((width + 1.5) / np.cos(a))) + 1, dtype=np.float32)[:, None]
        sides = []
        for sign in (1.0, -1.0):
            qy = np.rint(ry + sign * steps * uy).astype(np.intp) + pad
            qx = np.rint(rx + sign * steps * ux).astype(np.intp) + pad
            sides.append(sheet[qy, qx].max(axis=0))
        best = np.maximum(best, np.minimum(*sides))
    fill = np.where(best > LINE_INK * peak, np.minimum(best, before[ry, rx]), after[ry, rx])
    out = after.copy()
    out[ry, rx] = fill
    return out


def _bridge_or_clear(ink: np.ndarray, rest: np.ndarray, t: int, lo: float, hi: float, band: np.ndarray,
                     xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The line removed: bridged across the digit (:func:`_cut`) where it crosses strokes; but where
    bridging would take much more ink than the line's own from the digit's stretch of it (the line runs
    along a stroke), that stretch is left as it is and only the line beyond the digit is cleared."""
    cut = _cut(ink, t, lo, hi, xs, ys)
    along = -xs * _SIN[t] + ys * _COS[t]
    first, last = np.percentile(along[rest], [1, 99])
    over = band & (along >= first - 1.0) & (along <= last + 1.0)
    beyond = band & ~over
    if not beyond.any() or not over.any():
        return cut
    # the line's ink per unit of its length, where it runs over paper alone (one stretch each side)
    whole, inner = float(np.ptp(along[band])) + 1.0, float(np.ptp(along[over])) + 1.0
    per_length = float(ink[beyond].sum()) / max(whole - inner, 1.0)
    taken = float((ink - cut)[over].sum())
    if taken <= 1.3 * per_length * inner:
        return cut
    return np.where(over, ink, cut)


def _thin(mask: np.ndarray, t: int, lo: float, hi: float, xs: np.ndarray, ys: np.ndarray) -> bool:
    """Whether the band is a thin line: paper just beyond it on both sides along at least 30% of its length (a
    line across a small image may run beside the digit's strokes for the rest)."""
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
    return len(clear) > 0 and float(clear.mean()) >= 0.3


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
    band on either side that a straight stroke through it would join (crossing at up to :data:`CROSSING` degrees
    from square), the lesser of the pair. Where a stroke crosses the line it stays; elsewhere the band becomes
    paper."""
    h, w = ink.shape
    c, s = _COS[t], _SIN[t]
    rho = xs * c + ys * s
    band = (rho >= lo - 1.0) & (rho <= hi + 1.0)
    centre, reach = (lo + hi) / 2, (hi - lo) / 2 + 1.5
    by, bx, br = ys[band], xs[band], rho[band]
    k = int(np.ceil(reach * np.tan(np.deg2rad(CROSSING))))
    slides = np.arange(-k, k + 1, dtype=np.float32)[:, None]
    pad = 2 * k + 4  # beyond any sample's reach: paper outside the image
    sheet = np.pad(ink, pad)
    pair = []
    for side in (1.0, -1.0):
        shift = centre + side * reach - br
        qx = np.rint(bx + shift * c - side * slides * s).astype(np.intp) + pad
        qy = np.rint(by + shift * s + side * slides * c).astype(np.intp) + pad
        pair.append(sheet[qy, qx])
    out = ink.copy()
    out[band] = np.minimum(*pair).max(axis=0)
    return out


#: Angles (indexes into the accumulator's) of horizontal and vertical lines.
_HORIZONTAL, _VERTICAL = 45, 0


def _longest_runs(mask: np.ndarray) -> np.ndarray:
    """Each row's longest run of ink (gaps of one pixel bridged)."""
    closed = mask.copy()
    closed[:, 1:-1] |= mask[:, :-2] & mask[:, 2:]
    counts = np.cumsum(closed, axis=1)
    since = np.maximum.accumulate(np.where(closed, 0, counts), axis=1)
    return (counts - since).max(axis=1)


def _runs(mask: np.ndarray, length: int) -> np.ndarray:
    """Each row's longest run, measured only where the row holds enough ink for one of 70% of ``length``."""
    runs = np.zeros(mask.shape[0], np.int64)
    rows = np.flatnonzero(np.count_nonzero(mask, axis=1) >= 0.7 * length)
    if len(rows) >= 2:
        runs[rows] = _longest_runs(mask[rows])
    return runs


def _sides(runs: np.ndarray, length: int, widest: float) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The first and last band of rows whose runs reach 70% of ``length``, if apart and one at least thin."""
    rows = np.flatnonzero(runs >= 0.7 * length)
    if len(rows) < 2:
        return None
    breaks = np.flatnonzero(np.diff(rows) > 1)
    first = (int(rows[0]), int(rows[breaks[0]] if len(breaks) else rows[-1]))
    last = (int(rows[breaks[-1] + 1] if len(breaks) else rows[0]), int(rows[-1]))
    if not len(breaks):
        return None
    thick = [b[1] - b[0] + 1 > widest for b in (first, last)]
    if all(thick):
        return None
    # a stroke lying against one side widens its band: that side is as thick as the other, from outside in
    if thick[0]:
        first = (first[0], first[0] + last[1] - last[0])
    elif thick[1]:
        last = (last[1] - (first[1] - first[0]), last[1])
    return first, last


def _remove_box(ink: np.ndarray) -> np.ndarray | None:
    """``ink`` without a box drawn round the digit (a form's field), or None if there is none (see
    :func:`_find_box`); bridged where strokes cross its sides. Refused where little would be left."""
    box = _find_box(ink)
    if box is None:
        return None
    ys, xs = np.indices(ink.shape, dtype=np.float32)
    top, bottom, left, right = box
    sides = []
    for t, (lo, hi) in ((_HORIZONTAL, top), (_HORIZONTAL, bottom), (_VERTICAL, left), (_VERTICAL, right)):
        rho = xs if t == _VERTICAL else ys
        sides.append((t, lo, hi, (rho >= lo - 1.5) & (rho <= hi + 1.5)))
    # one pen drew the box: the digit may lie along one of its sides, not along all four
    level = _line_level(ink, [(t, band) for t, _, _, band in sides])
    out = ink
    for t, lo, hi, band in sides:
        out = _taken_out(out, _cut(out, t, lo - 0.5, hi + 0.5, xs, ys), t, lo, hi, band, level)
    return out if float(out.sum()) >= 0.15 * float(ink.sum()) else None


def _find_box(ink: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """The (top, bottom, left, right) bands of a box drawn round the digit, or None: thin horizontal lines
    at its top and bottom and vertical ones at its sides, each reaching most of the way across the ink,
    running unbroken from corner to corner with the sheet outside them."""
    peak = float(ink.max())
    if peak <= 0:
        return None
    mask = ink > LINE_INK * peak
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    if min(height, width) < 8:
        return None
    widest = max(3.0, 0.1 * min(mask.shape))
    across = _sides(_runs(mask, width), width, widest)
    if across is None:
        return None
    down = _sides(_runs(mask.T, height), height, widest)
    if down is None:
        return None
    (top, bottom), (left, right) = across, down
    if bottom[1] - top[0] + 1 < 0.7 * height or right[1] - left[0] + 1 < 0.7 * width:
        return None  # a box holds the digit (give or take a stroke across its sides), not part of it
    # each side runs unbroken from corner to corner (a boxy 0 has round corners, an 8 a waist)
    inside = (slice(top[0], bottom[1] + 1), slice(left[0], right[1] + 1))
    sides = [(mask, top, -1, inside[1]), (mask, bottom, 1, inside[1]),
             (mask.T, left, -1, inside[0]), (mask.T, right, 1, inside[0])]
    if not all(_side(*side) for side in sides):
        return None
    return top, bottom, left, right


def _side(mask: np.ndarray, rows: tuple[int, int], outward: int, span: slice) -> bool:
    """Whether a horizontal band is a box's side along ``span``: ink from corner to corner, and paper two
    pixels beyond it on its ``outward`` side (-1: above), as the sheet outside a box is; a thick stroke's
    inner edge has the rest of the stroke there."""
    if mask[rows[0] : rows[1] + 1, span].any(axis=0).mean() < 0.95:
        return False
    row = rows[0] - 2 if outward < 0 else rows[1] + 2
    return not 0 <= row < mask.shape[0] or float(mask[row, span].mean()) <= 0.3


# -- outlines ---------------------------------------------------------------------------------------

#: Enclosed paper in thin channels at least this share of the ink's area: hollow strokes.
HOLLOW = 0.5


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by a (2r+1) square (outside the image counts as paper)."""
    from numpy.lib.stride_tricks import sliding_window_view

    p = np.pad(mask, r, constant_values=False)
    return sliding_window_view(sliding_window_view(p, 2 * r + 1, axis=1).min(axis=-1), 2 * r + 1, axis=0).min(axis=-1)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1) square."""
    from numpy.lib.stride_tricks import sliding_window_view

    p = np.pad(mask, r, constant_values=False)
    return sliding_window_view(sliding_window_view(p, 2 * r + 1, axis=1).max(axis=-1), 2 * r + 1, axis=0).max(axis=-1)


def fill_outlines(ink: np.ndarray) -> np.ndarray | None:
    """``ink`` (light on black) with hollow strokes filled, or None when its strokes are not hollow.

    Paper that the sheet outside cannot reach (a flood fill from the edges) is enclosed; what of it lies in
    channels narrower than about two walls is the inside of a hollow stroke, while a loop's hole (of a 0,
    6, 8 or 9) is wider and stays. Only where such channels are a good share of the ink is anything filled.
    """
    peak = float(ink.max())
    if peak <= 0:
        return None
    mask = ink > 0.25 * peak
    rows = np.flatnonzero(mask.any(axis=1))
    height = float(rows[-1] - rows[0] + 1)
    if _stroke_width(mask) > 0.1 * height:  # a pen's strokes, not walls
        return None
    enclosed = ~mask & ~_outside(~mask)
    if not enclosed.any():
        return None
    r = max(1, int(round(0.07 * height)))
    channels = enclosed & ~_dilate(_erode(enclosed, r), r)
    if np.count_nonzero(channels) < HOLLOW * np.count_nonzero(mask):
        return None
    return np.maximum(ink, np.where(channels, peak, 0.0))


def _outside(paper: np.ndarray) -> np.ndarray:
    """The paper reachable from the image's edges through paper (4-connected): a flood fill, grown a step
    at a time in each direction until it stops."""
    reach = np.zeros_like(paper)
    reach[0], reach[-1], reach[:, 0], reach[:, -1] = paper[0], paper[-1], paper[:, 0], paper[:, -1]
    for _ in range(2 * sum(paper.shape)):
        before = np.count_nonzero(reach)
        for _ in range(4):
            grown = reach.copy()
            grown[1:] |= reach[:-1]
            grown[:-1] |= reach[1:]
            grown[:, 1:] |= reach[:, :-1]
            grown[:, :-1] |= reach[:, 1:]
            reach = grown & paper
        if np.count_nonzero(reach) == before:
            break
    return reach


def _stroke_width(mask: np.ndarray) -> float:
    """The median length of the mask's horizontal runs."""
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1).ravel()
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return float(np.median(runs)) if len(runs) else 1.0
