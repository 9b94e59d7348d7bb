"""A copy of every batch message sent but not committed, so that the stack itself can send it again.

A message can be lost after it was queued: a worker host dies holding it (it returns only after the
visibility timeout), Sentinel promotes a replica that never had it, or kombu's window between taking
a message and recording it as unacked closes on a dying connection. Its image bytes lived only in the
message, and the scanned files may be on a host that is gone by then. So the producer keeps the
message's arguments here, one hash field per batch (``digitq:outbox:<job id>``), until the batch is
committed; the sweeper (``worker/sweeper.py``) sends a batch again from here once the job has stalled
with that batch neither queued nor held by a live worker. The copy costs Redis what the queued
message does, for as long: the producer's in-flight window bounds both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from digitq.bus import keys
from digitq.bus.broker import redis_client
from digitq.settings import Settings

#: As long as a batch's blobs: past it, only ``digitq resume`` (from the files) can send it again.
TTL_S = keys.OUTBOX_TTL_S
#: The jobs that may have batches here (the sweeper's list).
JOBS_KEY = keys.outbox_jobs()


def _key(job_id: str) -> str:
    return keys.outbox(job_id)


def put(settings: Settings, job_id: str, batch: int, args: list) -> None:
    """Keep ``args`` (the whole message's arguments) until ``batch`` is committed."""
    pipe = redis_client(settings).pipeline(transaction=False)
    pipe.hset(_key(job_id), str(batch), json.dumps(args, separators=(",", ":")))
    pipe.expire(_key(job_id), TTL_S)
    pipe.sadd(JOBS_KEY, job_id)
    pipe.execute()


def done(settings: Settings, job_id: str, batches: Iterable[int]) -> None:
    """Forget the copies of committed batches."""
    fields = [str(b) for b in batches]
    if fields:
        redis_client(settings).hdel(_key(job_id), *fields)


def jobs(settings: Settings) -> list[str]:
    """The jobs that still have copies here (a job whose copies all expired is dropped from the list)."""
    client = redis_client(settings)
    listed = sorted(j.decode() if isinstance(j, bytes) else str(j) for j in client.smembers(JOBS_KEY))
    pipe = client.pipeline(transaction=False)
    for job_id in listed:
        pipe.exists(_key(job_id))
    alive = pipe.execute() if listed else []
    gone = [job_id for job_id, exists in zip(listed, alive, strict=True) if not exists]
    if gone:
        client.srem(JOBS_KEY, *gone)
    return [job_id for job_id, exists in zip(listed, alive, strict=True) if exists]


def pending(settings: Settings, job_id: str, batches: Iterable[int] | None = None) -> dict[int, list]:
    """The kept arguments by batch (of ``batches`` only, when given)."""
    client = redis_client(settings)
    if batches is None:
        raw = client.hgetall(_key(job_id))
        return {int(k): json.loads(v) for k, v in raw.items()}
    wanted = sorted(batches)
    values = client.hmget(_key(job_id), [str(b) for b in wanted]) if wanted else []
    return {b: json.loads(v) for b, v in zip(wanted, values, strict=True) if v is not None}


def forget(settings: Settings, job_id: str) -> None:
    """Drop a job's copies (it is done, or gone)."""
    redis_client(settings).pipeline(transaction=False).delete(_key(job_id)).srem(JOBS_KEY, job_id).execute()
