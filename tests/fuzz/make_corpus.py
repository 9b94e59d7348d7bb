"""Write the fuzzer's seed corpus (tests/fuzz/corpus/): small JPEGs of every kind the reader reads, some it
leaves to libjpeg, and small copies of the five divergences an outside fuzzing run found (issue 14).

Deterministic: ``python tests/fuzz/make_corpus.py`` rewrites the same files from the same Pillow.
The mutations are also what tests/test_jpegdc.py applies to its own images.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFile

CORPUS = Path(__file__).resolve().parent / "corpus"


def segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The header's marker segments up to and including SOS, as (marker, payload), and the rest (scan, EOI)."""
    pos, out = 2, []
    while True:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
        if marker == 0xDA:
            return out, data[pos:]


def join(parts: list[tuple[int, bytes]], rest: bytes) -> bytes:
    """The inverse of :func:`segments`; a marker of None is raw bytes."""
    body = b"".join(payload if marker is None else bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
                    for marker, payload in parts)
    return b"\xff\xd8" + body + rest


def _before_sof(data: bytes, raw: bytes) -> bytes:
    parts, rest = segments(data)
    at = next(i for i, (m, _) in enumerate(parts) if m in (0xC0, 0xC1))
    return join([*parts[:at], (None, raw), *parts[at:]], rest)


def all_ones_code(data: bytes) -> bytes:
    """One more code of the longest length in the first DC table, so that its last code is all ones:
    libjpeg refuses the table ("Bogus Huffman table definition")."""
    parts, rest = segments(data)
    for i, (marker, payload) in enumerate(parts):
        if marker == 0xC4 and payload[0] >> 4 == 0:
            counts = bytearray(payload[1:17])
            n = sum(counts)
            longest = max(k for k in range(16) if counts[k])
            counts[longest] += 1
            table = bytes([payload[0]]) + bytes(counts) + payload[17 : 17 + n] + b"\x0f" + payload[17 + n :]
            code = 0  # one past the last canonical code: 2**length when the last one is all ones
            for length in range(longest + 1):
                code = (code << 1 if length else 0) + counts[length]
            assert code == 1 << (longest + 1), "the table is not complete: pick another one"
            parts[i] = (marker, table)
            return join(parts, rest)
    raise ValueError("no DC table")


def ff00_hidden_dqt(data: bytes) -> bytes:
    """``FF 00`` and a length that spans a DQT redefining table 0: libjpeg skips ``FF 00 ..`` as stray bytes
    and reads the DQT (other pixels), a reader that takes ``FF 00`` for a segment skips the DQT."""
    dqt = b"\xff\xdb\x00\x43\x00" + bytes([40] + [1] * 63)
    return _before_sof(data, b"\xff\x00" + struct.pack(">H", 2 + len(dqt)) + dqt)


def second_soi(data: bytes) -> bytes:
    """A second SOI in the header, with a length: libjpeg refuses it ("two SOI markers")."""
    return _before_sof(data, b"\xff\xd8\x00\x04ab")


def reserved_marker(data: bytes, marker: int = 0xDF) -> bytes:
    """A reserved marker segment (EXP by default; DHP, JPGn, DNL, TEM alike): libjpeg refuses it."""
    return _before_sof(data, bytes([0xFF, marker]) + b"\x00\x04ab")


def chroma_qtable_undefined(data: bytes) -> bytes:
    """A colour file whose Cb component names quantisation table 3, which no DQT defines: libjpeg refuses it."""
    parts, rest = segments(data)
    for i, (marker, payload) in enumerate(parts):
        if marker in (0xC0, 0xC1):
            assert payload[5] == 3, "a colour file is needed"
            sof = bytearray(payload)
            sof[6 + 3 + 2] = 3  # component 2's Tq
            parts[i] = (marker, bytes(sof))
            return join(parts, rest)
    raise ValueError("no SOF")


#: The five kinds of divergence found by the outside run, each a mutation of a file that reads right.
FINDINGS: dict[str, Callable[[bytes], bytes]] = {
    "all_ones_code": all_ones_code,
    "ff00_hidden_dqt": ff00_hidden_dqt,
    "second_soi": second_soi,
    "exp_marker": reserved_marker,
    "chroma_qtable_undefined": chroma_qtable_undefined,
}


def digit_photo(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A dark stroke on noisy paper with a lighting ramp: like a phone photo of a digit, small."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(150, 230, width, dtype=np.float32)[None, :, None]
    paper = (ramp + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(paper)
    draw = ImageDraw.Draw(img)
    draw.ellipse((width * 0.3, height * 0.2, width * 0.7, height * 0.8), outline=(30, 30, 40),
                 width=max(1, width // 12))
    return img.convert(mode)


def encode(img: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    saved, ImageFile.MAXBLOCK = ImageFile.MAXBLOCK, 1 << 24  # optimize/progressive need room to write
    try:
        img.save(out, format="JPEG", **options)
    finally:
        ImageFile.MAXBLOCK = saved
    return out.getvalue()


def seeds() -> dict[str, bytes]:
    """Name -> bytes of every seed."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = {
        "gray": encode(digit_photo(96, 72, 1, "L")),
        "420": encode(digit_photo(120, 90, 2), subsampling=2),
        "422": encode(digit_photo(80, 64, 3), subsampling=1),
        "444": encode(digit_photo(64, 48, 4), subsampling=0),
        "optimized": encode(digit_photo(100, 70, 5), optimize=True),
        "quality5": encode(digit_photo(128, 96, 6), quality=5),
        "quality100": encode(digit_photo(40, 32, 7), quality=100, subsampling=0),
        "restart3": encode(digit_photo(90, 60, 8), restart_marker_blocks=3),
        "restart_rows_gray": encode(digit_photo(72, 40, 9, "L"), restart_marker_rows=1),
        "exif_comment": encode(digit_photo(64, 64, 10), exif=exif.tobytes(), comment=b"digitq"),
        "tiny_9x13": encode(digit_photo(9, 13, 11)),
        "narrow_401x17": encode(digit_photo(401, 17, 12, "L"), quality=60),
        "one_pixel": encode(digit_photo(1, 1, 13, "L")),
        "progressive": encode(digit_photo(64, 48, 14), progressive=True),
        "cmyk": encode(digit_photo(32, 32, 15, "CMYK")),
    }
    colour, gray = encode(digit_photo(64, 48, 16)), encode(digit_photo(64, 48, 17, "L"))
    for name, mutate in FINDINGS.items():
        out[f"finding_{name}"] = mutate(colour if name == "chroma_qtable_undefined" else gray)
    for marker in (0xDE, 0xF0, 0xDC, 0x01):
        out[f"marker_{marker:02x}"] = reserved_marker(gray, marker)
    return out


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for old in CORPUS.glob("*.jpg"):
        old.unlink()
    total = 0
    for name, data in seeds().items():
        (CORPUS / f"{name}.jpg").write_bytes(data)
        total += len(data)
    print(f"{len(list(CORPUS.glob('*.jpg')))} seeds, {total:,} bytes in {CORPUS}")


if __name__ == "__main__":
    main()
