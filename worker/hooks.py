"""What a worker does around each batch, one hook per step, in the order a batch meets them.

- :func:`received`: a ``predict`` message's arguments as a :class:`BatchMessage` (a malformed one fails for good);
- :func:`not_visible`: the job (or training) is not under this data dir: record the stall, hand the message back;
- ``worker.inference.run_batch``: the batch itself (quarantine, predict, commit or hand in);
- :func:`hand_in`: send an outcome or a notice to the collect queue of the job's data dir;
- :func:`failed`: a batch that failed for good, recorded where its job is seen;
- :func:`served`: after a batch, the version this worker served (``digitq workers``);
- :func:`resend`: the sweeper sends a stalled batch again from its copy (``worker/sweeper.py``);
- :func:`held`: the batches this worker holds, for the orphan rule (:func:`digitq.batch.stalls.is_orphaned`).

Retries (``BatchTask.retry_or_fail`` in ``worker/tasks.py``) are Celery's and stay on the task.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Iterable

from celery import Celery
from celery.exceptions import Reject
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from digitq.batch import commit, stalls
from digitq.batch.commit import COLLECT_TASK
from digitq.batch.message import BatchMessage, JobContext
from digitq.bus import keys
from digitq.bus.broker import PREDICT_TASK, batch_repr, redis_client
from digitq.bus.replication import durably
from digitq.disk.jobs import Job
from digitq.errors import DigitqError
from digitq.settings import Settings

log = logging.getLogger("digitq.worker")
#: How long a worker that cannot see a job waits before handing its batch back (so that it does
#: not spin on it, and a worker that can see the job gets its turn).
HAND_BACK_S = 2.0
#: A job no worker has seen for this long is taken as deleted: its leftover batches are dropped, not bounced.
GIVE_UP_AFTER_S = 7 * 24 * 3600
_warned: set[str] = set()  # jobs and trainings this process already logged as invisible


def received(job_id: str, batch: int, files: list, context: dict | None) -> BatchMessage:
    """The message a ``predict`` task's arguments carry (:class:`digitq.errors.JobError` for a malformed one)."""
    return BatchMessage.from_wire([job_id, batch, files] if context is None else [job_id, batch, files, context])


def job_age_s(job_id: str) -> float:
    """Seconds since the job was created, from its id (``YYYYMMDD-HHMMSS-xxxxxx``, UTC)."""
    created = calendar.timegm(time.strptime(job_id[:15], "%Y%m%d-%H%M%S"))
    return time.time() - created


def not_visible(settings: Settings, what: str, item_id: str, error: Exception, worker: str | None) -> None:
    """This worker cannot see ``item_id`` (a job or training) under its data dir: never consume the
    message. Say why (once per id in the log, and in Redis for `digitq status`), then requeue it.

    Returns (so the message is acked and dropped) only for an id older than :data:`GIVE_UP_AFTER_S`."""
    if job_age_s(item_id) > GIVE_UP_AFTER_S:
        log.error("%s %s dropped: no worker has seen it for over %d days (deleted?)", what, item_id,
                  GIVE_UP_AFTER_S // 86400)
        return
    # Not ours to judge: the producer's data dir may be elsewhere.
    if item_id not in _warned:
        _warned.add(item_id)
        log.error("%s %s is not under this worker's data dir %s; handing it back for a worker that sees it. "
                  "Check DIGITQ_DATA_DIR on this host", what, item_id, settings.data_dir.resolve())
    try:
        stalls.report(settings, item_id, str(error), worker=worker)
    except RedisError as re:
        log.warning("could not record the stall of %s %s: %s", what, item_id, re)
    time.sleep(HAND_BACK_S)
    raise Reject(str(error), requeue=True) from error  # acks_late: the message itself goes back to the queue


def hand_in(app: Celery, queue: str, args: list) -> None:
    """Send a collect message (an outcome, a duplicate or a failure of a stateless worker) to ``queue``."""
    app.send_task(COLLECT_TASK, args=args, queue=queue, argsrepr=batch_repr(args))


def failed(app: Celery, settings: Settings, job_id: str, batch: int, error: str,
           context: JobContext | None = None) -> None:
    """Record a batch that failed for good: on disk where the job is visible, else through its data dir's
    collect queue."""
    try:
        if context is None or commit.sees(settings, context):
            commit.record_failure(Job.load(settings.jobs_dir, job_id), batch, error)
        else:
            commit.hand_in_failure(lambda queue, args: hand_in(app, queue, args), context, job_id, batch, error)
    except (DigitqError, OSError, RedisError, KombuError) as e:
        log.error("job %s batch %s: could not record failure: %s", job_id, batch, e)


def served(settings: Settings, hostname: str, version: str) -> None:
    """Record that this worker served ``version`` (``digitq workers`` lists it); best effort."""
    key = keys.served_models(hostname)
    try:
        redis_client(settings).pipeline().hset(key, version, time.time()).expire(key, keys.SERVED_TTL_S).execute()
    except RedisError:
        pass


def resend(app: Celery, args: list) -> None:
    """Send a batch again from its copy, and return once a replica has it (through a failover, up to
    ``DIGITQ_FAILOVER_S``)."""
    settings = Settings.from_env()
    durably(settings, lambda: app.send_task(PREDICT_TASK, args=args, queue=settings.predict_queue,
                                            argsrepr=batch_repr(args)), "the sweeper's re-send")


def held(requests: Iterable) -> list:
    """The ``[job, batch]`` pairs of the batch requests among ``requests`` (to predict, or to commit)."""
    return [list(r.args[:2]) for r in requests if r.name in (PREDICT_TASK, COLLECT_TASK) and len(r.args) >= 2]
