"""The messages a batch travels as: what the producer sends, and what a stateless worker hands in.

A **batch message** is a ``predict`` task's arguments, ``[job_id, batch, entries, context]``
(:class:`BatchMessage`): one :class:`Entry` per file, in the manifest's order, and the
:class:`JobContext` a worker without the data dir needs. An entry carries exactly one of

- ``blob``: the key of the file's bytes, stored beside the message (:mod:`digitq.batch.blobs`);
- ``data``: the bytes inline, base64;
- ``ref``: the file's escaped path on shared storage (``scan --by-path``);
- ``scored``: ``[prediction, confidence, error]`` from the content-hash index (no bytes travel);
- ``error``: why the producer could not send the file (an error row, never retried);

with the file's ``path`` and, for incremental scans, the ``digest`` of its bytes.

An **outcome** is a ``collect`` task's payload (:class:`Outcome`): the committed rows of a batch a
stateless worker predicted; :class:`DuplicateNotice` and :class:`FailureNotice` travel the same way.

Every message says its :data:`FORMAT`; a message without one is of the first format, which is
this one: readers accept both.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from digitq.disk.jobs import Row
from digitq.errors import JobError

#: The wire format written; a message without ``v`` is format 1.
FORMAT = 1
_VERSION = "v"


class Kind(StrEnum):
    """Where an entry's file comes from (its key on the wire)."""

    BLOB = "blob"
    DATA = "data"
    REF = "ref"
    SCORED = "scored"
    ERROR = "error"


#: The order an entry's kind is looked for on the wire (an error first: such an entry has no bytes).
_KIND_ORDER = (Kind.ERROR, Kind.SCORED, Kind.BLOB, Kind.DATA, Kind.REF)
_NO_SOURCE = "message entry has neither data nor a path"


@dataclass(frozen=True)
class Entry:
    """One file of a batch message."""

    kind: Kind
    path: str
    #: The blob key, the base64 text, the escaped path, the ``(prediction, confidence, error)`` score or the error.
    value: Any
    #: The digest of the file's bytes (incremental scans), or None.
    digest: str | None = None

    @property
    def error(self) -> str | None:
        """The producer's error for this file, or None."""
        return str(self.value) if self.kind is Kind.ERROR else None

    def to_wire(self) -> dict:
        wire: dict[str, Any] = {"path": self.path}
        if self.digest:
            wire["digest"] = self.digest
        wire[self.kind.value] = list(self.value) if self.kind is Kind.SCORED else self.value
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Entry:
        """The entry of a wire dict; one with no source at all reads as an error entry."""
        path, digest = str(wire.get("path", "")), wire.get("digest")
        digest = None if digest is None else str(digest)
        for kind in _KIND_ORDER:
            if kind is Kind.ERROR and not wire.get(kind.value):
                continue
            if kind is Kind.REF and not isinstance(wire.get(kind.value), str):
                continue
            if kind.value in wire:
                value = wire[kind.value]
                if kind is Kind.SCORED:
                    value = tuple(value)
                elif kind is not Kind.DATA:
                    value = str(value)
                return cls(kind, path, value, digest)
        return cls(Kind.ERROR, path, _NO_SOURCE, digest)


@dataclass(frozen=True)
class JobContext:
    """What a batch message says about its job, so that a worker without the data dir can run it."""

    #: The id of the job's data dir (a worker with the same one commits the batch itself).
    data_dir: str
    #: The pinned model by content (:func:`model.serving.artifacts.descriptor`).
    model: dict
    #: The queue that takes outcomes back to the data dir.
    collect: str

    def to_wire(self) -> dict:
        return {"data_dir": self.data_dir, "model": dict(self.model), "collect": self.collect, _VERSION: FORMAT}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any] | None) -> JobContext | None:
        """The context, or None for a message that carries none (then only a worker that sees the job runs it)."""
        if not wire or "data_dir" not in wire:
            return None
        return cls(str(wire["data_dir"]), dict(wire.get("model") or {}), str(wire.get("collect", "")))


