"""The Celery app the workers run, configured from ``DIGITQ_*`` settings."""

from __future__ import annotations

import logging
import os

from celery import Celery, signals
from celery.worker.control import inspect_command

from digitq.broker import PREDICT_TASK, celery_config, eviction_policy, redact
from digitq.settings import Settings, available_cores
from digitq.storage import data_dir_id

log = logging.getLogger("digitq.worker")

app = Celery("digitq", include=["worker.tasks"])
app.config_from_object(celery_config(Settings.from_env()))
# `celery -A worker beat` runs the periodic retraining (worker/beat.py); no schedule file to keep.
app.conf.beat_scheduler = "worker.beat:RetrainScheduler"


_pool: dict[str, int] = {}  # what worker_init learned, for the worker_ready log line


@signals.worker_init.connect
def _size_thread_pools(sender=None, **_: object) -> None:
    # Runs in the parent before the pool forks: children inherit the variable
    # and size TensorFlow's pools from it when they load the model.
    concurrency = int(getattr(sender, "concurrency", 0) or 1)
    threads = max(1, available_cores() // concurrency)
    os.environ.setdefault("DIGITQ_TF_THREADS", str(threads))
    _pool["concurrency"] = concurrency


@signals.worker_process_init.connect
def _preload_decoders(**_: object) -> None:
    # In each pool process, at start: the first page scan of a batch then costs what the next ones do.
    from model import preprocess

    preprocess.preload()


@signals.worker_ready.connect
def _announce(**_: object) -> None:
    # Logging is configured by now (it is not yet at worker_init).
    settings = Settings.from_env()
    log.info("digitq worker: broker %s, data dir %s, %d process(es) x %s TF thread(s)",
             redact(settings.redis_url), settings.data_dir.resolve(), _pool.get("concurrency", 1),
             os.environ.get("DIGITQ_TF_THREADS", "?"))
    _, eviction = eviction_policy(settings)
    if eviction:
        log.warning(eviction)


@inspect_command()
def digitq_info(state) -> dict:
    """What `digitq workers` shows beside Celery's own stats: this worker's data dir and its identity."""
    settings = Settings.from_env()
    return {"data_dir": str(settings.data_dir.resolve()), "data_dir_id": data_dir_id(settings.data_dir, create=False),
            "threads": os.environ.get("DIGITQ_THREADS") or os.environ.get("DIGITQ_TF_THREADS")}


@inspect_command()
def digitq_held(state) -> list:
    """The ``[job, batch]`` pairs this worker holds: running, or prefetched and waiting.

    ``digitq status`` uses it to tell a batch a live worker will finish from one that a
    dead host took with it (that one comes back only after the visibility timeout)."""
    from celery.worker import state as worker_state

    held = state.tset(worker_state.active_requests) | state.tset(worker_state.reserved_requests)
    return [list(r.args[:2]) for r in held if r.name == PREDICT_TASK and len(r.args) >= 2]
