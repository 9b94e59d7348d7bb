"""Differential fuzzing of the JPEG DC reader (model/serving/jpegdc.c) against libjpeg, through Pillow's draft("L").

The rule checked on every input: where the reader returns pixels, Pillow must read the file too, and at
1/8 scale give exactly those pixels. A file Pillow refuses must be refused by the reader (left to libjpeg,
which then words the error). Inputs the reader refuses are not decoded by Pillow: that costs nothing.

Run by scripts/fuzz-jpegdc.sh under atheris (libFuzzer), on a build of the reader with AddressSanitizer
and UndefinedBehaviorSanitizer named by ``JPEGDC_SO``; without it, the installed ``model.serving._jpegdc``.
``check`` is also what tests/test_jpegdc.py runs over the seed corpus.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

CORPUS = Path(__file__).resolve().parent / "corpus"
Image.MAX_IMAGE_PIXELS = None  # decode_image refuses bombs before the reader sees them; here, compare anything


class Divergence(AssertionError):
    """The reader read a file into pixels libjpeg refuses or decodes differently."""


def load_reader(path: str | None = None) -> ModuleType:
    """The reader built at ``path`` (a sanitizer build), else the installed ``model.serving._jpegdc``."""
    path = path or os.environ.get("JPEGDC_SO")
    if not path:
        from model.serving import _jpegdc

        return _jpegdc
    loader = importlib.machinery.ExtensionFileLoader("_jpegdc", path)
    spec = importlib.util.spec_from_file_location("_jpegdc", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def pillow_eighth(data: bytes) -> Image.Image:
    """libjpeg's reading of ``data`` through Pillow: luma at 1/8 scale where Pillow drafts to it
    (both sides of 8 px or more), as model/serving/preprocess.py asks for it. Raises what Pillow raises."""
    img = Image.open(io.BytesIO(data), formats=("JPEG",))
    img.draft("L", (max(1, img.width // 8), max(1, img.height // 8)))
    img.load()
    return img


def check(data: bytes, reader: ModuleType) -> bool:
    """Raise :class:`Divergence` where ``reader`` reads ``data`` other than libjpeg does; True if it read it."""
    got = reader.luma_dc(data)
    if got is None:
        return False
    width, height, pixels = got
    if len(pixels) != width * height:
        raise Divergence(f"the reader returned {len(pixels)} bytes for {width}x{height}")
    try:
        img = pillow_eighth(data)
    except Exception as e:  # Pillow raises many types for a file libjpeg refuses
        raise Divergence(f"the reader read a file Pillow refuses ({type(e).__name__}: {e})") from e
    if img.decoderconfig != (8, 0):
        return True  # a side under 8 px: Pillow drafts to 1/4 at most, which decode_image never reads with the C reader
    if img.size != (width, height) or img.mode != "L":
        raise Divergence(f"the reader gave {width}x{height}, Pillow {img.width}x{img.height} {img.mode}")
    ours = np.frombuffer(pixels, np.uint8).reshape(height, width)
    theirs = np.asarray(img)
    if not np.array_equal(ours, theirs):
        differ = int((ours != theirs).sum())
        raise Divergence(f"{differ} of {width * height} pixels differ from Pillow's draft('L') at 1/8")
    return True


def main() -> None:
    import atheris

    reader = load_reader()
    print(f"fuzzing {getattr(reader, '__file__', reader)}", file=sys.stderr)

    def one_input(data: bytes) -> None:
        check(data, reader)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
