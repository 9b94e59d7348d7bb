"""Poison batches: a file that kills the worker process every time is found and quarantined.

A pool process that dies mid-batch (a decoder crash, the OOM killer) makes Celery
requeue the batch (``task_reject_on_worker_lost``). Left alone, a file that always
kills its process would be redelivered forever. So every delivery of a batch is
counted in Redis; a redelivered batch is processed *carefully*: before each file
the worker records the file's index, so that when the process dies, the next
delivery knows which file it died on. A file that has killed :data:`DEATHS`
careful deliveries becomes an error row and its batch-mates are predicted as usual.
Whatever kills a batch outside any one file is bounded by :data:`MAX_DELIVERIES`.

This costs one small Redis write per delivery, and one per file only on redeliveries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.exceptions import RedisError

from digitq.broker import redis_client
from digitq.settings import Settings

#: Careful deliveries a file may kill before it is quarantined.
DEATHS = 2
#: Deliveries after which a batch is given up whole (every file an error row).
MAX_DELIVERIES = 10
#: The count outlives any redelivery (the visibility timeout is an hour by default).
TTL_S = 7 * 24 * 3600


def _key(job_id: str, batch: int) -> str:
    return f"digitq:job:{job_id}:batch:{batch}:deliveries"


@dataclass
class Delivery:
    """This delivery of one batch: how many came before, and which files killed a process."""

    settings: Settings
    job_id: str
    batch: int
    count: int = 1
    deaths: dict[int, int] = field(default_factory=dict)

    @classmethod
    def begin(cls, settings: Settings, job_id: str, batch: int) -> Delivery:
        """Count this delivery; charge the file a previous careful delivery died on."""
        delivery = cls(settings, job_id, batch)
        try:
            client = redis_client(settings)
            key = _key(job_id, batch)
            pipe = client.pipeline()
            pipe.hincrby(key, "deliveries", 1).hget(key, "at").expire(key, TTL_S)
            count, at, _ = pipe.execute()
            delivery.count = int(count)
            if at is not None:  # the previous delivery died while processing this file
                client.pipeline().hincrby(key, f"dead:{int(at)}", 1).hdel(key, "at").execute()
            if delivery.count > 1:
                delivery.deaths = {int(name.split(b":")[1]): int(n) for name, n in client.hgetall(key).items()
                                   if name.startswith(b"dead:")}
        except RedisError:
            pass  # without Redis the batch is processed as a first delivery; nothing is lost
        return delivery

    @property
    def careful(self) -> bool:
        """A redelivery: record each file's index before processing it."""
        return self.count > 1

    @property
    def exhausted(self) -> bool:
        """Delivered too often to try again (see :data:`MAX_DELIVERIES`)."""
        return self.count > MAX_DELIVERIES

    def before(self, index: int) -> str | None:
        """Call before processing file ``index``: the error for a quarantined file, else None."""
        dead = self.deaths.get(index, 0)
        if dead >= DEATHS:
            return (f"quarantined: the worker process died on this file {dead} times "
                    f"(batch delivered {self.count} times)")
        try:
            redis_client(self.settings).hset(_key(self.job_id, self.batch), "at", index)
        except RedisError:
            pass
        return None

    def quarantined(self) -> list[int]:
        """Indexes of the files this delivery turns into error rows."""
        return sorted(i for i, n in self.deaths.items() if n >= DEATHS)

    def interrupted(self) -> None:
        """The delivery ended by an exception, not a death: the file in hand is not to blame."""
        try:
            redis_client(self.settings).hdel(_key(self.job_id, self.batch), "at")
        except RedisError:
            pass

    def finish(self) -> None:
        """The batch is committed: forget its deliveries."""
        try:
            redis_client(self.settings).delete(_key(self.job_id, self.batch))
        except RedisError:
            pass
