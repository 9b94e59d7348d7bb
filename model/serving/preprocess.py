"""Turn any image file into an MNIST-style 28x28 array (white digit on black).

Pillow + NumPy (with libspng, libvips and a small JPEG reader where they are), shared by inference
and by the labelled-folder loader so that training and serving see digits the same way.
"""

from __future__ import annotations

import io
import re
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps

from digitq.errors import ImageError
from digitq.settings import jpeg_reader_setting
from model.serving.cleaning import clean_ink

try:
    import pyspng as _spng
except ImportError:  # optional: Pillow decodes every PNG without it
    _spng = None
try:
    from model.serving import _jpegdc  # C, built at install where a compiler is (model/serving/jpegdc.c)
except ImportError:  # optional: Pillow decodes every JPEG without it, to the same pixels
    _jpegdc = None
if jpeg_reader_setting() == "off":  # DIGITQ_JPEG_READER=off, read as a worker starts: libjpeg only
    _jpegdc = None

#: Pillow's own bomb check fires above this; we make it an error, not a warning.
MAX_PIXELS = 64_000_000
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-f]+>")  # keep messages stable and short
_FIT = 20  # MNIST digits fit a 20x20 box centred by mass in 28x28
#: Large images are decoded or reduced to about this long side before framing (photos, page scans).
WORK_SIZE = 500


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to a uint8 (28, 28) array, MNIST polarity and framing.

    Raises :class:`ImageError` with a short reason for anything undecodable.
    """
    if not data:
        raise ImageError("empty file")
    fast = _plain_gray_png(data)
    if fast is not None:
        return _mnist_sized(fast) if fast.shape == (28, 28) else to_mnist(fast.astype(np.float32))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            img = _open(data)
        # NumPy outside the block: inside catch_warnings NumPy's array hand-off costs 35 us, not 1.
        if img.mode == "L" and img.size == (28, 28):
            return _mnist_sized(np.asarray(img))  # the common case: MNIST-shaped already
        gray = _to_gray(img)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"image too large to decode safely ({e})") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError("cannot decode image: not a known image format, or corrupt") from e
    except Exception as e:  # Pillow raises many types for corrupt files
        detail = _OBJECT_REPR.sub("", str(e)).strip()
        raise ImageError(f"cannot decode image: {type(e).__name__}" + (f": {detail}" if detail else "")) from e
    return to_mnist(gray)


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Where Pillow's ``getexif()`` finds an orientation (EXIF, a PNG text profile, XMP).
_ORIENTATION_KEYS = frozenset({"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"})


#: PNG chunks that can change how Pillow reads an image (transparency, EXIF or XMP orientation in text).
_PNG_SPECIAL = (b"tRNS", b"eXIf", b"iTXt", b"tEXt", b"zTXt")


def _plain_gray_png(data: bytes) -> np.ndarray | None:
    """The pixels of a plain 8-bit grayscale PNG under 1000 px, decoded by libspng (a quarter of
    Pillow's cost: what MNIST-style files are); None for anything else, which Pillow then decodes.
    PNG is lossless, so both give the same pixels (tested)."""
    if _spng is None or len(data) < 33 or not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, color, interlace = data[24], data[25], data[28]
    if depth != 8 or color != 0 or interlace or not 0 < max(width, height) < 2 * WORK_SIZE:
        return None
    if any(tag in data for tag in _PNG_SPECIAL) or not _chunks_intact(data):
        return None
    try:
        pixels = _spng.load(data)
    except Exception:  # corrupt: let Pillow decode it and word the error
        return None
    return pixels if pixels.shape == (height, width) and pixels.dtype == np.uint8 else None


def _chunks_intact(data: bytes) -> bool:
    """Every chunk's CRC-32 matches, up to IEND. libspng would decode damaged pixel data without a
    word; Pillow fails on it, and a damaged file must stay an error row, never wrong pixels."""
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(data) or zlib.crc32(data[pos + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos = end + 4
    return False


def _open(data: bytes) -> Image.Image:
    """Decode the first frame, at reduced scale when large, upright per its EXIF orientation.

    Not closed: the bytes are in memory, and closing would free the pixels we return."""
    # A PNG signature rules out every other decoder: skip asking them (a few us a file).
    img = Image.open(io.BytesIO(data), formats=("PNG",) if data.startswith(_PNG_MAGIC) else None)
    if img.format != "JPEG" and img.width * img.height > STREAM_PIXELS and img.mode in _STREAMABLE:
        small = _stream_reduce(data)
        if small is not None:
            return small
    img.seek(0)  # first frame of an animation
    _draft(img)
    img = _luma_at_eighth(img, data) or img
    img.load()
    img = _reduce(img)
    if _ORIENTATION_KEYS.isdisjoint(img.info) and not hasattr(img, "tag_v2"):
        return img  # nothing to turn it by; exif_transpose would only copy it
    return ImageOps.exif_transpose(img)


#: Above this many pixels a non-JPEG image is decoded by libvips, streaming and shrinking as it reads:
#: an A4 page scanned at 600 dpi (35 MP) then costs ~25 MB and 0.2 s instead of ~140 MB and 0.3-0.4 s.
STREAM_PIXELS = 16_000_000
_STREAMABLE = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})  # 8-bit: what libvips hands back as uchar


def preload() -> None:
    """Load the optional page decoder (libvips) now rather than on the first page scan: workers call
    this as each process starts, so that no batch pays its ~60 ms of loading."""
    try:
        import pyvips  # noqa: F401
    except (ImportError, OSError):
        pass


def _stream_reduce(data: bytes) -> Image.Image | None:
    """The image shrunk on load to about WORK_SIZE by libvips (pyvips), upright; None where
    libvips is not installed or cannot read it (Pillow then decodes it whole)."""
    try:
        import pyvips
    except (ImportError, OSError):
        return None
    try:
        image = pyvips.Image.new_from_buffer(data, "", access="sequential")
        factor = max(image.width, image.height) // WORK_SIZE
        # A whole-factor box shrink as the rows stream in (thumbnail's Lanczos pass cost 15% more),
        # then EXIF orientation, on the small image.
        thumb = (image.shrink(factor, factor) if factor > 1 else image).autorot()
        if thumb.format != "uchar" or thumb.bands not in (1, 2, 3, 4):
            return None
        pixels = np.ndarray(buffer=thumb.write_to_memory(), dtype=np.uint8,
                            shape=(thumb.height, thumb.width, thumb.bands))
    except pyvips.Error:
        return None
    return Image.fromarray(pixels[..., 0] if thumb.bands == 1 else pixels)  # L, LA, RGB or RGBA


def _draft(img: Image.Image) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling): a 12-megapixel photo
    costs a tenth of a full decode, and the digit is framed from a ~500 px image all the same.
    Colour JPEGs decode to their luma (Y): what grayscale is, without colour conversion."""
    if img.format == "JPEG" and max(img.size) > 2 * WORK_SIZE:
        w, h = img.size
        scale = WORK_SIZE / max(w, h)
        img.draft("L", (max(1, int(w * scale)), max(1, int(h * scale))))


def _luma_at_eighth(img: Image.Image, data: bytes) -> Image.Image | None:
    """A JPEG drafted to grayscale at 1/8 scale, read from its DC coefficients alone (model/serving/jpegdc.c):
    the same pixels libjpeg gives, at about 40% of its cost, since it skips the AC coefficients
    several at a time. None where the reader is not built, is turned off (DIGITQ_JPEG_READER=off) or
    leaves the file to libjpeg."""
    if _jpegdc is None or img.format != "JPEG" or img.mode != "L" or img.decoderconfig != (8, 0):
        return None
    decoded = _jpegdc.luma_dc(data)
    if decoded is None or decoded[:2] != img.size:
        return None
    small = Image.frombuffer("L", img.size, decoded[2], "raw", "L", 0, 1)
    small.info = img.info  # EXIF orientation for exif_transpose
    return small


def _reduce(img: Image.Image) -> Image.Image:
    """Shrink a large image by a whole factor (box filter) before any float arithmetic on it."""
    factor = max(img.size) // WORK_SIZE
    if factor < 2:
        return img
    if img.mode in ("P", "PA"):  # palette indexes cannot be averaged; _to_gray would expand them the same way
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode == "1" or img.mode.startswith("I;16"):
        img = img.convert("L" if img.mode == "1" else "I")
    reduced = img.reduce(factor)
    reduced.info = img.info  # keeps EXIF orientation and transparency for what follows
    return reduced


def _to_gray(img: Image.Image) -> np.ndarray:
    """Grayscale float array in 0..255; transparent images use alpha as the ink."""
    if img.width < 1 or img.height < 1:
        raise ImageError("image has no pixels")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3]
        if alpha.min() < 128 <= alpha.max():
            return alpha  # ink drawn on a transparent sheet
        img = img.convert("RGBA").convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.asarray(img.convert("L"), dtype=np.float32)


