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

from digitq.broker import redis_client
from digitq.settings import Settings

TTL_S = 120


def _key(job_id: str) -> str:
    return f"digitq:job:{job_id}:stalled"


def report(settings: Settings, job_id: str, error: str, worker: str | None = None) -> None:
    """Record (or refresh) why this worker cannot run ``job_id``."""
    record = {"worker": worker or socket.gethostname(), "host": socket.gethostname(), "pid": os.getpid(),
              "data_dir": str(settings.data_dir.resolve()), "error": error, "at": time.time()}
    redis_client(settings).set(_key(job_id), json.dumps(record), ex=TTL_S)


def read(settings: Settings, job_id: str) -> dict | None:
    """The latest report for ``job_id``, or None."""
    raw = redis_client(settings).get(_key(job_id))
    return json.loads(raw) if raw else None


def describe(record: dict) -> str:
    """One line for a person."""
    return (f"worker {record['worker']} (pid {record['pid']}) cannot see this job under its data dir "
            f"{record['data_dir']}; give that worker the producer's DIGITQ_DATA_DIR (shared storage), or stop it. "
            "Its batches are handed back to the queue meanwhile, nothing is lost")
