"""Which batches of a job are committed, as a Redis set: the O(1) "was that the last one?" check.

The result files stay the source of truth. The set only tells a worker, after
its commit, whether every batch may now be in; the merge then confirms it by
listing the results once. Adding a batch twice changes nothing, so a duplicate
delivery can never finish a job early. If Redis loses the set, no worker merges
and ``digitq wait`` / ``resume`` do it from the files (``resume`` also re-seeds it).
So behind Sentinel a commit returns once a replica has its entry: a failover cannot
take it away (see :mod:`digitq.bus.replication`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from redis.exceptions import RedisError

from digitq.bus import keys
from digitq.bus.broker import redis_client
from digitq.bus.replication import durably
from digitq.settings import Settings

log = logging.getLogger("digitq.ledger")
#: Long enough for any job to finish; refreshed by every commit.
TTL_S = keys.LEDGER_TTL_S


def _key(job_id: str) -> str:
    return keys.committed(job_id)


def record(settings: Settings, job_id: str, batch: int) -> int:
    """Add ``batch`` to the job's committed set; returns how many distinct batches it holds (once a
    replica has it, where the master has one)."""
    def write() -> int:
        pipe = redis_client(settings).pipeline()
        pipe.sadd(_key(job_id), batch)
        pipe.scard(_key(job_id))
        pipe.expire(_key(job_id), TTL_S)
        return int(pipe.execute()[1])

    try:
        return durably(settings, write)
    except RedisError as e:  # the caller goes on without the ledger; say why a job may then wait for a merge
        log.warning("job %s batch %d: could not record the commit in Redis (%r)", job_id, batch, e)
        raise


def seed(settings: Settings, job_id: str, batches: Iterable[int]) -> None:
    """Put batches committed on disk into the set (after Redis lost it)."""
    batches = list(batches)
    if batches:
        durably(settings, lambda: redis_client(settings).pipeline().sadd(_key(job_id), *batches)
                .expire(_key(job_id), TTL_S).execute())


def contains(settings: Settings, job_id: str, batch: int) -> bool:
    """Whether ``batch`` is recorded as committed (how a worker without the data dir tells a late duplicate)."""
    return bool(redis_client(settings).sismember(_key(job_id), batch))