def _border_median(a: np.ndarray) -> float:
    """``np.median`` of the outermost pixels, bit for bit, at a fifth of its cost."""
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    border.sort()
    n = len(border)
    if n % 2:
        return float(border[n // 2])
    if border.dtype.kind in "ui":  # exact in Python ints, as np.mean is in float64
        return (int(border[n // 2 - 1]) + int(border[n // 2])) / 2
    return float(border[n // 2 - 1 : n // 2 + 1].mean())  # float32 arrays: np.mean's own rounding


#: The outermost pixels of a 28x28 image in order around it (flat indexes), and the pixel inside each.
_RIM = np.array([(0, c) for c in range(28)] + [(r, 27) for r in range(1, 28)]
                + [(27, c) for c in range(26, -1, -1)] + [(r, 0) for r in range(26, 0, -1)])
_BORDER_28 = _RIM[:, 0] * 28 + _RIM[:, 1]
_INSIDE_28 = np.clip(_RIM, 1, 26) @ np.array([28, 1])


def _mnist_sized(gray: np.ndarray) -> np.ndarray:
    """A uint8 28x28 image, never reframed. A clean digit keeps its pixels exactly (inverted if it is dark
    on white); anything else is cleaned first (:func:`clean_ink`)."""
    border = gray.take(_BORDER_28)
    lit = np.count_nonzero(border)
    if lit == 0:  # 99% of MNIST: its border all black
        return np.array(gray, dtype=np.uint8)
    if lit == border.size and border.min() == 255:
        return 255 - gray
    if _touches_border(gray, border):
        return np.array(gray, dtype=np.uint8)
    ink = clean_ink(gray.astype(np.float32), exact=True)
    if ink is None:  # clean after all: the polarity is all that changes
        return 255 - gray if _border_median(gray) > 127.0 else np.array(gray, dtype=np.uint8)
    return np.clip(np.rint(ink), 0, 255).astype(np.uint8)


def _touches_border(gray: np.ndarray, border: np.ndarray) -> bool:
    """A clean digit on black that reaches the border (1% of MNIST): at least half its pixels black, and
    its border lit in one stretch that runs on inwards (a stripe enters and leaves, a speck stands alone)."""
    lit = border > 0
    if np.count_nonzero(lit & ~np.roll(lit, 1)) != 1 or np.count_nonzero(gray) > gray.size // 2:
        return False
    return bool(gray.take(_INSIDE_28)[lit].any())


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Frame a grayscale array like MNIST: light ink on dark, 20x20 box, mass-centred."""
    cleaned = clean_ink(gray, exact=gray.shape == (28, 28))
    if cleaned is not None:
        gray = cleaned
    background = _border_median(gray)
    if background > 127.0:
        gray = 255.0 - gray  # dark ink on light paper
        background = _border_median(gray)
    if gray.shape == (28, 28):
        return np.clip(gray, 0, 255).astype(np.uint8)  # already MNIST-sized: keep pixels exact
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
    small = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    small = np.clip(small, 0, 255)
    out = np.zeros((28, 28), np.float32)
    total = float(small.sum())
    ys, xs = np.indices(small.shape)
    cy = float((ys * small).sum() / total) if total else small.shape[0] / 2
    cx = float((xs * small).sum() / total) if total else small.shape[1] / 2
    top = int(round(14 - cy))
    left = int(round(14 - cx))
    top = min(max(top, 0), 28 - small.shape[0])
    left = min(max(left, 0), 28 - small.shape[1])
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out.astype(np.uint8)
