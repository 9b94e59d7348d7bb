"""The content-hash index: which model version scored which bytes, and what it said.

``DIGITQ_DATA_DIR/index/scores.sqlite3`` maps (sha256 of a file's bytes, model
version) to (prediction, confidence). ``digitq scan --incremental`` fills rows
from it for files whose bytes the pinned version has already scored, and sends
only the rest; workers record what they predict for such scans. An entry is never
trusted for another version: a promotion makes the next incremental rescan score
everything again. Only rows that follow from the bytes are recorded (a prediction, a
decode error); a read failure or a quarantine is not.

SQLite with its default rollback journal and a busy timeout, so several worker
processes may record at once. On network storage (NFS) its locking is only as
good as the server's; the index is a cache, and losing it costs predictions, not rows.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

_SCHEMA = """CREATE TABLE IF NOT EXISTS scores (
    sha256 TEXT NOT NULL, version TEXT NOT NULL, prediction INTEGER, confidence REAL, error TEXT,
    PRIMARY KEY (sha256, version)) WITHOUT ROWID"""
#: (prediction, confidence, error): a prediction, or the decode error these bytes always give.
Score = tuple[int | None, float | None, str | None]
_LOOKUP_CHUNK = 500  # SQLite's default limit on bound parameters is 999


def digest(data: bytes) -> str:
    """The index key of a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def _path(data_dir: Path) -> Path:
    return Path(data_dir) / "index" / "scores.sqlite3"


def _connect(data_dir: Path, create: bool) -> sqlite3.Connection | None:
    path = _path(data_dir)
    if not create and not path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30)
    db.execute(_SCHEMA)
    return db


def lookup(data_dir: Path, version: str, digests: Sequence[str]) -> dict[str, Score]:
    """``digest -> (prediction, confidence, error)`` for the digests ``version`` has scored."""
    db = _connect(data_dir, create=False)
    if db is None or not digests:
        return {}
    found: dict[str, Score] = {}
    try:
        unique = sorted(set(digests))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT sha256, prediction, confidence, error FROM scores WHERE version = ? AND sha256 IN ({marks})"  # noqa: S608,E501 - only placeholders
            for sha, prediction, confidence, error in db.execute(query, [version, *chunk]):
                found[sha] = (prediction, confidence, error)
    finally:
        db.close()
    return found


def record(data_dir: Path, version: str, scored: Iterable[tuple[str, int | None, float | None, str | None]]) -> int:
    """Store ``(digest, prediction, confidence, error)`` as scored by ``version``; returns how many."""
    items = [(sha, version, p, c, e) for sha, p, c, e in scored]
    if not items:
        return 0
    db = _connect(data_dir, create=True)
    try:
        with db:
            db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)", items)
    finally:
        db.close()
    return len(items)
