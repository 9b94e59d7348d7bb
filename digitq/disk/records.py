"""Records on disk: what jobs and trainings share.

A record is a folder under the data dir (``jobs/<id>/``, ``trainings/<id>/``) named by a sortable id, with a
header JSON written last, so that the record exists once it is whole on disk, and more JSON files beside it,
each written atomically. Here: the id format and its check, loading the header with a clear not-found error,
reading and atomically writing JSON inside the folder, listing ids newest first, the :class:`State` words
and the :class:`Status` base of the summaries that ``digitq status`` and ``digitq training`` print.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self

from digitq.disk.storage import atomic_write_json
from digitq.errors import DigitqError

ID_FORMAT = "YYYYMMDD-HHMMSS-xxxxxx"
#: ``\Z``, not ``$``: ``$`` also matches before a trailing newline, which would then name another path.
ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\Z")


def new_id() -> str:
    """A sortable, unique id: ``YYYYMMDD-HHMMSS-xxxxxx`` (UTC)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def list_ids(parent: Path, marker: str) -> list[str]:
    """The ids (``YYYYMMDD-HHMMSS-xxxxxx``) of the folders under ``parent`` that hold ``marker``, newest first."""
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    return sorted((n for n in names if ID_RE.fullmatch(n) and (Path(parent) / n / marker).is_file()), reverse=True)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable: polled files (a training's run and
    outcome, a job's failed batches) may be half-visible on a lazy network mount; the next poll sees them whole."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class State(StrEnum):
    """Where a job or a training stands. A ``str``: JSON output, files on disk and comparisons with the bare
    words (``status["state"] == "done"``) all see the plain words."""

    SCHEDULED = "scheduled"  # a training whose ``--at`` time has not come
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # a training whose process died without recording an outcome
    STALLED = "stalled"  # told by Redis' stall records (digitq.batch.stalls), never decided from the files alone

    @classmethod
    def of(cls, word: Any) -> State | Any:
        """The member for ``word``; a word this digitq does not know (an outcome from a newer one) as written,
        so that a status still shows it rather than failing."""
        try:
            return cls(word)
        except ValueError:
            return word


@dataclass(frozen=True)
class Status:
    """A record's summary. Subclasses declare its fields in output order; :meth:`to_dict` is what the CLI's
    ``--json`` prints and what callers (``digitq wait``, stall checks) read and amend."""

    def to_dict(self) -> dict[str, Any]:
        # Shallow, in field order: the same keys, order and values as the dicts built by hand before.
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Record:
    """One record's folder and its header. Subclasses name their kind, header file and errors."""

    #: The noun in ids (``<kind>_id`` in the header), messages and the CLI's listing command (``digitq <kind>s``).
    kind: ClassVar[str]
    #: The header file, written last: the record exists once it is there.
    header_file: ClassVar[str]
    error: ClassVar[type[DigitqError]]
    not_found: ClassVar[type[DigitqError]]
    #: Whether an unreadable header counts as missing (a training's request, polled from any host) rather than
    #: as a broken record (a job's manifest, which a worker must not skip silently).
    missing_if_unreadable: ClassVar[bool] = False

    def __init__(self, directory: Path, header: dict):
        self.dir = Path(directory)
        self.header = header

    @property
    def id(self) -> str:
        return self.header[f"{self.kind}_id"]

    @classmethod
    def check_id(cls, record_id: str) -> str:
        """``record_id`` if it is well-formed; keeps task arguments from naming paths outside the data dir."""
        if not isinstance(record_id, str) or not ID_RE.fullmatch(record_id):
            raise cls.error(f"{record_id!r} is not a {cls.kind} id (expected {ID_FORMAT}); see `digitq {cls.kind}s`")
        return record_id

    @classmethod
    def load(cls, parent: Path, record_id: str) -> Self:
        """Open an existing record; :attr:`not_found` when there is none under ``parent``."""
        directory = Path(parent) / cls.check_id(record_id)
        path = directory / cls.header_file
        try:
            header = json.loads(path.read_text())
        except FileNotFoundError:
            header = None
        except (OSError, ValueError) as e:
            if not cls.missing_if_unreadable:
                raise cls.error(f"{cls.kind} {record_id}: unreadable manifest {path}: {e}") from e
            header = None
        if header is None:
            raise cls.not_found(f"no {cls.kind} {record_id} under {parent}; check DIGITQ_DATA_DIR "
                                f"or `digitq {cls.kind}s`")
        return cls(directory, header)

    @classmethod
    def ids(cls, parent: Path) -> list[str]:
        """The ids of the records under ``parent``, newest first."""
        return list_ids(parent, cls.header_file)

    @classmethod
    def _publish(cls, directory: Path, header: dict) -> Self:
        """Write the header of a new record whose other files are in place, and return the record."""
        atomic_write_json(Path(directory) / cls.header_file, header)
        return cls(directory, header)

    def read_json(self, name: str) -> Any | None:
        """:func:`read_json` of a file in the folder."""
        return read_json(self.dir / name)

    def write_json(self, name: str, obj: object) -> None:
        """Atomically write (or replace) a JSON file in the folder: readers see the old one or the new one."""
        atomic_write_json(self.dir / name, obj)

    def snapshot(self) -> Status:
        """The record's summary, from its files on disk."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """:meth:`snapshot` as the dict the CLI prints with ``--json``."""
        return self.snapshot().to_dict()
