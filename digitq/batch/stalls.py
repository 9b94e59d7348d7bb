"""Why a job is not moving, as reported by the workers that cannot run it (kept in Redis, with a TTL).

A worker whose ``DIGITQ_DATA_DIR`` is not the producer's (another host without the
shared mount, a typo) cannot see the job's manifest. It must not consume the batch:
it hands it back for a worker that can, and records here which worker and which
data dir, so that ``digitq status`` and ``wait``, which read the data dir and not
the worker's logs, can say so. The record expires when no worker reports it again.
"""

from __future__ import annotations

import json
import os
import socket
import time

from digitq.bus import keys
from digitq.bus.broker import redis_client
from digitq.disk.jobs import Job
from digitq.disk.storage import data_dir_id
from digitq.settings import Settings

TTL_S = keys.STALL_TTL_S


def _key(job_id: str) -> str:
    return keys.stalled(job_id)


def report(settings: Settings, job_id: str, error: str, worker: str | None = None) -> None:
    """Record (or refresh) why this worker cannot run ``job_id``."""
    record = {"worker": worker or socket.gethostname(), "host": socket.gethostname(), "pid": os.getpid(),
              "data_dir": str(settings.data_dir.resolve()), "error": error, "at": time.time()}
    redis_client(settings).set(_key(job_id), json.dumps(record), ex=TTL_S)


def read(settings: Settings, job_id: str) -> dict | None:
    """The latest report for ``job_id``, or None."""
    raw = redis_client(settings).get(_key(job_id))
    return json.loads(raw) if raw else None


def describe(record: dict, what: str = "job") -> str:
    """One line for a person."""
    return (f"worker {record['worker']} (pid {record['pid']}) cannot see this {what} under its data dir "
            f"{record['data_dir']}; give that worker the producer's DIGITQ_DATA_DIR (shared storage), or stop it. "
            "It hands the work back to the queue meanwhile, nothing is lost")


def collect_queue(settings: Settings) -> str | None:
    """This data dir's collect queue (results of stateless workers), or None before it has an id."""
    dir_id = data_dir_id(settings.data_dir, create=False)
    return settings.collect_route(dir_id) if dir_id else None


def _queued(client, queue: str, job_id: str, enough: int | None = None) -> int:
    """How many messages in ``queue`` name ``job_id`` (messages hold the job id; no need to parse them), read
    64 at a time; once ``enough`` are found, no more is read."""
    needle, found = job_id.encode(), 0
    for start in range(0, client.llen(queue), 64):
        found += sum(needle in raw for raw in client.lrange(queue, start, start + 63))
        if enough is not None and found >= enough:
            break
    return found


def uncollected(settings: Settings, job_id: str) -> int:
    """How many results of ``job_id`` wait in this data dir's collect queue (:class:`RedisError` if it cannot tell)."""
    queue = collect_queue(settings)
    return _queued(redis_client(settings), queue, job_id) if queue else 0


def describe_uncollected(settings: Settings, waiting: int, job_id: str) -> str:
    """Why results wait, for a person: no worker sees this data dir to commit them, and what commits them."""
    return (f"{waiting} batch result(s) from stateless workers wait in Redis (queue {collect_queue(settings)}) and no "
            f"live worker sees this data dir {settings.data_dir.resolve()} to commit them: run `digitq wait {job_id}` "
            "on this host (it commits them), or start `celery -A worker worker` with that DIGITQ_DATA_DIR on a host "
            "that has it. Nothing is lost meanwhile")


def idle_s(job: Job, committed: set[int] | None = None) -> float:
    """Seconds since the job's last commit (since it was created, before any)."""
    return time.time() - (job.last_commit(committed) or job.header["created"])


def is_orphaned(settings: Settings, job: Job, committed: set[int] | None = None) -> bool:
    """The one rule for a job nothing will finish: it is idle (no commit for ``DIGITQ_STALL_AFTER`` seconds) and
    none of its missing batches is queued or held by a live worker (:func:`unclaimed`). False when unsure.

    The sweeper sends such a job's batches again from their copies; ``digitq wait`` and ``status`` say so."""
    committed = job.committed() if committed is None else committed
    if idle_s(job, committed) < settings.stall_after:
        return False
    return unclaimed(settings, job.id, set(range(job.n_batches)) - committed) is True


def unclaimed(settings: Settings, job_id: str, missing: set[int], timeout: float = 1.0) -> bool | None:
    """Whether none of a job's ``missing`` batches is queued (to predict, or its result to collect) or held by
    a live worker.

    That is the state a whole worker host leaves behind when it dies (its unacked
    batches return only after the visibility timeout), or a Redis that lost its
    queue: nothing will run them until ``digitq resume``. None when it cannot tell.
    """
    from redis.exceptions import RedisError

    from digitq.bus.broker import client_app

    if not missing:
        return False
    try:
        client = redis_client(settings)
        queues = [settings.predict_queue] + [q for q in [collect_queue(settings)] if q]
        if any(_queued(client, queue, job_id, enough=1) for queue in queues):
            return False
    except RedisError:
        return None
    app = client_app(settings)
    try:
        replies = app.control.broadcast("digitq_held", reply=True, timeout=timeout) or []
    except Exception:  # noqa: BLE001 - kombu and redis raise many kinds; either way we cannot tell
        return None
    finally:
        app.close()
    for reply in replies:
        for held in reply.values():
            if not isinstance(held, list):  # a worker without the command: it might hold some
                return None
            if any(job == job_id and batch in missing for job, batch in held):
                return False
    return True
