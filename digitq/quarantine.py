"""Poison batches: a file that kills the worker process every time is found and quarantined.

A pool process that dies mid-batch (a decoder crash, the OOM killer) makes Celery
requeue the batch (``task_reject_on_worker_lost``). Left alone, a file that always
kills its process would be redelivered forever. So every delivery of a batch is
counted in Redis; a redelivered batch is processed *carefully*: before each file
the worker records the file's index, so that when the process dies, the next
delivery knows which file it died on. A file that has killed :data:`DEATHS`
careful deliveries becomes an error row and its batch-mates are predicted as usual.
Whatever kills a batch outside any one file is bounded by :data:`MAX_DELIVERIES`.

Copies of one batch may run at once (``resume`` re-sends batches that are still
running), so each careful delivery records its marker under its own name (host, pid
namespace, pid and process start time: :class:`digitq.holders.Holder`), with the time
it wrote it. A marker counts as a death only when its process is known dead: on its
own host, when that process no longer runs; from another host, when it has not been
refreshed for :data:`MARKER_LEASE_S` (each file refreshes it). A live copy's marker
never charges the file it is working on.

This costs one small Redis write per delivery, and one per file only on redeliveries.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from digitq.broker import redis_client
from digitq.holders import Holder
from digitq.settings import Settings

#: Careful deliveries a file may kill before it is quarantined.
DEATHS = 2
#: Deliveries after which a batch is given up whole (every file an error row).
MAX_DELIVERIES = 10
#: The count outlives any redelivery (the visibility timeout is an hour by default).
TTL_S = 7 * 24 * 3600
#: A marker written on another host counts as its delivery's death once it is this old (no file took
#: that long); on the marker's own host the process itself is looked up instead.
MARKER_LEASE_S = 120.0
_MARKER = b"at:"


def _key(job_id: str, batch: int) -> str:
    return f"digitq:job:{job_id}:batch:{batch}:deliveries"


def _dead_marker(name: bytes, value: bytes, now: float) -> int | None:
    """The file index of a marker whose delivery died, or None while that delivery may be alive."""
    try:
        index, _, written = value.decode().partition("|")
        index_ = int(index)
    except (UnicodeDecodeError, ValueError):
        return None
    if name == b"at":  # written by a digitq before markers were named: any leftover counted
        return index_
    holder = Holder.from_token(name[len(_MARKER):].decode(errors="replace"))
    if holder is None:
        return None
    if holder.local():
        return None if holder.running() else index_
    try:
        return index_ if now - float(written) > MARKER_LEASE_S else None
    except ValueError:
        return index_


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
        """Count this delivery; charge each file a careful delivery whose process died was on."""
        delivery = cls(settings, job_id, batch)
        try:
            client = redis_client(settings)
            key = _key(job_id, batch)
            pipe = client.pipeline()
            pipe.hincrby(key, "deliveries", 1).hgetall(key).expire(key, TTL_S)
            count, fields, _ = pipe.execute()
            delivery.count = int(count)
            now = time.time()
            for name, value in fields.items():
                if not (name == b"at" or name.startswith(_MARKER)):
                    continue
                index = _dead_marker(name, value, now)
                # Whoever removes the marker charges it: two deliveries beginning at once charge it once.
                if index is not None and client.hdel(key, name):
                    client.hincrby(key, f"dead:{index}", 1)
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
            redis_client(self.settings).hset(_key(self.job_id, self.batch), self._marker, f"{index}|{time.time():.0f}")
        except RedisError:
            pass
        return None

    @property
    def _marker(self) -> str:
        # This process's own field: copies of the batch running at once never overwrite each other's.
        return "at:" + _my_token()

    def quarantined(self) -> list[int]:
        """Indexes of the files this delivery turns into error rows."""
        return sorted(i for i, n in self.deaths.items() if n >= DEATHS)

    def interrupted(self) -> None:
        """The delivery ended by an exception, not a death: the file in hand is not to blame."""
        try:
            redis_client(self.settings).hdel(_key(self.job_id, self.batch), self._marker)
        except RedisError:
            pass

    def finish(self) -> None:
        """The batch is committed: forget its deliveries."""
        try:
            redis_client(self.settings).delete(_key(self.job_id, self.batch))
        except RedisError:
            pass


_token: tuple[int, str] = (0, "")


def _my_token() -> str:
    """This process's name (:class:`Holder`), computed once per process: pool processes fork from one parent."""
    global _token
    if _token[0] != os.getpid():
        _token = (os.getpid(), Holder.me().token())
    return _token[1]
