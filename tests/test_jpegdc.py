"""The C reader of baseline JPEGs at 1/8 scale (model/serving/jpegdc.c), held to libjpeg's pixels through Pillow."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitq.errors import ConfigError, ImageError
from digitq.settings import Settings
from model.serving import preprocess
from model.serving.preprocess import decode_image
from tests.fuzz import fuzz_jpegdc, make_corpus

try:
    from model.serving import _jpegdc as jpegdc  # the reader itself, whatever DIGITQ_JPEG_READER says
except ImportError:
    jpegdc = None

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = ROOT / "tests" / "data" / "jpeg-findings"


_jpeg = make_corpus.encode  # a JPEG of an image, with room for optimize/progressive tables


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
    assert jpegdc is not None, "model.serving._jpegdc is missing: reinstall with a C compiler (scripts/bootstrap.sh)"


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
    """Each of these 300 damaged files is read into exactly libjpeg's pixels, or left to libjpeg; none is
    read where Pillow fails on it. Beyond these, the same rule is fuzzed in CI (scripts/fuzz-jpegdc.sh)."""
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


#: The five files of an outside fuzzing run: what libjpeg says of each through Pillow.
LIBJPEG_REFUSES = {
    "diff_all_ones_code.jpg": True,  # Bogus Huffman table definition
    "diff_chroma_qtable_undefined.jpg": True,  # Quantization table 0x03 was not defined
    "diff_exp_marker.jpg": True,  # Unsupported marker type
    "diff_second_soi.jpg": True,  # two SOI markers
    "diff_ff00_hidden_dqt.jpg": False,  # reads it, with the DQT behind FF 00: other pixels
}


@pytest.mark.parametrize("name", list(LIBJPEG_REFUSES))
def test_the_outside_findings_are_left_to_libjpeg(name):
    data = (FINDINGS / name).read_bytes()
    assert jpegdc.luma_dc(data) is None
    if LIBJPEG_REFUSES[name]:
        with pytest.raises(OSError):
            fuzz_jpegdc.pillow_eighth(data)
    else:
        fuzz_jpegdc.pillow_eighth(data)


@pytest.mark.parametrize("name", list(LIBJPEG_REFUSES))
def test_the_outside_findings_through_decode_image(name, monkeypatch):
    """decode_image asks the reader (the files are 4000x3000: 1/8 scale), which declines, so libjpeg
    decides: an error row where it refuses the file, its own pixels where it reads it."""
    data = (FINDINGS / name).read_bytes()
    answers = []
    monkeypatch.setattr(preprocess, "_jpegdc", type("Spy", (), {
        "luma_dc": staticmethod(lambda d: answers.append(jpegdc.luma_dc(d)) or answers[-1])}))
    if LIBJPEG_REFUSES[name]:
        with pytest.raises(ImageError, match="cannot decode image"):
            decode_image(data)
        assert answers == [None]
        return
    got = decode_image(data)
    monkeypatch.setattr(preprocess, "_jpegdc", None)
    np.testing.assert_array_equal(got, decode_image(data))  # e9b8552: 240 of the 784 pixels differed
    assert answers == [None]


@pytest.mark.parametrize("name", list(make_corpus.FINDINGS))
def test_each_kind_of_finding_on_other_images(name):
    """The five mutations, applied to fresh files of other sizes and tables, are left to libjpeg too,
    while the unmutated files are read into libjpeg's pixels."""
    for seed, size in enumerate([(120, 90), (333, 41)]):
        img = make_corpus.digit_photo(*size, seed, "RGB" if name == "chroma_qtable_undefined" else "L")
        for options in ({}, {"restart_marker_blocks": 5}, {"quality": 30}):
            plain = make_corpus.encode(img, **options)
            assert fuzz_jpegdc.check(plain, jpegdc)
            assert jpegdc.luma_dc(make_corpus.FINDINGS[name](plain)) is None


