"""Celery tasks: thin wrappers around the batch hooks (:mod:`worker.hooks`) that retry what may pass."""

from __future__ import annotations

import logging

from digitq.batch import commit
from digitq.batch.commit import COLLECT_TASK
from digitq.batch.message import JobContext
from digitq.bus import failover
from digitq.bus.broker import PREDICT_TASK, TRAIN_TASK, redis_client
from digitq.disk.training_requests import STALE_AFTER_S, TrainingClaimed
from digitq.errors import JobError, JobNotFound, TrainingError, TrainingNotFound
from digitq.settings import Settings
from worker import hooks, inference
from worker.application import app

log = logging.getLogger("digitq.worker")
#: Retries a batch gets, beyond ``max_retries``, for errors of a lost Redis master that answered again (a failover
#: per retry): a connection error that persists while Redis answers is then a failure like any other.
LOST_MASTER_RETRIES = 10


def _send(queue: str, args: list) -> None:
    hooks.hand_in(app, queue, args)


class BatchTask(app.Task):
    """What every delivery of a batch (to predict, or to commit) does around its work: retry a failure a few
    times, then record it for good; record which version this worker served (for `digitq workers`)."""

    def retry_or_fail(self, settings: Settings, job_id: str, batch: int, error: Exception, doing: str,
                      context: JobContext | None = None) -> None:
        """Retry with back-off (raises), or, past ``max_retries``, record the batch as failed for good.

        A lost Redis master (a failover) is no fault of the batch and does not fail it: once Redis answers again
        (within ``DIGITQ_FAILOVER_S``) the batch is retried at once, beyond ``max_retries`` (up to
        :data:`LOST_MASTER_RETRIES` more); past that window the task fails without recording anything, and the
        batch comes back by the sweeper or ``digitq resume``."""
        if failover.transient(error) and self.request.retries < self.max_retries + LOST_MASTER_RETRIES:
            try:
                failover.ride(settings, lambda: redis_client(settings).ping(), f"{doing} of job {job_id}")
            except Exception as lost:
                log.error("job %s batch %s: %s failed, and Redis did not answer again (behind Sentinel: within "
                          "DIGITQ_FAILOVER_S=%g s): %s; the sweeper sends the batch again once it does, or run "
                          "`digitq resume %s`", job_id, batch, doing, settings.failover_s, lost, job_id)
                raise error from lost
            log.warning("job %s batch %s: %s failed while Redis was lost (%s); retrying", job_id, batch, doing, error)
            raise self.retry(exc=error, countdown=0, max_retries=self.request.retries + 1) from error
        if self.request.retries < self.max_retries:
            log.warning("job %s batch %s: %s failed (%s); retrying", job_id, batch, doing, error)
            raise self.retry(exc=error, countdown=2**self.request.retries) from error
        log.error("job %s batch %s: %s failed for good: %s", job_id, batch, doing, error)
        hooks.failed(app, settings, job_id, int(batch), f"{doing} failed: {commit.outcome_error(error)}", context)

    def on_success(self, retval, task_id, args, kwargs) -> None:
        if isinstance(retval, dict) and retval.get("model_version") and self.request.hostname:
            hooks.served(Settings.from_env(), self.request.hostname, retval["model_version"])


@app.task(name=PREDICT_TASK, bind=True, max_retries=3, base=BatchTask)
def predict_batch(self, job_id: str, batch: int, files: list[dict], context: dict | None = None) -> dict | None:
    """Predict one batch of a job; see :func:`worker.inference.run_batch`."""
    settings = Settings.from_env()
    try:
        message = hooks.received(job_id, batch, files, context)
    except JobError as e:
        log.error("job %s batch %s rejected: %s", job_id, batch, e)
        hooks.failed(app, settings, job_id, int(batch), str(e), JobContext.from_wire(context))
        return None
    try:
        return inference.run_batch(settings, message, send=_send)
    except JobNotFound as e:
        hooks.not_visible(settings, "job", job_id, e, self.request.hostname)
        return None
    except JobError as e:
        # Unknown job or a batch that does not fit its manifest: retrying cannot help.
        log.error("job %s batch %s rejected: %s", job_id, batch, e)
        hooks.failed(app, settings, job_id, batch, str(e), message.context)
        return None
    except Exception as e:
        self.retry_or_fail(settings, job_id, batch, e, "prediction", message.context)
        return None


@app.task(name=COLLECT_TASK, bind=True, max_retries=5, base=BatchTask)
def collect_batch(self, job_id: str, batch: int, payload: dict) -> dict | None:
    """Commit the outcome (or the failure) a stateless worker handed in; see :mod:`digitq.batch.commit`."""
    settings = Settings.from_env()
    try:
        return commit.collect(settings, job_id, int(batch), payload)
    except JobNotFound as e:
        hooks.not_visible(settings, "job", job_id, e, self.request.hostname)
        return None
    except JobError as e:  # a malformed message or one that does not fit the manifest: no retry mends it
        log.error("job %s batch %s: result rejected: %s", job_id, batch, e)
        hooks.failed(app, settings, job_id, int(batch), str(e))
        return None
    except Exception as e:
        self.retry_or_fail(settings, job_id, batch, e, "commit")
        return None


@app.task(name=TRAIN_TASK, bind=True)
def train_model(self, training_id: str) -> dict | None:
    """Run one training request; see :func:`model.training.run.run_training`.

    Acked late like every task: a worker killed mid-training gets it redelivered,
    and the registry publishes at most one version per training id.
    """
    from model.training.run import run_training  # TensorFlow stays out of processes that never train

    settings = Settings.from_env()
    try:
        return run_training(settings, training_id)
    except TrainingClaimed as e:
        # Claimed from another host, whose process cannot be looked up from here: it trains, or it died
        # and its lease has yet to lapse. Look again once it could have (the outcome ends the loop).
        log.info("%s; looking again in %.0f s", e, STALE_AFTER_S)
        raise self.retry(exc=e, countdown=STALE_AFTER_S, max_retries=None) from e
    except TrainingNotFound as e:
        hooks.not_visible(settings, "training", training_id, e, self.request.hostname)
        return None
    except TrainingError as e:
        # An unknown id (another data dir?) cannot be trained by retrying here.
        log.error("training %s rejected: %s", training_id, e)
        return None
