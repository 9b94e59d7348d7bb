"""Riding through a Redis failover: one rule, for every role that talks to Redis.

Behind Sentinel a lost master is replaced only after the sentinels' ``down-after-milliseconds``
(Redis's default is 30 s, 5 s is common) and an election. Until then every command fails: the
old master refuses the connection, then the sentinels name no master (redis-py's
``MasterNotFoundError``, "No master found for 'mymaster'"), and kombu wraps either as an
``OperationalError`` once its own publish retries are spent. :func:`ride` runs an operation
again after such an error until it succeeds or :attr:`Settings.failover_s`
(``DIGITQ_FAILOVER_S``) has passed since the first one; then the last error is raised, and
the caller says what to do (``digitq resume JOB``, with :func:`explain`'s words).

A plain ``redis://`` URL has no failover to wait for: there the first error is raised at once,
as it always was (a Redis that is down says so without a minute's wait).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from digitq.bus.urls import is_sentinel
from digitq.settings import Settings

log = logging.getLogger("digitq.failover")
T = TypeVar("T")

#: What a lost master looks like: a refused or dropped connection, no master named (a ``ConnectionError``
#: subclass), a timeout, kombu's wrapping of those. A reply Redis gave (a ``ResponseError``) is not one.
TRANSIENT: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError,
                                              OperationalError)
#: Sleeps between attempts: doubling from the first, at most the second (s), each with equal jitter.
BACKOFF = (0.2, 2.0)


def transient(error: BaseException) -> bool:
    """Whether ``error`` is what a failover (or a Redis that is down) raises, rather than a refusal."""
    return isinstance(error, TRANSIENT)


def window_s(settings: Settings) -> float:
    """How long a role keeps trying through a failover: ``DIGITQ_FAILOVER_S`` behind Sentinel, else 0."""
    return settings.failover_s if is_sentinel(settings.redis_url) else 0.0


def ride(settings: Settings, operation: Callable[[], T], what: str = "a Redis command",
         sleep: Callable[[float], None] | None = None, clock: Callable[[], float] | None = None) -> T:
    """``operation()``; after a :func:`transient` error, again (with back-off) until it succeeds or
    :func:`window_s` has passed since the first error; then that last error is raised. ``operation`` must be
    safe to run twice (an idempotent write, a read, a publish whose duplicate is harmless)."""
    sleep, clock = sleep or time.sleep, clock or time.monotonic
    deadline = None
    delay = BACKOFF[0]
    while True:
        try:
            result = operation()
        except TRANSIENT as e:
            now = clock()
            if deadline is None:
                deadline = now + window_s(settings)
                if deadline > now:
                    log.warning("Redis lost during %s (%s): trying again for up to %.0f s (DIGITQ_FAILOVER_S), "
                                "as a Sentinel failover takes", what, _short(e), window_s(settings))
            if now >= deadline:
                raise
            sleep(min(deadline - now, delay / 2 + random.uniform(0, delay / 2)))  # noqa: S311 - jitter, not a secret
            delay = min(BACKOFF[1], delay * 2)
            continue
        if deadline is not None:
            log.warning("Redis answers again: %s went through", what)
        return result


def explain(settings: Settings, error: BaseException) -> str:
    """Words for a :func:`transient` error that :func:`ride` gave up on (empty for another error)."""
    if not transient(error) or not window_s(settings):
        return ""
    return (f"; no Redis master answered for DIGITQ_FAILOVER_S={settings.failover_s:g} s (raise it if the "
            "sentinels' down-after-milliseconds and election take longer)")


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."
