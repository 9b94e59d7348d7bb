"""File names as text: a reversible escape for names that are not valid UTF-8.

A POSIX file name is bytes. We show it as UTF-8 text where it is valid; an
invalid byte becomes ``\\xNN`` and a backslash becomes ``\\\\``, so two
different names never print the same and the worker can get the bytes back.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")
#: What `scan` and the labelled-folder loader take for an image, by extension (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


#: The manifest `digitq review` writes into a labelling folder; the training loader reads it to count
#: corrections (an image moved to another digit folder than the one it was exported to).
REVIEW_MANIFEST = "review.json"


def is_image_name(name: str) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def escape_path(path: str | bytes | os.PathLike) -> str:
    """Text form of a path: valid UTF-8 as is, ``\\`` doubled, bad bytes as ``\\xNN``."""
    raw = os.fsencode(path)
    out: list[str] = []
    while raw:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.append(raw[: e.start].decode("utf-8").replace("\\", "\\\\"))
            out.extend(f"\\x{b:02x}" for b in raw[e.start : e.end])
            raw = raw[e.end :]
            continue
        out.append(text.replace("\\", "\\\\"))
        break
    return "".join(out)


def unescape_path(text: str) -> bytes:
    """The bytes of a path written by :func:`escape_path`."""
    if "\\" not in text:
        return text.encode("utf-8")  # nothing escaped: the common case, ten times cheaper
    parts: list[bytes] = []
    pos = 0
    for m in _ESCAPE.finditer(text):
        parts.append(text[pos : m.start()].encode("utf-8"))
        escape = m.group(1)
        parts.append(b"\\" if escape == "\\" else bytes([int(escape[1:], 16)]))
        pos = m.end()
    parts.append(text[pos:].encode("utf-8"))
    return b"".join(parts)