def test_only_the_markers_the_reader_understands_are_read():
    """Any marker but APPn, COM, DQT, DHT, DRI, SOF0/1 and SOS in the header leaves the file to libjpeg.
    Here each marker comes with a 2-byte payload, which only an APPn, a COM or a DRI can have."""
    plain = make_corpus.encode(make_corpus.digit_photo(64, 48, 1, "L"))
    read = {m for m in range(256) if jpegdc.luma_dc(make_corpus.reserved_marker(plain, m)) is not None}
    assert read == (set(range(0xE0, 0xF0)) - {0xEE}) | {0xFE, 0xDD}  # APP14 (Adobe) sets the colour space


def test_the_seed_corpus_agrees_with_libjpeg():
    """The fuzzer's seeds (tests/fuzz/corpus) pass its differential check; the findings among them are declined."""
    seeds = sorted(fuzz_jpegdc.CORPUS.glob("*.jpg"))
    assert len(seeds) >= 20 and sum(p.stat().st_size for p in seeds) < 200_000
    read = {p.stem: fuzz_jpegdc.check(p.read_bytes(), jpegdc) for p in seeds}
    assert read["gray"] and read["420"] and read["restart3"]
    assert not any(v for k, v in read.items() if k.startswith("finding_"))


def test_pad_is_tied_to_the_block_limit(tmp_path):
    """PAD must hold what one MCU of damaged data can read past the end (at most 10 blocks x 64 symbols x
    31 bits): raising the block limit without PAD fails the build."""
    source = (ROOT / "model" / "serving" / "jpegdc.c").read_text()
    assert "#define MAX_MCU_BLOCKS 10\n" in source
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    include = sysconfig.get_paths()["include"]

    def compiles(text: str) -> subprocess.CompletedProcess:
        (tmp_path / "jpegdc.c").write_text(text)
        return subprocess.run([cc, "-fsyntax-only", "-std=c11", f"-I{include}", str(tmp_path / "jpegdc.c")],
                              capture_output=True, text=True)

    assert compiles(source).returncode == 0
    assert compiles(source.replace("#define MAX_MCU_BLOCKS 10\n", "#define MAX_MCU_BLOCKS 16\n")).returncode == 0
    raised = compiles(source.replace("#define MAX_MCU_BLOCKS 10\n", "#define MAX_MCU_BLOCKS 17\n"))
    assert raised.returncode != 0 and "PAD must hold" in raised.stderr


_DECODE_OFF = """
import json, sys
import numpy as np
from model.serving import _jpegdc

def refuse(data):
    raise AssertionError("the C reader was called with DIGITQ_JPEG_READER=off")

_jpegdc.luma_dc = refuse  # before preprocess loads: with the switch off it must never get here
from model.serving.preprocess import decode_image
print(json.dumps([decode_image(open(p, "rb").read()).tolist() for p in sys.argv[1:]]))
"""


def test_the_reader_can_be_turned_off(mnist, tmp_path, monkeypatch):
    """DIGITQ_JPEG_READER=off, read when a process loads preprocess (a worker, as it starts): libjpeg
    decodes every JPEG, to the same pixels, and the C reader is never called."""
    from model.synthetic import phone_photo

    rng = np.random.default_rng(7)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"photo{i}.jpg")
        paths[-1].write_bytes(phone_photo(mnist.x_test[i], rng))
    calls = []
    monkeypatch.setattr(preprocess, "_jpegdc", type("Spy", (), {
        "luma_dc": staticmethod(lambda data: calls.append(1) or jpegdc.luma_dc(data))}))
    on = [decode_image(p.read_bytes()) for p in paths]
    assert len(calls) == len(paths)  # on by default: the reader read them
    env = {**os.environ, "DIGITQ_JPEG_READER": "off", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _DECODE_OFF, *map(str, paths)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    off = [np.array(a, np.uint8) for a in json.loads(done.stdout)]
    for a, b in zip(on, off, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_reader_setting_is_checked(monkeypatch):
    monkeypatch.delenv("DIGITQ_JPEG_READER", raising=False)
    assert Settings.from_env().jpeg_reader == "on"
    monkeypatch.setenv("DIGITQ_JPEG_READER", "off")
    assert Settings.from_env().jpeg_reader == "off"
    monkeypatch.setenv("DIGITQ_JPEG_READER", "no")
    with pytest.raises(ConfigError, match="DIGITQ_JPEG_READER"):
        Settings.from_env()
