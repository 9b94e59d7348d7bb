"""The Celery app the workers run, configured from ``DIGITQ_*`` settings."""

from __future__ import annotations

import logging
import os
import sys

from celery import Celery, bootsteps, signals
from celery.worker.control import inspect_command

from digitq.batch.commit import local_data_dir
from digitq.bus.broker import celery_config, eviction_policy, redact
from digitq.errors import DigitqError
from digitq.settings import Settings, available_cores
from worker import hooks
from worker.sweeper import Sweeper

log = logging.getLogger("digitq.worker")


def _settings_or_exit() -> Settings:
    """The settings; a bad ``DIGITQ_*`` value (a password that must be percent-encoded, say) ends a worker or beat
    at its start with the one line of advice, not a traceback (which could quote the URL)."""
    try:
        return Settings.from_env()
    except DigitqError as e:
        sys.exit(f"digitq: {e}")


app = Celery("digitq", include=["worker.tasks"])
app.config_from_object(celery_config(_settings_or_exit()))
# `celery -A worker beat` runs the periodic retraining (worker/beat.py); no schedule file to keep.
app.conf.beat_scheduler = "worker.beat:RetrainScheduler"


_pool: dict[str, object] = {}  # what worker_init and the Collector step learned, for the log and `digitq workers`


@signals.worker_init.connect
def _size_thread_pools(sender=None, **_: object) -> None:
    # Runs in the parent before the pool forks: children inherit the variable
    # and size TensorFlow's pools from it when they load the model.
    concurrency = int(getattr(sender, "concurrency", 0) or 1)
    threads = max(1, available_cores() // concurrency)
    os.environ.setdefault("DIGITQ_TF_THREADS", str(threads))
    _pool["concurrency"] = concurrency


def _resend(args: list) -> None:
    hooks.resend(app, args)


class Collector(bootsteps.StartStopStep):
    """A prediction worker that sees a data dir also commits what stateless workers hand in for it
    (digitq/batch/commit.py): it consumes that data dir's own collect queue, whatever -Q says, and runs the data dir's
    sweeper (worker/sweeper.py). The data dir's id is looked at again every 2 s: one that appears after the start
    (the first scan, `digitq init`, a volume mounted late) or changes (another volume, a symlink bound elsewhere)
    moves the worker to the right collect queue, without a restart."""

    requires = {"celery.worker.consumer.tasks:Tasks"}
    every_s = 2.0

    def __init__(self, parent, **kwargs) -> None:
        super().__init__(parent, **kwargs)
        self.timer = None
        self.sweeper: Sweeper | None = None
        self.added: str | None = None  # the collect queue this step added (not one -Q named)

    def start(self, consumer) -> None:
        settings = Settings.from_env()
        queues = consumer.app.amqp.queues
        consumed = set(queues.consume_from or queues)
        collecting = any(q.startswith(settings.collect_queue + ".") for q in consumed)
        if settings.predict_queue not in consumed and not collecting:
            return  # a training worker: nothing to add
        self._look(consumer)
        self.timer = consumer.timer.call_repeatedly(self.every_s, self._look, (consumer,), priority=10)

    def stop(self, consumer) -> None:
        # Celery stops and starts the consumer's steps again on every lost broker connection (a failover, a
        # restarted Redis): the sweeper lives on through that, when a lost batch needs it most; only the
        # worker's shutdown ends it.
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def shutdown(self, consumer) -> None:
        self.stop(consumer)
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None

    def _look(self, consumer) -> None:
        settings = Settings.from_env()
        dir_id = local_data_dir(settings)
        route = settings.collect_route(dir_id) if dir_id else None
        if route is not None and self.sweeper is None:  # the stack's own stall handling (worker/sweeper.py)
            self.sweeper = Sweeper(settings, _resend)  # each pass reads the data dir's id anew
            self.sweeper.start()
        if route == _pool.get("collect"):
            return
        if self.added is not None:  # the data dir this worker collected for is gone from its path
            consumer.cancel_task_queue(self.added)
            self.added = None
        queues = consumer.app.amqp.queues
        consumed = set(queues.consume_from or queues)
        if route is None:
            log.warning("data dir %s has no id any more: serving statelessly until it has one",
                        settings.data_dir.resolve())
            _pool.pop("collect", None)
            return
        if route not in consumed:
            consumer.add_task_queue(route)
            self.added = route
        if "collect" in _pool:
            log.warning("data dir %s now has id %s (another volume?): commits its batches, and what stateless "
                        "workers hand in (queue %s)", settings.data_dir.resolve(), dir_id, route)
        _pool["collect"] = route


class TrainingGuard(bootsteps.StartStopStep):
    """A worker asked to consume ``train`` without TensorFlow (the slim image, digitq without its ``train``
    extra) does not take trainings it would only fail: it leaves the queue to a worker that can, and says so."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, consumer) -> None:
        from model.extras import INSTALL_TRAIN, missing

        settings = Settings.from_env()
        queues = consumer.app.amqp.queues
        absent = missing()
        if settings.train_queue in set(queues.consume_from or queues) and absent:
            consumer.cancel_task_queue(settings.train_queue)
            log.error("not consuming %r: training needs %s, which this install lacks; install digitq[train] (%s) "
                      "or run the full image for the training worker", settings.train_queue, ", ".join(absent),
                      INSTALL_TRAIN)


app.steps["consumer"].add(Collector)
app.steps["consumer"].add(TrainingGuard)


@signals.worker_process_init.connect
def _preload_decoders(**_: object) -> None:
    # In each pool process, at start: the first page scan of a batch then costs what the next ones do.
    from model.serving import preprocess

    preprocess.preload()


@signals.worker_ready.connect
def _announce(**_: object) -> None:
    # Logging is configured by now (it is not yet at worker_init).
    settings = Settings.from_env()
    log.info("digitq worker: broker %s, data dir %s, %d process(es) x %s TF thread(s)",
             redact(settings.redis_url), settings.data_dir.resolve(), _pool.get("concurrency", 1),
             os.environ.get("DIGITQ_TF_THREADS", "?"))
    if local_data_dir(settings) is None:
        log.warning("data dir %s does not exist or has no id (yet): serving statelessly until it has one (the "
                    "first scan or `digitq init` gives it one; models come through Redis, results go back through "
                    "Redis to a worker that sees the job's data dir)", settings.data_dir.resolve())
    elif "collect" in _pool:
        log.info("commits the batches of jobs in this data dir, and what stateless workers hand in (queue %s); "
                 "jobs of other data dirs are served statelessly", _pool["collect"])
    _, eviction = eviction_policy(settings)
    if eviction:
        log.warning(eviction)


@inspect_command()
def digitq_info(state) -> dict:
    """What `digitq workers` shows beside Celery's own stats: this worker's data dir and its identity."""
    settings = Settings.from_env()
    return {"data_dir": str(settings.data_dir.resolve()), "data_dir_id": local_data_dir(settings),
            "collects": _pool.get("collect"),
            "threads": os.environ.get("DIGITQ_THREADS") or os.environ.get("DIGITQ_TF_THREADS")}


@inspect_command()
def digitq_held(state) -> list:
    """The ``[job, batch]`` pairs this worker holds: running, prefetched and waiting, or waiting for a retry's
    countdown (an ETA: such a message is neither queued nor reserved, and only this worker will run it).

    ``digitq status`` and the sweeper use it to tell a batch a live worker will finish from one that
    a dead host took with it (that one comes back only after the visibility timeout)."""
    from celery.worker import state as worker_state

    held = (state.tset(worker_state.active_requests) | state.tset(worker_state.reserved_requests)
            | _scheduled(state, worker_state))
    return hooks.held(held)


def _scheduled(state, worker_state) -> set:
    """The requests waiting for their ETA: Celery's own set where its version keeps one, and the
    consumer's timer entries, as ``celery inspect scheduled`` lists them (every version)."""
    from celery.worker.request import Request

    found = set(state.tset(getattr(worker_state, "scheduled_requests", ())))
    schedule = getattr(getattr(getattr(state, "consumer", None), "timer", None), "schedule", None)
    for waiting in list(getattr(schedule, "queue", None) or ()):
        entry = getattr(waiting, "entry", None)
        if getattr(entry, "canceled", False):  # cancelled when the connection was lost: not held any more
            continue
        args = getattr(entry, "args", None) or ()
        if args and isinstance(args[0], Request):
            found.add(args[0])
    return found
