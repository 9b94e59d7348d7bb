"""The waiting process's own collector: on the data host, ``scan --wait`` and ``digitq wait`` commit the results
of stateless workers while no worker that sees the data dir does.

A fleet of only stateless workers (a laptop that sends to a cluster without its disk) hands every result in on
the data dir's ``collect.<id>`` queue (:mod:`digitq.batch.commit`); with nobody consuming it, a job would never end. The
waiter asks the live workers (Celery's remote control, as ``digitq workers`` does) whether any consumes that
queue; while none does, it takes the results itself and commits each through :func:`digitq.batch.commit.collect`, the
path a collecting worker runs, acking a message only once its commit is done (one it dies holding comes back
after the visibility timeout, as a worker's would). It asks again every :data:`RECHECK_S`, and leaves the queue
to a collecting worker that appears. Two committers are safe meanwhile: each message goes to one consumer, and a
batch committed twice (a duplicate) keeps one row per file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from digitq.batch import stalls
from digitq.batch.commit import COLLECT_TASK, collect, record_failure
from digitq.bus.broker import client_app, live_consumers, redis_client
from digitq.disk.jobs import Job
from digitq.errors import BrokerError, DigitqError, JobError, JobNotFound
from digitq.settings import Settings

log = logging.getLogger("digitq.producer")
#: How often the live workers are asked whether one collects (each question waits about a second for replies).
RECHECK_S = 10.0
#: Most results committed in one :meth:`Collector.step`, so that the caller's loop keeps its pace.
STEP_LIMIT = 64


class Collector:
    """Commits what waits in this data dir's collect queue, step by step, while no live worker consumes it."""

    def __init__(self, settings: Settings, say: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.say = say or (lambda line: log.warning("%s", line))
        self.queue = stalls.collect_queue(settings)
        self.active = False  # no live worker collects: this process does
        self.checked = float("-inf")
        self.committed = 0
        self._app = self._conn = self._simple = None
        self._said: set[str] = set()

    def step(self, limit: int = STEP_LIMIT) -> int:
        """Commit up to ``limit`` waiting results if no live worker collects them; how many were committed."""
        if self.queue is None:
            return 0
        now = time.monotonic()
        try:
            if not self.active:
                # Cheap first: the broadcast is asked only when results wait, and at most every RECHECK_S.
                if now - self.checked < RECHECK_S or not redis_client(self.settings).llen(self.queue):
                    return 0
                self.checked = now
                self.active = not live_consumers(self.settings, self.queue)
                if self.active:
                    self._once("start", f"no live worker sees this data dir {self.settings.data_dir.resolve()}: "
                                        f"this process commits the results of stateless workers ({self.queue})")
            elif now - self.checked >= RECHECK_S:
                self.checked = now
                if live_consumers(self.settings, self.queue):
                    self.active = False
                    self._close()
                    return 0
            return self._drain(limit) if self.active else 0
        except (BrokerError, KombuError, RedisError, OSError) as e:  # a failover, Redis away: the next step retries
            self._once(f"error:{type(e).__name__}", f"could not collect results from {self.queue} ({e}); retrying")
            self._close()
            return 0

    def _drain(self, limit: int) -> int:
        simple = self._queue()
        done = 0
        for _ in range(limit):
            try:
                message = simple.get(block=False)
            except simple.Empty:
                break
            if not self._commit(message):
                break  # put back: leave it for the next step (or a worker)
            done += 1
        self.committed += done
        return done

    def _commit(self, message) -> bool:
        """Commit one collect message and ack it; False when it went back to the queue."""
        if message.headers.get("task") != COLLECT_TASK:
            message.requeue()  # not ours to judge: a worker's
            return False
        try:
            args = message.payload[0]
            job_id, batch, payload = str(args[0]), int(args[1]), args[2]
        except (IndexError, KeyError, TypeError, ValueError):
            self._once("malformed", f"a malformed message in {self.queue}: left for a worker")
            message.requeue()
            return False
        try:
            collect(self.settings, job_id, batch, payload)
        except JobNotFound:
            self._once(f"unknown:{job_id}", f"job {job_id} is not under {self.settings.data_dir.resolve()}: its "
                                            "results stay queued")
            message.requeue()
            return False
        except JobError as e:  # a malformed result: no retry mends it, the batch is recorded as failed
            try:
                record_failure(Job.load(self.settings.jobs_dir, job_id), batch, str(e))
            except (DigitqError, OSError) as again:
                self._once(f"failure:{job_id}", f"job {job_id} batch {batch}: could not record failure: {again}")
                message.requeue()
                return False
        except (DigitqError, OSError, RedisError) as e:
            self._once(f"commit:{job_id}", f"job {job_id} batch {batch}: commit failed ({e}); retrying")
            message.requeue()
            return False
        message.ack()
        return True

    def _queue(self):
        if self._simple is None:
            from kombu import Exchange, Queue

            self._app = client_app(self.settings)
            self._conn = self._app.connection_for_read()
            # Declared as Celery declares a queue it creates on demand, so that the binding is the same.
            queue = Queue(self.queue, Exchange(self.queue), routing_key=self.queue)
            self._simple = self._conn.SimpleQueue(queue, no_ack=False, accept=["json"])
        return self._simple

    def _once(self, key: str, line: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.say(line)

    def _close(self) -> None:
        for closing in (self._simple, self._conn):
            if closing is not None:
                try:
                    closing.close() if closing is self._simple else closing.release()
                except Exception as e:  # noqa: BLE001 - closing a connection Redis already dropped
                    log.debug("closing the collect queue's connection: %s", e)
        if self._app is not None:
            self._app.close()
        self._app = self._conn = self._simple = None

    def close(self) -> None:
        """Release the connection (unacked results, if any, go back to the queue)."""
        self._close()
