"""Walk folders for image files: sorted, hidden files skipped, symlink loops cut."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from digitq.disk.files import file_kind
from digitq.disk.paths import escape_path, is_image_name
from digitq.errors import DataError
from producer.forks import can_fork, exit_reason, fork_child

#: Characters of the walk's list of files read at a time, and files written at a time.
_CHUNK = 1 << 20
_FILES_PER_WRITE = 10_000


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
    whatever its extension, if it is a regular file. Hidden entries (``.name``),
    non-image files and special files (FIFOs, devices, sockets) count as skipped.
    Symlinks to files are followed; a symlink to a directory already walked (a loop,
    or a second way in) is skipped.
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
        if stat.S_ISDIR(st.st_mode):
            _walk(root, result, seen_dirs, add)
        elif stat.S_ISREG(st.st_mode):
            add(root, st.st_size)
        else:  # reading a FIFO or a device would wait, or act on it
            result.skipped += 1
            result.warnings.append(f"{escape_path(root)}: skipped, {file_kind(st.st_mode)}, not a regular file")
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


class ForkedWalk:
    """:func:`find_images` in a forked child process, started at once, so that this process can
    import and connect meanwhile (the walk is about a fifth of a 20,000-file scan on one core).

    The child streams its progress lines, then one JSON line (the skipped entries, the warnings and the
    number of files), then the files as NUL-separated text, ``path\\0size\\0`` each: no path holds a NUL,
    and one join and one split cost a fifth of a JSON line a file on each side. Where there is no
    ``fork``, or another thread runs (forking would copy its locks), the walk runs here, in :meth:`result`.
    """

    def __init__(self, paths: Sequence[str | bytes | os.PathLike]) -> None:
        self.paths = list(paths)
        self.pid: int | None = None
        self._stream = None
        if not can_fork():
            return
        read_end, write_end = os.pipe()
        self.pid = fork_child(lambda: _walk_to(self.paths, read_end, write_end))
        os.close(write_end)
        self._stream = os.fdopen(read_end, encoding="utf-8", newline="")  # a path may hold a "\r"

    def result(self, on_file: Callable[[int], None] | None = None) -> ScanResult:
        """What the walk found (waiting for it); ``on_file`` gets the count found so far."""
        if self.pid is None:
            return find_images(self.paths, on_file)
        result, end, rest = ScanResult(), None, ""
        with self._stream as stream:
            for line in stream:
                if not line.startswith("#"):
                    end = json.loads(line)
                    break
                if on_file:
                    on_file(int(line[1:]))
            if end is not None and "error" not in end:
                # A megabyte at a time: a million files' text and fields never all sit in memory at once.
                while chunk := stream.read(_CHUNK):
                    fields = (rest + chunk).split("\0")
                    rest = fields.pop()  # the field the chunk cut, or ""
                    if len(fields) % 2:  # a path whose size is still to come
                        rest = fields.pop() + "\0" + rest
                    result.files.extend(map(Found, fields[0::2], map(int, fields[1::2])))
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if end is None or "error" in end or rest or len(result.files) != end["files"]:
            if end is None:
                why = f"the walking process ended ({exit_reason(status)})"
            else:
                why = end.get("error") or f"its list of files was cut short ({exit_reason(status)})"
            raise DataError(f"walking {', '.join(map(os.fsdecode, self.paths))} failed: {why}")
        result.skipped, result.warnings = end["skipped"], end["warnings"]
        if on_file:
            on_file(len(result.files))
        return result

    def cancel(self) -> None:
        """Stop the walk (when this process gives up before reading it)."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None
            self._stream.close()


def _walk_to(paths: Sequence[str | bytes | os.PathLike], unused: int, fd: int) -> int:
    """The child's side of :class:`ForkedWalk`: walk and write; the exit code."""
    os.close(unused)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
        drawn = [time.monotonic()]

        def progress(count: int) -> None:
            now = time.monotonic()
            if now - drawn[0] > 0.1:  # ten updates a second, not one a file
                drawn[0] = now
                out.write(f"#{count}\n")
                out.flush()

        try:
            found = find_images(paths, on_file=progress)
        except Exception as e:  # reported by the parent, which raises
            out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
            return 1
        out.write(json.dumps({"skipped": found.skipped, "warnings": found.warnings, "files": len(found.files)}) + "\n")
        files = found.files
        for start in range(0, len(files), _FILES_PER_WRITE):
            out.write("".join(f"{path}\0{size}\0" for path, size in files[start : start + _FILES_PER_WRITE]))
    return 0
