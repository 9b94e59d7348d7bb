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
namespace, boot, pid and process start time: :class:`digitq.bus.holders.Holder`), and keeps
an *alive* key in Redis while it runs (``SET ... PX``, :data:`ALIVE_TTL_MS`, refreshed
every :data:`ALIVE_EVERY_S` by a small thread and with each marker, deleted when it ends).
A marker counts as a death only when its delivery is known dead: on its own host, when
its process no longer runs; from another host, when its alive key is gone (Redis's own
expiry: no two clocks are compared). A marker whose alive key still exists is watched,
for at most the key's TTL and a margin, until the key expires (a death: charged) or is
refreshed, or the marker moves on or is cleared (a live copy: not a death). So a batch
killed on one host and redelivered at once to another charges the file it died on,
within the TTL; and a live copy's marker never charges the file it is working on.

This costs one small Redis write per delivery, and one per file (marker and alive key,
one pipelined round trip) only on redeliveries.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from digitq.bus import keys
from digitq.bus.broker import redis_client
from digitq.bus.holders import Holder
from digitq.settings import Settings

#: Careful deliveries a file may kill before it is quarantined.
DEATHS = 2
#: Deliveries after which a batch is given up whole (every file an error row).
MAX_DELIVERIES = 10
#: The count outlives any redelivery (the visibility timeout is an hour by default).
TTL_S = keys.DELIVERIES_TTL_S
#: A careful delivery's alive key expires this long after its last refresh (Redis's clock) ...
ALIVE_TTL_MS = keys.ALIVE_TTL_MS
#: ... and is refreshed this often while the delivery runs.
ALIVE_EVERY_S = 2.0
#: How often a delivery looks at the alive key of a marker from another host it waits on.
_POLL_S = 0.1
_MARKER = b"at:"


def _key(job_id: str, batch: int) -> str:
    return keys.deliveries(job_id, batch)


def _alive_key(job_id: str, batch: int, token: str) -> str:
    return keys.alive(job_id, batch, token)


def _index_of(value: bytes) -> int | None:
    try:
        return int(value.decode().partition("|")[0])  # "index" (earlier: "index|written at")
    except (UnicodeDecodeError, ValueError):
        return None


def _dead_markers(client, job_id: str, batch: int, fields: dict[bytes, bytes]) -> dict[bytes, int]:
    """The markers (name: file index) whose careful delivery died; waits on remote ones still in doubt."""
    key = _key(job_id, batch)
    dead: dict[bytes, int] = {}
    remote: dict[bytes, tuple[bytes, str]] = {}  # name: (value first seen, alive key)
    for name, value in fields.items():
        index = _index_of(value)
        if index is None:
            continue
        if name == b"at":  # written by a digitq before markers were named: any leftover counted
            dead[name] = index
            continue
        token = name[len(_MARKER):].decode(errors="replace")
        holder = Holder.from_token(token)
        if holder is None:
            continue
        if holder.local():  # its process can be looked up: dead exactly when it no longer runs
            if not holder.running():
                dead[name] = index
        else:
            remote[name] = (value, _alive_key(job_id, batch, token))
    # Another host's delivery: its alive key expires (Redis's clock) within ALIVE_TTL_MS of its death.
    # Watch each until it expires (dead), its TTL goes up (refreshed: alive), or the marker moves on or is
    # cleared (alive, or ended well). Past the TTL and a margin, a key still there has been refreshed.
    last: dict[bytes, int] = {}
    deadline = time.monotonic() + ALIVE_TTL_MS / 1000 + 2.0
    while remote:
        pipe = client.pipeline(transaction=False)
        names = list(remote)
        for name in names:
            pipe.hget(key, name).pttl(remote[name][1])
        answers = pipe.execute()
        for i, name in enumerate(names):
            value, ttl = answers[2 * i], int(answers[2 * i + 1])
            if value != remote[name][0] or ttl == -1 or (name in last and ttl > last[name]):
                del remote[name]  # moved on, ended, or refreshed: alive (a key without expiry is no death)
            elif ttl == -2:
                dead[name] = _index_of(value)  # no alive key (any more): its delivery died
                del remote[name]
            else:
                last[name] = ttl
        if not remote or time.monotonic() > deadline:
            break
        time.sleep(_POLL_S)
    return dead


