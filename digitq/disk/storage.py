"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """A temp file beside ``path`` to write into; on success it is fsynced and renamed over ``path``,
    on an exception removed. For output too large to build in memory first."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename over ``path``."""
    with atomic_open(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


#: What ``link(2)`` fails with where a file system has no hard links (FAT, some FUSE and SMB mounts).
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV}


def create_once(path: str | Path, data: bytes | str, tmp_dir: str | Path | None = None) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True when this call created it.

    The first writer wins, atomically: the data is written and fsynced under a temp name, then hard-linked
    to ``path``, and a link never replaces a file. A reader sees the whole file or none, and no later call
    changes it. ``tmp_dir`` (on the same file system) keeps the temp name out of ``path``'s folder, whose
    mtime then changes only when ``path`` appears. Where the file system has no hard links, the temp file
    is renamed into place if ``path`` is absent: atomic for readers, but two writers at the same instant
    may both win there."""
    path = Path(path)
    tmp = Path(tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            if path.exists():
                return False
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def atomic_write_json(path: str | Path, obj: object) -> None:
    """:func:`atomic_write` of pretty JSON."""
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=True) + "\n")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def data_dir_id(data_dir: str | Path, create: bool = True) -> str | None:
    """The data dir's identity: a random id written once in ``.digitq-id``, so that a producer and its
    workers can tell whether they see the same storage. None when absent and ``create`` is False."""
    path = Path(data_dir) / ".digitq-id"
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path.read_text().strip() or None  # another process won the race
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(8) + "\n")
    return path.read_text().strip()
