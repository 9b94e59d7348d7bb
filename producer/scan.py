"""Walk folders for image files: sorted, hidden files skipped, symlink loops cut."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from digitq.paths import escape_path, is_image_name


class Found(NamedTuple):
    """An image file: its display path (PATH argument + relative path) and size.

    A tuple, not a dataclass: a scan of a million files holds a million of them."""

    path: str
    size: int


@dataclass
class ScanResult:
    """What a walk found, and how many entries it passed over."""

    files: list[Found] = field(default_factory=list)
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)


def find_images(paths: Sequence[str | bytes | os.PathLike], on_file: Callable[[int], None] | None = None) -> ScanResult:
    """Every image file under ``paths``, sorted by display path, each once.

    A directory is walked recursively; a PATH that is a file is taken as is,
    whatever its extension. Hidden entries (``.name``), non-image files and
    special files count as skipped. Symlinks to files are followed; a symlink
    to a directory already walked (a loop, or a second way in) is skipped.
    """
    result = ScanResult()
    seen_dirs: set[tuple[int, int]] = set()
    found: dict[str, int] = {}

    def add(path: bytes, size: int) -> None:
        shown = escape_path(path)
        if shown not in found:
            found[shown] = size
            if on_file:
                on_file(len(found))

    for arg in paths:
        root = os.fsencode(arg)
        try:
            st = os.stat(root)
        except OSError as e:
            result.warnings.append(f"{escape_path(root)}: {e.strerror or e}")
            continue
        if os.path.isdir(root):
            _walk(root, result, seen_dirs, add)
        else:
            add(root, st.st_size)
    result.files = [Found(path, found.pop(path)) for path in sorted(found)]
    return result


def _walk(root: bytes, result: ScanResult, seen: set[tuple[int, int]], add: Callable[[bytes, int], None]) -> None:
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError as e:
            result.warnings.append(f"{escape_path(directory)}: {e.strerror or e}")
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            result.skipped += 1
            continue
        seen.add(key)
        try:
            entries = list(os.scandir(directory))
        except OSError as e:
            result.warnings.append(f"{escape_path(directory)}: cannot list ({e.strerror or e})")
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(b"."):
                result.skipped += 1
                continue
            try:
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.is_file() and is_image_name(os.fsdecode(name)):
                    add(entry.path, entry.stat().st_size)
                else:
                    result.skipped += 1
            except OSError:
                result.skipped += 1
