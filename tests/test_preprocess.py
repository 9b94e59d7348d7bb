"""Decoding image files into MNIST-style arrays, and refusing broken ones clearly."""

import io

import numpy as np
import pytest
from PIL import Image

from digitq.errors import ImageError
from model.preprocess import decode_image, is_image_name


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

    from worker.inference import predict_entries

    class Fixed:
        def predict(self, images):
            out = np.zeros((len(images), 10), np.float32)
            out[:, 4] = 1.0
            return out

    good = base64.b64encode(_png(_stroke())).decode()
    entries = [{"path": "a", "data": good}, {"path": "b", "data": "%%%not base64"}, {"path": "c", "error": "too big"},
               {"path": "d"}, {"path": "e", "ref": "/nonexistent/x.png"}, {"path": "f", "data": good}]
    rows = predict_entries(Fixed(), entries, max_bytes=1 << 20)
    assert [r.path for r in rows] == list("abcdef")
    assert [r.prediction for r in rows] == [4, None, None, None, None, 4]
    assert all(r.error for r in rows[1:5]) and rows[2].error == "too big"
