"""The commit path of a batch: one place for what follows a prediction.

A batch's :class:`Outcome` (its rows, the version that scored them, what to free) is
committed by a process that sees the job's data dir: the worker that predicted it, when
it sees that dir, or else a worker consuming the data dir's ``collect.<id>`` queue, to
which a worker without it hands the outcome in through Redis (:func:`hand_in`).
Every commit goes through :func:`commit`: the predicting worker's (``worker/inference.py``), a collect
message's (:func:`collect`, in a worker or in the waiting producer) and the producer's own, for a batch whose
every file the content-hash index has scored (``producer/dispatch.py``). It runs the same steps, in an
order that keeps every guarantee:

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
import sqlite3
from collections.abc import Callable, Sequence

from redis.exceptions import RedisError

from digitq.batch import blobs, ledger, outbox
from digitq.batch.message import (
    DuplicateNotice,
    Entry,
    FailureNotice,
    JobContext,
    Kind,
    Outcome,
    collect_args,
    collect_payload,
)
from digitq.bus import failover
from digitq.disk import scores
from digitq.disk.jobs import Job, Row
from digitq.disk.storage import data_dir_id
from digitq.errors import DigitqError
from digitq.settings import Settings

log = logging.getLogger("digitq.worker")
#: The task that commits what a stateless worker handed in, on the data dir's ``collect.<id>`` queue.
COLLECT_TASK = "digitq.collect_batch"


def index_entries(entries: Sequence[Entry], rows: Sequence[Row]) -> list[tuple]:
    """What this batch adds to the index: rows of an incremental scan's files that follow from their bytes,
    under the digest of the bytes the worker decoded (the file may have changed since the scan hashed it)."""
    return [(r.digest, r.prediction, r.confidence, r.error) for e, r in zip(entries, rows, strict=True)
            if e.digest and e.kind is not Kind.SCORED and r.lasting and r.digest]


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
    handed = collect_payload(job_id, int(batch), payload)
    if isinstance(handed, DuplicateNotice):  # a stateless worker dropped a delivery of a committed batch
        job.record_discarded(int(batch), host=handed.host, pid=handed.pid)
        _say_discarded(job, int(batch), f"a delivery on {handed.host}")
        return {"job_id": job_id, "batch": batch, "duplicate": True}
    if isinstance(handed, FailureNotice):
        record_failure(job, int(batch), handed.error)
        return {"job_id": job_id, "batch": batch, "failed": True}
    done = commit(settings, job, handed)
    return {"job_id": job_id, "batch": batch, "rows": len(handed.rows), "done": done, "pid": os.getpid()}


def hand_in(send: Callable[[str, list], None], context: JobContext, outcome: Outcome) -> None:
    """Send ``outcome`` to the ``collect`` queue of the data dir the job lives in (``context`` of its message)."""
    send(context.collect, collect_args(outcome.job_id, outcome.batch, outcome))


def hand_in_duplicate(send: Callable[[str, list], None], context: JobContext, job_id: str, batch: int) -> None:
    """Tell the data dir's ``collect`` queue that a delivery of a committed batch was dropped, to be counted
    there (``duplicates`` in the job's status), where this worker cannot see the job."""
    send(context.collect, collect_args(job_id, batch, DuplicateNotice()))


def hand_in_failure(send: Callable[[str, list], None], context: JobContext, job_id: str, batch: int,
                    error: str) -> None:
    """Send a failure for good to the data dir's ``collect`` queue, to be recorded there."""
    send(context.collect, collect_args(job_id, batch, FailureNotice(error)))


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


def sees(settings: Settings, context: JobContext | None) -> bool:
    """Whether this worker commits a batch itself: the job's data dir is its own (or the message names none:
    then the job must be visible here)."""
    if context is None:
        return True
    return context.data_dir == local_data_dir(settings)


def outcome_error(e: Exception) -> str:
    """The text of a failure for good, as a row-less batch records it."""
    return str(e) if isinstance(e, DigitqError) else f"{type(e).__name__}: {e}"
