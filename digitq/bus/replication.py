"""Writes that must survive a failover: ``WAIT`` until a replica has them.

Redis replicates asynchronously: a master that dies can take its last writes with it,
and Sentinel then promotes a replica that never saw them. ``WAIT 1 T`` blocks until one
replica has acknowledged every write made on its connection, or T ms pass. The
replication stream is ordered, so :func:`confirm_replicated` makes a small write of its
own and WAITs for that: it covers every write the caller saw acknowledged before it, on
any connection (kombu's LPUSH of a message, a pipeline of blobs) to that same master.

It costs a round trip only where there is a replica to wait for: on a Redis without one
(a plain single server) it checks ``INFO replication`` once every :data:`REFRESH_S`
and does nothing else. It never raises because no replica answered: it logs that once
and returns 0. It raises the :class:`redis.exceptions.ConnectionError` of a master lost
before it answered, since the writes before it are then in doubt: :func:`durably` does
an idempotent write once more (on the new master) for that, through the whole failover.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from digitq.bus import failover, keys
from digitq.bus.broker import redis_client
from digitq.bus.urls import is_sentinel
from digitq.settings import Settings

log = logging.getLogger("digitq.replication")
T = TypeVar("T")

#: How long a write waits for a replica's acknowledgement (a loopback or LAN round trip is well under 1 ms).
TIMEOUT_MS = 1000
#: How often a process looks again whether its master has a replica (one INFO).
REFRESH_S = 10.0
_PROBE_KEY = keys.replication_probe()

_replicas: dict[str, tuple[float, bool]] = {}  # URL: (monotonic time of the check, has a replica)
_warned: set[str] = set()
os.register_at_fork(after_in_child=_replicas.clear)


def _has_replica(settings: Settings) -> bool:
    """Whether the master has a connected replica (cached for :data:`REFRESH_S`). A Redis that refuses INFO
    is waited on behind Sentinel (where one is expected) and not otherwise."""
    now = time.monotonic()
    checked = _replicas.get(settings.redis_url)
    if checked and now - checked[0] < REFRESH_S:
        return checked[1]
    try:
        has = int(redis_client(settings).info("replication").get("connected_slaves", 0)) > 0
    except (RedisConnectionError, RedisTimeoutError):
        raise
    except RedisError:  # INFO refused (a managed Redis): cannot tell
        has = is_sentinel(settings.redis_url)
    _replicas[settings.redis_url] = (now, has)
    return has


def _warn_once(settings: Settings, why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        log.warning("Redis writes not confirmed by a replica (%s): a failover now could lose the last ones; "
                    "the table 'What a failover can lose' in the README says what recovers each", why)


def confirm_replicated(settings: Settings) -> int | None:
    """After the caller's writes: how many replicas acknowledged them (``WAIT 1``), or None where the
    master has no replica to wait for.

    Raises only :class:`redis.exceptions.ConnectionError` / ``TimeoutError``: the master was lost before it
    answered, and the writes before it may be lost too. Its own write and WAIT go on a connection that is
    never retried, so that a WAIT on a newly promoted master cannot confirm a write made on the old one."""
    if not _has_replica(settings):
        if is_sentinel(settings.redis_url):
            _warn_once(settings, "the master has no replica connected")
        return None
    pipe = redis_client(settings, retry=False).pipeline(transaction=False)
    pipe.set(_PROBE_KEY, f"{socket.gethostname()}:{os.getpid()}")
    pipe.execute_command("WAIT", 1, TIMEOUT_MS)
    acked = int(pipe.execute()[1])
    if acked == 0:
        _warn_once(settings, f"no replica acknowledged within {TIMEOUT_MS} ms")
        _replicas.pop(settings.redis_url, None)  # the replica may be gone (a failover): look again
    return acked


def durably(settings: Settings, write: Callable[[], T], what: str = "a write") -> T:
    """``write()``, then :func:`confirm_replicated`; both again (``write`` must be idempotent: it lands on the
    promoted master) after a lost master, through a failover (:func:`digitq.bus.failover.ride`, up to
    ``DIGITQ_FAILOVER_S``). Returns the last ``write()``'s value; raises the last error past that."""
    def attempt() -> T:
        result = write()
        confirm_replicated(settings)
        return result

    return failover.ride(settings, attempt, what)