@dataclass(frozen=True)
class BatchMessage:
    """A ``predict`` task's arguments: one batch of a job."""

    job_id: str
    batch: int
    entries: list[Entry]
    context: JobContext | None = None

    def to_wire(self) -> list:
        """The task's positional arguments (a message without context has three)."""
        wire: list = [self.job_id, self.batch, [e.to_wire() for e in self.entries]]
        if self.context is not None:
            wire.append(self.context.to_wire())
        return wire

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> BatchMessage:
        job_id, batch, entries, *rest = wire
        try:
            parsed = [Entry.from_wire(e) for e in entries]
        except (AttributeError, TypeError, ValueError) as e:
            raise JobError(f"job {job_id} batch {batch}: malformed batch message ({type(e).__name__}: {e})") from e
        return cls(str(job_id), int(batch), parsed, JobContext.from_wire(rest[0] if rest else None))

    @property
    def blob_keys(self) -> list[str]:
        """The keys of the batch's blobs, freed once it is committed."""
        return [str(e.value) for e in self.entries if e.kind is Kind.BLOB]


#: A row on the wire: these fields, in this order.
ROW_FIELDS = ("path", "prediction", "confidence", "error", "digest", "lasting")


def row_to_wire(row: Row) -> list:
    return [getattr(row, name) for name in ROW_FIELDS]


def row_from_wire(wire: Sequence[Any]) -> Row:
    if len(wire) != len(ROW_FIELDS):
        raise ValueError(f"a row has {len(ROW_FIELDS)} fields, not {len(wire)}")
    path, prediction, confidence, error, digest, lasting = wire
    return Row(str(path), None if prediction is None else int(prediction),
               None if confidence is None else float(confidence), None if error is None else str(error),
               digest=None if digest is None else str(digest), lasting=bool(lasting))


@dataclass
class Outcome:
    """What predicting one batch produced, as committed (or handed in through Redis)."""

    job_id: str
    batch: int
    rows: list[Row]
    model_version: str
    started: float
    #: ``(digest, prediction, confidence, error)`` for the content-hash index (incremental scans).
    index: list[tuple] = field(default_factory=list)
    #: The batch's blob keys, freed once it is committed.
    blobs: list[str] = field(default_factory=list)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def to_wire(self) -> dict:
        """A JSON-able payload for the ``collect`` task."""
        return {"rows": [row_to_wire(r) for r in self.rows], "model_version": self.model_version,
                "started": self.started, "index": [list(i) for i in self.index], "blobs": list(self.blobs),
                "host": self.host, "pid": self.pid, _VERSION: FORMAT}

    @classmethod
    def from_wire(cls, job_id: str, batch: int, payload: Mapping[str, Any]) -> Outcome:
        """The outcome a ``collect`` message carries; a :class:`JobError` for a malformed one."""
        try:
            return cls(job_id, int(batch), [row_from_wire(r) for r in payload["rows"]], str(payload["model_version"]),
                       float(payload["started"]), index=[tuple(i) for i in payload.get("index", [])],
                       blobs=[str(k) for k in payload["blobs"]], host=str(payload.get("host", "?")),
                       pid=int(payload.get("pid", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise JobError(f"job {job_id} batch {batch}: malformed result message ({type(e).__name__}: {e})") from e


@dataclass(frozen=True)
class DuplicateNotice:
    """A stateless worker dropped a delivery of a committed batch: counted where the job is seen."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    at: float = field(default_factory=time.time)

    def to_wire(self) -> dict:
        return {"duplicate": True, "host": self.host, "pid": self.pid, "at": self.at, _VERSION: FORMAT}


@dataclass(frozen=True)
class FailureNotice:
    """A batch a stateless worker failed for good: recorded where the job is seen."""

    error: str
    at: float = field(default_factory=time.time)

    def to_wire(self) -> dict:
        return {"failed": self.error, "at": self.at, _VERSION: FORMAT}


def collect_payload(job_id: str, batch: int, payload: Mapping[str, Any]) -> Outcome | DuplicateNotice | FailureNotice:
    """What a ``collect`` message carries."""
    if "duplicate" in payload:
        return DuplicateNotice(str(payload.get("host", "?")), int(payload.get("pid", 0)),
                               float(payload.get("at", 0.0)))
    if "failed" in payload:
        return FailureNotice(str(payload["failed"]), float(payload.get("at", 0.0)))
    return Outcome.from_wire(job_id, batch, payload)


def collect_args(job_id: str, batch: int, what: Outcome | DuplicateNotice | FailureNotice) -> list:
    """A ``collect`` task's positional arguments."""
    return [job_id, batch, what.to_wire()]
