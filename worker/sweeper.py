"""The stack's own stall handling: no `digitq wait` or `resume` needed when a message is lost.

Every prediction worker that sees a data dir runs a sweeper thread; one of them at a time looks
at the jobs of its data dir that still have message copies in :mod:`digitq.batch.outbox` (a Redis lock
held for the whole pass: extended before each job and checked before each re-send, so a pass
that lost it, paused past its lease, sends nothing more), and

- merges a job whose every batch is committed but that nobody merged (its last ledger
  entry was lost, or its last committer died between commit and merge);
- sends again, from the copy, each batch of a job idle for ``DIGITQ_STALL_AFTER`` seconds
  that is neither queued (to predict, or its result to collect) nor held by a live worker
  (:func:`digitq.batch.stalls.is_orphaned`): a worker host that died holding it, a message a Redis
  failover lost. A copy sent while the original still lives is a duplicate, which commits the
  same rows;
- forgets the copies of finished jobs.

A batch whose copy is gone too (Redis restarted empty, or a day passed) is left to
``digitq resume``, which reads the files again; the job shows ``stalled`` with that advice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.exceptions import LockError, RedisError

from digitq.batch import outbox, stalls
from digitq.batch.commit import local_data_dir
from digitq.bus import failover, keys
from digitq.bus.broker import redis_client
from digitq.disk.jobs import Job
from digitq.errors import DigitqError, JobNotFound
from digitq.settings import Settings

log = logging.getLogger("digitq.worker")


def interval_s(settings: Settings) -> float:
    """How often a sweeper looks: a quarter of the stall time, between 1 and 15 s."""
    return min(15.0, max(1.0, settings.stall_after / 4))


def lease_s(settings: Settings) -> float:
    """How long a pass's lock outlives its last extension: far above the longest step between two (one job's
    stall check, a second or so; a re-send riding through a failover, up to ``DIGITQ_FAILOVER_S``), and
    what a pass that died holding it delays the next one."""
    return max(10.0, 2 * interval_s(settings), failover.window_s(settings) + interval_s(settings))


def sweep(settings: Settings, send: Callable[[list], None]) -> dict[str, int]:
    """One pass over this data dir's jobs (see the module's doc); what it did. Nothing when another
    sweeper of this data dir holds the pass, or this process sees no data dir."""
    dir_id = local_data_dir(settings)
    if not dir_id:
        return {}
    # redis-py's lock: a token of this pass's own (not this process's: a sweeper restarted in the same
    # process is another pass), extended and released only while the key still holds it.
    lock = redis_client(settings).lock(keys.sweeper_lock(dir_id), timeout=lease_s(settings), blocking=False,
                                       thread_local=False)
    if not lock.acquire():
        return {}
    began = time.monotonic()
    done = {"merged": 0, "resent": 0, "forgotten": 0}
    try:
        _pass(settings, send, lock, done)
    except LockError as e:  # held past its lease (a pause, a failover): another pass may run; this one stops
        log.warning("sweeper: the pass lost its lock (%s); it stopped, and the next pass goes on", e)
    finally:
        # One pass an interval between all the data dir's sweepers: the lock lapses an interval after it was taken.
        rest = interval_s(settings) - (time.monotonic() - began)
        try:
            if rest > 0.01:
                lock.extend(rest, replace_ttl=True)
            else:
                lock.release()
        except LockError:
            pass  # no longer ours: nothing to give up
    return done


def _pass(settings: Settings, send: Callable[[list], None], lock, done: dict[str, int]) -> None:
    """The pass itself, under ``lock`` (raises :class:`redis.exceptions.LockNotOwnedError` once it is lost)."""
    for job_id in outbox.jobs(settings):
        lock.reacquire()  # the lease again, from now
        try:
            job = Job.load(settings.jobs_dir, job_id)
        except JobNotFound:
            continue  # another data dir's job: its own sweeper's
        except DigitqError as e:
            log.warning("sweeper: job %s unreadable: %s", job_id, e)
            continue
        if job.is_done():
            outbox.forget(settings, job_id)
            done["forgotten"] += 1
            continue
        committed = job.committed()
        if len(committed) == job.n_batches:
            if job.finalize():
                log.warning("job %s: every batch committed but not merged (a lost ledger entry, or a worker that died "
                            "after its commit): merged", job_id)
                done["merged"] += 1
            continue
        if job.failed(committed):
            continue  # failed for good: `digitq resume` after the cause is fixed
        if not stalls.is_orphaned(settings, job, committed):
            continue
        missing = set(range(job.n_batches)) - committed
        kept = outbox.pending(settings, job_id, missing)
        sent = 0
        try:
            for args in kept.values():
                lock.reacquire()  # the fence: once another sweeper may have taken the pass, this one sends nothing
                send(args)
                sent += 1
        finally:
            if sent:
                log.warning("job %s: no commit for %.0f s and %d batch(es) neither queued nor held by a live worker "
                            "(a worker host died, or Redis lost them): sent them again", job_id,
                            stalls.idle_s(job, committed), sent)
                done["resent"] += sent
        if len(kept) < len(missing):
            log.error("job %s: %d missing batch(es) have no copy left in Redis (it restarted empty, or they expired): "
                      "`digitq resume %s` sends them from the files", job_id, len(missing) - len(kept), job_id)


class Sweeper(threading.Thread):
    """:func:`sweep` every :func:`interval_s`, in a worker's main process, beside Celery's event loop (which
    must stay free to answer the remote-control question :func:`digitq.batch.stalls.unclaimed` asks)."""

    def __init__(self, settings: Settings, send: Callable[[list], None]) -> None:
        super().__init__(name="digitq-sweeper", daemon=True)
        self.settings, self.send = settings, send
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(interval_s(self.settings)):
            try:
                sweep(self.settings, self.send)
            except (RedisError, OSError, DigitqError) as e:  # Redis down, a failover: the next pass tries again
                log.warning("sweeper: %s", e)
            except Exception:  # noqa: BLE001 - a bug must not end the thread silently
                log.exception("sweeper failed; it tries again")

    def stop(self) -> None:
        self.stopping.set()
