"""The commit path of a batch: one place for what follows a prediction.

A batch's :class:`Outcome` (its rows, the version that scored them, what to free) is
committed by a process that sees the job's data dir: the worker that predicted it, when
it sees that dir, or else a worker consuming the data dir's ``collect.<id>`` queue, to
which a worker without it hands the outcome in through Redis (:func:`hand_in`).
Either way :func:`commit` runs the same steps, in an order that keeps every guarantee:

1. the result file is created atomically, once: the first commit of a batch wins, and a later
   outcome of it (a duplicate message, a lost ack, a sweeper's re-send, before the merge or
   after it) is discarded, logged and counted (``digitq status --json``: ``duplicates``);
2. the content-hash index records the scores (a cache: failures cost nothing; a discarded
   outcome records none);
3. the caller's ``committed`` hook runs (the delivery count is forgotten);
4. the ledger records the batch, the batch's blobs and its message's copy (:mod:`digitq.batch.outbox`)
   are freed, and the job is merged if this may have been its last batch.

A delivery of a batch whose result is committed is discarded before it is predicted where the
job is visible (:func:`discard`); elsewhere, one whose blobs are gone is a duplicate when the
ledger says so (:func:`already_committed`). Failures that no retry can mend are recorded the same way:
on disk by whoever sees the data dir (:func:`record_failure`).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from digitq.batch import blobs, ledger, outbox
from digitq.bus import failover
from digitq.disk import scores
from digitq.disk.jobs import Job, Row
from digitq.disk.storage import data_dir_id
from digitq.errors import DigitqError, JobError
from digitq.settings import Settings

log = logging.getLogger("digitq.worker")
#: The task that commits what a stateless worker handed in, on the data dir's ``collect.<id>`` queue.
COLLECT_TASK = "digitq.collect_batch"
#: What a row travels as: path, prediction, confidence, error, digest, lasting.
_ROW_FIELDS = 6


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

    def to_message(self) -> dict:
        """A JSON-able payload for the ``collect`` task."""
        return {"rows": [[r.path, r.prediction, r.confidence, r.error, r.digest, r.lasting] for r in self.rows],
                "model_version": self.model_version, "started": self.started, "index": [list(i) for i in self.index],
                "blobs": list(self.blobs), "host": self.host, "pid": self.pid}

    @classmethod
    def from_message(cls, job_id: str, batch: int, payload: dict) -> Outcome:
        """The outcome a ``collect`` message carries; a :class:`JobError` for a malformed one."""
        try:
            rows = [Row(str(p), None if d is None else int(d), None if c is None else float(c),
                        None if e is None else str(e), digest=None if h is None else str(h), lasting=bool(lasting))
                    for p, d, c, e, h, lasting in (r if len(r) == _ROW_FIELDS else () for r in payload["rows"])]
            return cls(job_id, int(batch), rows, str(payload["model_version"]), float(payload["started"]),
                       index=[tuple(i) for i in payload.get("index", [])], blobs=[str(k) for k in payload["blobs"]],
                       host=str(payload.get("host", "?")), pid=int(payload.get("pid", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise JobError(f"job {job_id} batch {batch}: malformed result message ({type(e).__name__}: {e})") from e


def index_entries(entries: Sequence[dict], rows: Sequence[Row]) -> list[tuple]:
    """What this batch adds to the index: rows of an incremental scan's files that follow from their bytes,
    under the digest of the bytes the worker decoded (the file may have changed since the scan hashed it)."""
    return [(r.digest, r.prediction, r.confidence, r.error) for e, r in zip(entries, rows, strict=True)
            if e.get("digest") and "scored" not in e and r.lasting and r.digest]


def commit(settings: Settings, job: Job, outcome: Outcome, committed: Callable[[], None] | None = None) -> bool:
    """Commit ``outcome`` under ``job`` (steps 1 to 4 above); True when the job is now done."""
    if not job.commit(outcome.batch, outcome.rows, model_version=outcome.model_version, started=outcome.started,
                      host=outcome.host, pid=outcome.pid):
        _say_discarded(job, outcome.batch, f"an outcome from {outcome.host} (pid {outcome.pid})")
    elif outcome.index:
        try:
            scores.record(settings.data_dir, outcome.model_version, outcome.index)
        except (OSError, sqlite3.Error) as e:  # the index is a cache: the rows are committed all the same
            log.warning("could not record %d scores in the index: %s", len(outcome.index), e)
    if committed:
        committed()
    last = _maybe_last(settings, job, outcome.batch)
    try:  # committed: the bytes and the message's copy are no longer needed, free Redis now
        failover.ride(settings, lambda: (blobs.delete(settings, outcome.blobs),
                                         outbox.done(settings, job.id, [outcome.batch])), "freeing a batch's blobs")
    except RedisError as e:  # they expire in any case
        log.warning("job %s batch %d: could not free its blobs: %s", job.id, outcome.batch, e)
    return job.finalize() if last else False


def discard(settings: Settings, job: Job, batch: int, blob_keys: Sequence[str]) -> bool:
    """A delivery of a batch that is committed already: discarded before any work, logged and counted; what it
    would free is freed, and the job merged if that was still to do. True when the job is done."""
    job.record_discarded(batch)
    _say_discarded(job, batch, "a delivery")
    last = _maybe_last(settings, job, batch)
    try:
        blobs.delete(settings, blob_keys)
        outbox.done(settings, job.id, [batch])
    except RedisError as e:
        log.warning("job %s batch %d: could not free its blobs: %s", job.id, batch, e)
    return job.finalize() if last else job.is_done()


def _say_discarded(job: Job, batch: int, what: str) -> None:
    log.warning("job %s batch %d: %s discarded, a duplicate: the batch's first committed result stands "
                "(%d discarded in this job)", job.id, batch, what, job.discarded())


def _maybe_last(settings: Settings, job: Job, batch: int) -> bool:
    """Whether this commit may have been the job's last (O(1), from the ledger in Redis)."""
    try:
        return ledger.record(settings, job.id, batch) >= job.n_batches
    except RedisError:
        return True  # without the ledger, let the merge look at the files itself


