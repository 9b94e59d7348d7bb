"""Decoding image files into MNIST-style arrays, and refusing broken ones clearly."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from digitq.disk.paths import is_image_name
from digitq.errors import ImageError
from model.serving.preprocess import decode_image


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _stroke(size=28) -> np.ndarray:
    a = np.zeros((size, size), np.uint8)
    a[size // 5 : size * 4 // 5, size * 2 // 5 : size * 3 // 5] = 255
    return a


def test_mnist_sized_image_is_kept_exactly():
    digit = _stroke()
    np.testing.assert_array_equal(decode_image(_png(digit)), digit)


def test_dark_on_light_is_inverted():
    digit = _stroke()
    np.testing.assert_array_equal(decode_image(_png(255 - digit)), digit)


def test_large_image_is_framed_like_mnist():
    big = np.zeros((300, 200), np.uint8)
    big[50:250, 90:110] = 255
    out = decode_image(_png(255 - big))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    rows = np.flatnonzero(out.max(axis=1) > 50)
    assert 18 <= rows[-1] - rows[0] + 1 <= 21  # the long side fits a 20-pixel box
    ys, xs = np.indices(out.shape)
    total = out.sum()
    assert abs((ys * out).sum() / total - 14) < 1.5 and abs((xs * out).sum() / total - 14) < 1.5


def test_rgb_jpeg_and_transparent_png():
    rgb = np.stack([255 - _stroke(56)] * 3, axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    assert decode_image(buf.getvalue()).max() > 200
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 3] = _stroke(40)  # black ink, drawn only in alpha
    assert decode_image(_png(rgba, "RGBA")).max() > 200


@pytest.mark.parametrize("data", [b"", b"not an image at all", _png(_stroke())[:40]])
def test_broken_images_raise_image_error(data):
    with pytest.raises(ImageError):
        decode_image(data)


def test_blank_image_is_all_black():
    assert decode_image(_png(np.full((50, 50), 255, np.uint8))).max() == 0


def test_extensions_case_insensitive():
    assert all(is_image_name(n) for n in ["a.PNG", "b.jpeg", "c.JpG", "d.tiff", "e.webp", "f.gif", "g.bmp"])
    assert not any(is_image_name(n) for n in ["a.txt", "png", ".png", "a.png.bak"])


def test_odd_but_valid_images_decode():
    for shape in [(1, 1), (1, 300), (300, 1), (3, 7)]:
        arr = np.zeros(shape, np.uint8)
        arr[0, 0] = 255
        out = decode_image(_png(arr))
        assert out.shape == (28, 28) and out.dtype == np.uint8
    gif = io.BytesIO()
    frames = [Image.fromarray(_stroke(40)), Image.fromarray(255 - _stroke(40))]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(gif.getvalue()).max() > 200
    i16 = io.BytesIO()
    Image.fromarray(_stroke(40).astype(np.uint16) * 200).save(i16, format="PNG")
    assert decode_image(i16.getvalue()).max() > 200


def test_predict_entries_isolates_every_failure():
    """One row per entry, in order, whatever goes wrong with each one."""
    import base64

    from digitq.batch.message import Entry
    from worker.inference import predict_entries

    class Fixed:
        def predict(self, images):
            out = np.zeros((len(images), 10), np.float32)
            out[:, 4] = 1.0
            return out

    good = base64.b64encode(_png(_stroke())).decode()
    entries = [{"path": "a", "data": good}, {"path": "b", "data": "%%%not base64"}, {"path": "c", "error": "too big"},
               {"path": "d"}, {"path": "e", "ref": "/nonexistent/x.png"}, {"path": "f", "data": good}]
    rows = predict_entries(Fixed(), [Entry.from_wire(e) for e in entries], max_bytes=1 << 20)
    assert [r.path for r in rows] == list("abcdef")
    assert [r.prediction for r in rows] == [4, None, None, None, None, 4]
    assert all(r.error for r in rows[1:5]) and rows[2].error == "too big"


def _reference_decode(data: bytes) -> np.ndarray:
    """The decoder as it was before its fast paths (np.median, float round trip): the oracle."""
    from PIL import ImageOps

    from model.serving.cleaning import clean_ink
    from model.serving.preprocess import _to_gray

    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        img.load()
        gray = _to_gray(ImageOps.exif_transpose(img))
    cleaned = clean_ink(gray, exact=gray.shape == (28, 28))  # the cleaning, when a file needs it
    if cleaned is not None:
        return np.clip(np.rint(cleaned), 0, 255).astype(np.uint8) if gray.shape == (28, 28) else _frame(cleaned)
    return _frame(gray)


def _frame(gray: np.ndarray) -> np.ndarray:
    """The framing as it was before its fast paths (np.median, float round trip)."""
    from model.serving.preprocess import _FIT

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if float(np.median(border)) > 127.0:
        gray = 255.0 - gray
    if gray.shape == (28, 28):
        return np.clip(gray, 0, 255).astype(np.uint8)
    background = float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
    ink = np.clip(gray - background, 0, None)
    peak = float(ink.max())
    if peak <= 0:
        return np.zeros((28, 28), np.uint8)
    ink *= 255.0 / peak
    rows = np.flatnonzero(ink.max(axis=1) > 0.2 * 255)
    cols = np.flatnonzero(ink.max(axis=0) > 0.2 * 255)
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = _FIT / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.clip(np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(size,
                                                                                         Image.Resampling.LANCZOS)),
                    0, 255)
    out = np.zeros((28, 28), np.float32)
    total = float(small.sum())
    ys, xs = np.indices(small.shape)
    cy = float((ys * small).sum() / total) if total else small.shape[0] / 2
    cx = float((xs * small).sum() / total) if total else small.shape[1] / 2
    top = min(max(int(round(14 - cy)), 0), 28 - small.shape[0])
    left = min(max(int(round(14 - cx)), 0), 28 - small.shape[1])
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out.astype(np.uint8)


def test_fast_paths_give_identical_arrays(mnist):
    from .conftest import ROOT

    blobs = [_png(a) for a in mnist.x_test[:300]] + [_png(255 - a) for a in mnist.x_test[300:400]]
    blobs += [p.read_bytes() for p in sorted((ROOT / "samples" / "digits").rglob("*")) if p.is_file()]
    rgb = np.stack([mnist.x_test[0]] * 3, axis=-1)
    blobs += [_png(rgb), _png(mnist.x_test[1].astype(np.uint16) * 257)]
    big = np.kron(mnist.x_test[2], np.ones((4, 3), np.uint8))  # 112 x 84 grayscale: framed by to_mnist
    blobs += [_png(big), _png(255 - big)]
    assert len(blobs) > 430
    for data in blobs:
        np.testing.assert_array_equal(decode_image(data), _reference_decode(data))
    from model.serving.preprocess import _plain_gray_png

    # the libspng path really ran for the plain grayscale PNGs, and not for the rest
    assert all(_plain_gray_png(d) is not None for d in blobs[:400] + blobs[-2:])
    assert _plain_gray_png(_png(rgb)) is None and _plain_gray_png(b"\x89PNG\r\n\x1a\n" + b"\0" * 40) is None


def test_photos_decode_at_reduced_scale_and_read_better(mnist):
    """Phone photos: the reduced-scale decode reads the digit; full resolution let paper noise pass as ink."""
    from model.registry import Registry
    from model.serving.runtime import load_predictor
    from model.synthetic import phone_photo

    rng = np.random.default_rng(0)
    photos = [phone_photo(mnist.x_test[i], rng, width=1512, height=2016) for i in range(12)]
    predictor = load_predictor(Registry("/nowhere").bundled())
    reduced = predictor.predict(np.stack([decode_image(p) for p in photos])).argmax(1)
    full = predictor.predict(np.stack([_reference_decode(p) for p in photos])).argmax(1)
    truth = mnist.y_test[:12]
    assert (reduced == truth).sum() >= 11 and (reduced == truth).sum() >= (full == truth).sum()


@pytest.mark.parametrize("mode", ["1", "P", "L", "LA", "RGBA", "I;16", "I", "F", "CMYK", "PA", "RGB"])
def test_large_images_of_every_mode_are_reduced_before_framing(mode):
    bar = np.zeros((1300, 1100), np.uint8)
    bar[300:1000, 450:650] = 255
    img = Image.fromarray(bar.astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(bar).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    out = decode_image(buf.getvalue())
    np.testing.assert_array_equal(out, _reference_decode(buf.getvalue()))
    assert out.sum() > 20_000


def test_page_scans_stream_through_libvips_with_the_same_prediction(mnist, monkeypatch):
    """An A4 page at 600 dpi: decoded shrinking on load, read as the same digit as a whole decode."""
    import sys

    from model.registry import Registry
    from model.serving import preprocess
    from model.serving.runtime import load_predictor
    from model.synthetic import page_scan

    page = page_scan(mnist.x_test[0])
    predictor = load_predictor(Registry("/nowhere").bundled())
    import pyvips  # noqa: F401 - a dependency (pyvips[binary]): without it this test would test Pillow twice

    streamed = []
    real = preprocess._stream_reduce

    def spy(data):
        streamed.append(real(data))
        return streamed[-1]

    monkeypatch.setattr(preprocess, "_stream_reduce", spy)
    fast = decode_image(page)
    # libvips decoded it: a shrunk image came back, not the None that hands the page to Pillow
    assert len(streamed) == 1 and streamed[0] is not None and max(streamed[0].size) < 1000
    assert fast.sum() > 10_000
    monkeypatch.setitem(sys.modules, "pyvips", None)  # libvips absent: Pillow decodes it whole
    whole = decode_image(page)
    assert predictor.predict(np.stack([fast, whole, _reference_decode(page)])).argmax(1).tolist() == [7, 7, 7]


def test_damaged_pngs_fail_or_decode_exactly_as_pillow_does(mnist):
    """The libspng path must not turn a damaged file into wrong pixels: every truncation and byte flip
    gives the error, or the array, that Pillow gives."""
    rng = np.random.default_rng(1)
    outcomes = set()
    for digit in mnist.x_test[:40]:
        data = _png(digit)
        cases = [data[:cut] for cut in range(9, len(data), 9)]
        for _ in range(15):
            bad = bytearray(data)
            bad[int(rng.integers(8, len(data)))] ^= int(rng.integers(1, 256))
            cases.append(bytes(bad))
        for case in cases:
            results = []
            for decode in (decode_image, _reference_decode):
                try:
                    results.append(decode(case).tobytes())
                except Exception:
                    results.append("error")
            assert results[0] == results[1]
            outcomes.add(results[0] == "error")
    assert outcomes == {True, False}  # both kinds of outcome were exercised


# -- cleaning before framing: paper tone, shading, lines, speckle, outlines -------------------------

def _digit(size: int = 28, shape: str = "zero") -> np.ndarray:
    """A synthetic MNIST-style digit (white on black, anti-aliased, in a 20x20 box) at ``size`` px: a
    "zero" (a ring) or a "seven" (a bar and a slanted stem)."""
    from PIL import ImageDraw

    s = size * 4 / 28
    big = Image.new("L", (size * 4, size * 4), 0)
    draw = ImageDraw.Draw(big)
    if shape == "zero":
        draw.ellipse((8 * s, 4 * s, 20 * s, 24 * s), outline=255, width=round(3 * s))
    else:
        draw.line([(7 * s, 6 * s), (21 * s, 6 * s), (12 * s, 24 * s)], fill=255, width=round(3 * s))
    return np.asarray(big.resize((size, size), Image.Resampling.BOX))


def _on(ink: np.ndarray, paper: np.ndarray | float, pen: np.ndarray | float) -> np.ndarray:
    """White-on-black ``ink`` drawn in ``pen`` on ``paper`` (either may be lighter), as uint8."""
    a = ink.astype(np.float32) / 255.0
    return np.clip(np.rint(paper + (pen - paper) * a), 0, 255).astype(np.uint8)


def test_clean_mnist_digits_keep_their_pixels(mnist):
    """Real MNIST digits, those that reach the border included, come out exactly as they went in (and
    exactly inverted when dark on white): the cleaning never touches a clean digit."""
    x = mnist.x_test
    rim = np.ones((28, 28), bool)
    rim[1:-1, 1:-1] = False
    touching = np.flatnonzero(x[:, rim].any(axis=1))
    assert len(touching) > 50
    for i in np.concatenate([np.arange(1500), touching]):
        np.testing.assert_array_equal(decode_image(_png(x[i])), x[i])
    for i in np.concatenate([np.arange(200), touching[:40]]):
        np.testing.assert_array_equal(decode_image(_png(255 - x[i])), x[i])
    for i in range(100):  # framed from a larger file, clean paper: as before the cleaning (the oracle)
        big = np.kron(255 - x[i], np.ones((3, 3), np.uint8))
        np.testing.assert_array_equal(decode_image(_png(big)), _frame(big.astype(np.float32)))


@pytest.mark.parametrize("paper, pen", [(110, 235), (60, 140), (175, 250), (200, 70), (150, 40)])
def test_grey_paper_becomes_flat_background_with_the_ink_light(paper, pen):
    """A 28x28 digit on grey paper, lighter or darker than its ink (light ink on light-grey paper too,
    which the border rule alone read the wrong way round): the paper comes out black, the digit white."""
    digit = _digit()
    out = decode_image(_png(_on(digit, paper, pen)))
    assert out[digit == 0].max() <= 2  # flat background
    assert out[digit >= 200].min() >= 200  # the ink, bright: the polarity is right
    assert np.abs(out.astype(int) - digit).max() <= 3  # the digit itself, to rounding


def test_shaded_paper_is_flattened_and_framed_as_on_white():
    """Light falling from 250 to 70 across a 2x scan, multiplied into paper and ink: the decoded digit
    is the one the evenly lit scan gives, and no shading is left as ink."""
    digit = _digit(56)
    evenly = _on(digit, 245.0, 25.0)
    ys, xs = np.indices(digit.shape) / 55.0
    light = 250.0 - 180.0 * (0.6 * xs + 0.4 * ys)
    shaded = np.clip(np.rint(evenly * light / 250.0), 0, 255).astype(np.uint8)
    reference, out = decode_image(_png(evenly)), decode_image(_png(shaded))
    assert out[reference == 0].max() <= 25
    assert np.abs(out.astype(int) - reference).mean() < 6
    assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.97


def test_fog_over_a_28x28_digit_leaves_a_flat_background():
    """Haze over part of the sheet (lower contrast in a blob): the background still comes out black."""
    digit = _digit()
    ys, xs = np.indices(digit.shape)
    cover = 0.55 * np.exp(-((ys - 8.0) ** 2 + (xs - 20.0) ** 2) / 80.0)
    foggy = _on(digit, 240.0, 25.0) * (1 - cover) + 200.0 * cover
    out = decode_image(_png(np.clip(np.rint(foggy), 0, 255).astype(np.uint8)))
    assert out[digit == 0].max() <= 20 and out[digit >= 200].min() >= 100  # contrast lower under the haze


def test_a_line_across_the_digit_is_removed_away_from_it_and_kept_where_it_crosses():
    """A bright ruled line across a 28x28 digit: gone where it runs over paper, the digit's own pixels
    away from it unchanged, and the stroke it crosses still whole."""
    digit = _digit(shape="seven")
    lined = digit.copy()
    lined[15:17] = 255
    out = decode_image(_png(lined))
    cols = np.flatnonzero(digit.max(axis=0) > 0)
    beside = np.r_[0 : cols[0] - 2, cols[-1] + 3 : 28]
    assert out[15:17][:, beside].max() == 0  # the line, gone over the paper
    np.testing.assert_array_equal(out[:13], digit[:13])  # the digit away from it: as it was
    np.testing.assert_array_equal(out[19:], digit[19:])
    stem = int(np.argmax(digit[16]))  # where the stem crosses the line
    assert out[15:17, stem].min() >= 128


def test_ruled_paper_and_a_box_border_are_not_framed_as_ink():
    """A 2x scan on ruled paper, and one in a form's box: the framing box is the digit's, as on plain paper."""
    digit = _digit(56, "seven")
    page = np.zeros((80, 80), np.uint8)
    page[12:68, 12:68] = digit
    plain = decode_image(_png(_on(page, 245.0, 25.0)))
    ruled = _on(page, 245.0, 25.0)
    ruled[[8, 9, 30, 31, 52, 53, 74, 75]] = 90  # lines 2 px wide, 22 apart, over the whole page
    boxed = _on(page, 245.0, 25.0)
    rows, cols = np.flatnonzero(page.max(axis=1) > 64), np.flatnonzero(page.max(axis=0) > 64)
    top, bottom, left, right = rows[0] - 4, rows[-1] + 4, cols[0] - 5, cols[-1] + 3
    for r in (top, bottom):
        boxed[r : r + 2, left : right + 2] = 30
    for c in (left, right):
        boxed[top : bottom + 2, c : c + 2] = 30
    for image in (ruled, boxed):
        out = decode_image(_png(image))
        assert _box(out) == _box(plain)
        assert np.abs(out.astype(int) - plain).mean() < 8


def _box(a: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(a.max(axis=1) > 50), np.flatnonzero(a.max(axis=0) > 50)
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@pytest.mark.parametrize("size", [28, 56])
def test_speckle_is_removed_and_strokes_are_kept(size):
    """Salt and pepper on 6% of the pixels: no speck left on the paper, the strokes whole."""
    digit = _digit(size)
    rng = np.random.default_rng(3)
    noisy = digit.copy() if size == 28 else 255 - digit
    hit = rng.random(noisy.shape) < 0.06
    noisy[hit] = np.where(rng.random(noisy.shape) < 0.5, 0, 255).astype(np.uint8)[hit]
    out = decode_image(_png(noisy))
    clean = decode_image(_png(digit if size == 28 else 255 - digit))
    near = np.asarray(Image.fromarray(clean).filter(ImageFilter.MaxFilter(5))) > 0
    assert out[~near].max() <= 40  # no speck away from the digit
    assert np.count_nonzero(out[clean >= 200] >= 128) >= 0.95 * np.count_nonzero(clean >= 200)


def test_outline_strokes_are_not_made_worse():
    """Hollow strokes (an edge filter's): decoded as the file has them, framed like MNIST when larger."""
    digit = _digit()
    hollow = np.asarray(Image.fromarray(digit).filter(ImageFilter.FIND_EDGES))
    np.testing.assert_array_equal(decode_image(_png(hollow)), hollow)
    big = np.asarray(Image.fromarray(_digit(112)).filter(ImageFilter.FIND_EDGES))
    out = decode_image(_png(255 - big))
    rows = np.flatnonzero(out.max(axis=1) > 50)
    assert 18 <= rows[-1] - rows[0] + 1 <= 21


def test_noisy_paper_does_not_widen_the_frame():
    """A small digit on a large sheet with paper noise (sigma 12): specks of noise bright enough to pass
    for ink no longer stretch the frame, so the digit fills its 20-pixel box."""
    digit = _digit(24)
    sheet = np.zeros((128, 128), np.float32)
    sheet[40:64, 70:94] = digit
    noisy = 215.0 - 180.0 * sheet / 255.0 + 12.0 * np.random.default_rng(5).standard_normal(sheet.shape)
    out = decode_image(_png(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)))
    top, bottom, left, right = _box(out)
    assert 18 <= bottom - top + 1 <= 21 and right - left + 1 >= 8


def test_hollow_strokes_of_a_larger_file_are_filled():
    """Hollow strokes (a thick pen's outline, 1-2 px walls) in a file that is framed: read as the solid
    pen, the channels between the walls filled, the loop of the 0 still open."""
    for shape in ("seven", "zero"):
        solid = (_digit(112, shape) > 127).astype(np.uint8) * 255
        solid = np.asarray(Image.fromarray(solid).filter(ImageFilter.MaxFilter(5)))  # a pen 16 px wide
        inner = np.asarray(Image.fromarray(solid).filter(ImageFilter.MinFilter(5)))
        hollow = np.where(inner > 0, 0, solid).astype(np.uint8)
        want, out = decode_image(_png(255 - solid)), decode_image(_png(255 - hollow))
        assert np.corrcoef(out.ravel(), want.ravel())[0, 1] > 0.75  # 0.41 with the strokes left hollow
        if shape == "zero":
            assert out[12:16, 12:16].max() < 60  # the hole of the 0 is not filled