class _Alive(threading.Thread):
    """Keeps a careful delivery's alive key while the delivery runs (dies with its process)."""

    def __init__(self, client, key: str, markers: str, marker: str):
        super().__init__(name="digitq-delivery-alive", daemon=True)
        self.client, self.key, self.done = client, key, threading.Event()
        self.markers, self.marker = markers, marker

    def run(self) -> None:
        while not self.done.wait(ALIVE_EVERY_S):
            try:
                self.client.set(self.key, 1, px=ALIVE_TTL_MS)
            except RedisError:
                pass  # the next beat tries again; a key that expires meanwhile looks like a death

    def end(self) -> None:
        """Stop: the marker goes first, then the alive key (a marker seen without its key is a death)."""
        self.done.set()
        self.join(timeout=2.0)
        try:
            self.client.pipeline().hdel(self.markers, self.marker).delete(self.key).execute()
        except RedisError:
            pass


_alive: list[_Alive] = []  # this process's running keeper (a pool process runs one delivery at a time)


def _end_alive() -> None:
    while _alive:
        _alive.pop().end()


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
        _end_alive()  # a delivery of this process that ended without finish() or interrupted(): not a death
        try:
            client = redis_client(settings)
            key = _key(job_id, batch)
            pipe = client.pipeline()
            pipe.hincrby(key, "deliveries", 1).hgetall(key).expire(key, TTL_S)
            count, fields, _ = pipe.execute()
            delivery.count = int(count)
            markers = {n: v for n, v in fields.items() if n == b"at" or n.startswith(_MARKER)}
            for name, index in _dead_markers(client, job_id, batch, markers).items():
                # Whoever removes the marker charges it: two deliveries beginning at once charge it once.
                if client.hdel(key, name):
                    client.hincrby(key, f"dead:{index}", 1)
            if delivery.count > 1:
                delivery.deaths = {int(name.split(b":")[1]): int(n) for name, n in client.hgetall(key).items()
                                   if name.startswith(b"dead:")}
        except RedisError:
            pass  # without Redis the batch is processed as a first delivery; nothing is lost
        if delivery.careful:
            keeper = _Alive(redis_client(settings), delivery._alive_key, _key(job_id, batch), delivery._marker)
            _alive.append(keeper)
            keeper.start()
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
        try:  # the marker and this delivery's alive key together, in one round trip
            pipe = redis_client(self.settings).pipeline()
            pipe.hset(_key(self.job_id, self.batch), self._marker, str(index))
            pipe.set(self._alive_key, 1, px=ALIVE_TTL_MS).execute()
        except RedisError:
            pass
        return None

    @property
    def _marker(self) -> str:
        # This process's own field: copies of the batch running at once never overwrite each other's.
        return "at:" + _my_token()

    @property
    def _alive_key(self) -> str:
        return _alive_key(self.job_id, self.batch, _my_token())

    def quarantined(self) -> list[int]:
        """Indexes of the files this delivery turns into error rows."""
        return sorted(i for i, n in self.deaths.items() if n >= DEATHS)

    def interrupted(self) -> None:
        """The delivery ended by an exception, not a death: the file in hand is not to blame."""
        try:
            redis_client(self.settings).hdel(_key(self.job_id, self.batch), self._marker)
        except RedisError:
            pass
        _end_alive()

    def finish(self) -> None:
        """The batch is committed: forget its deliveries."""
        try:
            redis_client(self.settings).delete(_key(self.job_id, self.batch))
        except RedisError:
            pass
        _end_alive()


_token: tuple[int, str] = (0, "")


def _my_token() -> str:
    """This process's name (:class:`Holder`), computed once per process: pool processes fork from one parent."""
    global _token
    if _token[0] != os.getpid():
        _token = (os.getpid(), Holder.me().token())
    return _token[1]