def already_committed(settings: Settings, job: Job | None, job_id: str, batch: int) -> bool:
    """Whether the batch's result is committed: from its file when the job is visible, else from the ledger."""
    if job is not None:
        return job.result_path(batch).exists()
    try:
        return ledger.contains(settings, job_id, batch)
    except RedisError:
        return False


def record_failure(job: Job, batch: int, error: str) -> None:
    """Record a batch that failed for good (``resume`` sends it again), unless a result was committed since."""
    if job.result_path(batch).exists():  # a stale delivery failed: discarded like any later outcome
        job.record_discarded(batch)
        _say_discarded(job, batch, f"a failure ({error})")
        return
    job.mark_failed(batch, error)


def collect(settings: Settings, job_id: str, batch: int, payload: dict) -> dict:
    """Commit what a stateless worker handed in (an outcome, or a failure for good) under ``job_id``: what a
    ``collect.<id>`` message asks, whoever consumes it (a worker that sees the data dir, or the process waiting on
    the data host). Raises :class:`digitq.errors.JobNotFound` for a job not under this data dir, and a
    :class:`JobError` for a malformed message (no retry mends either)."""
    job = Job.load(settings.jobs_dir, job_id)
    if "duplicate" in payload:  # a stateless worker dropped a delivery of a committed batch: count it here
        job.record_discarded(int(batch), host=str(payload.get("host", "?")), pid=int(payload.get("pid", 0)))
        _say_discarded(job, int(batch), f"a delivery on {payload.get('host', '?')}")
        return {"job_id": job_id, "batch": batch, "duplicate": True}
    if "failed" in payload:
        record_failure(job, int(batch), str(payload["failed"]))
        return {"job_id": job_id, "batch": batch, "failed": True}
    outcome = Outcome.from_message(job_id, int(batch), payload)
    done = commit(settings, job, outcome)
    return {"job_id": job_id, "batch": batch, "rows": len(outcome.rows), "done": done, "pid": os.getpid()}


def hand_in(send: Callable[[str, list], None], context: dict, outcome: Outcome) -> None:
    """Send ``outcome`` to the ``collect`` queue of the data dir the job lives in (``context`` of its message)."""
    send(str(context["collect"]), [outcome.job_id, outcome.batch, outcome.to_message()])


def hand_in_duplicate(send: Callable[[str, list], None], context: dict, job_id: str, batch: int) -> None:
    """Tell the data dir's ``collect`` queue that a delivery of a committed batch was dropped, to be counted
    there (``duplicates`` in the job's status), where this worker cannot see the job."""
    send(str(context["collect"]), [job_id, batch, {"duplicate": True, "host": socket.gethostname(),
                                                   "pid": os.getpid(), "at": time.time()}])


def hand_in_failure(send: Callable[[str, list], None], context: dict, job_id: str, batch: int, error: str) -> None:
    """Send a failure for good to the data dir's ``collect`` queue, to be recorded there."""
    send(str(context["collect"]), [job_id, batch, {"failed": error, "at": time.time()}])


#: data dir -> (what ``stat`` said of its ``.digitq-id``, the id read then).
_ids: dict[str, tuple[tuple[int, int, int, int], str | None]] = {}


def local_data_dir(settings: Settings) -> str | None:
    """This process's data dir id (:func:`digitq.disk.storage.data_dir_id`), or None while the dir has none: such a
    worker serves every job statelessly. It never creates the id (that is the producer's, or ``digitq init``'s):
    an empty mountpoint must not get one of its own before the volume mounts over it.

    A ``stat`` per call tells a changed id (a volume mounted late, a symlink bound to another target) from the
    one read before, so that the id is read again only when the file is another."""
    path = settings.data_dir / ".digitq-id"
    key = str(settings.data_dir)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        _ids.pop(key, None)
        return None
    except OSError as e:  # unreadable: as good as absent
        log.warning("data dir %s: cannot read its id (%s): serving statelessly", settings.data_dir, e)
        return None
    seen = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _ids.get(key)
    if cached and cached[0] == seen:
        return cached[1]
    try:
        found = data_dir_id(settings.data_dir, create=False)
    except OSError as e:
        log.warning("data dir %s: cannot read its id (%s): serving statelessly", settings.data_dir, e)
        return None
    _ids[key] = (seen, found)
    return found


def sees(settings: Settings, context: dict | None) -> bool:
    """Whether this worker commits a batch itself: the job's data dir is its own (or the message predates
    stateless workers and names none: then the job must be visible here, as before)."""
    if not context or "data_dir" not in context:
        return True
    return context["data_dir"] == local_data_dir(settings)


def outcome_error(e: Exception) -> str:
    """The text of a failure for good, as a row-less batch records it."""
    return str(e) if isinstance(e, DigitqError) else f"{type(e).__name__}: {e}"
