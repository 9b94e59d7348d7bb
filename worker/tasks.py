"""Celery tasks: thin wrappers that deserialize, retry, and record failures."""

from __future__ import annotations

import calendar
import logging
import time

from celery.exceptions import Reject
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from digitq.batch import commit, stalls
from digitq.batch.commit import COLLECT_TASK
from digitq.batch.message import BatchMessage, JobContext
from digitq.bus import failover, keys
from digitq.bus.broker import PREDICT_TASK, TRAIN_TASK, batch_repr, redis_client
from digitq.disk.jobs import Job
from digitq.disk.training_requests import STALE_AFTER_S, TrainingClaimed
from digitq.errors import DigitqError, JobError, JobNotFound, TrainingError, TrainingNotFound
from digitq.settings import Settings
from worker import inference
from worker.application import app

log = logging.getLogger("digitq.worker")
#: How long a worker that cannot see a job waits before handing its batch back (so that it does
#: not spin on it, and a worker that can see the job gets its turn).
HAND_BACK_S = 2.0
#: A job no worker has seen for this long is taken as deleted: its leftover batches are dropped, not bounced.
GIVE_UP_AFTER_S = 7 * 24 * 3600
_warned: set[str] = set()  # jobs and trainings this process already logged as invisible
#: Retries a batch gets, beyond ``max_retries``, for errors of a lost Redis master that answered again (a failover
#: per retry): a connection error that persists while Redis answers is then a failure like any other.
LOST_MASTER_RETRIES = 10


def job_age_s(job_id: str) -> float:
    """Seconds since the job was created, from its id (``YYYYMMDD-HHMMSS-xxxxxx``, UTC)."""
    created = calendar.timegm(time.strptime(job_id[:15], "%Y%m%d-%H%M%S"))
    return time.time() - created


def _record_failure(settings: Settings, job_id: str, batch: int, error: str, context: JobContext | None = None,
                    ) -> None:
    """Record a batch that failed for good: on disk where the job is visible, else through its data dir's
    collect queue."""
    try:
        if context is None or commit.sees(settings, context):
            commit.record_failure(Job.load(settings.jobs_dir, job_id), batch, error)
        else:
            commit.hand_in_failure(_send, context, job_id, batch, error)
    except (DigitqError, OSError, RedisError, KombuError) as e:
        log.error("job %s batch %s: could not record failure: %s", job_id, batch, e)


def _send(queue: str, args: list) -> None:
    """Send a collect message (results and failures of stateless workers) to ``queue``."""
    app.send_task(COLLECT_TASK, args=args, queue=queue, argsrepr=batch_repr(args))


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
        _record_failure(settings, job_id, int(batch), f"{doing} failed: {commit.outcome_error(error)}", context)

    def on_success(self, retval, task_id, args, kwargs) -> None:
        if not isinstance(retval, dict) or not retval.get("model_version") or not self.request.hostname:
            return
        try:
            key = keys.served_models(self.request.hostname)
            settings = Settings.from_env()
            redis_client(settings).pipeline().hset(key, retval["model_version"], time.time()).expire(
                key, keys.SERVED_TTL_S).execute()
        except RedisError:
            pass


def _hand_back(settings: Settings, what: str, item_id: str, error: Exception, worker: str | None) -> None:
    """This worker cannot see ``item_id`` (a job or training) under its data dir: never consume the
    message. Say why (once per id in the log, and in Redis for `digitq status`), then requeue it.

    Returns (so the message is acked and dropped) only for an id older than :data:`GIVE_UP_AFTER_S`."""
    if job_age_s(item_id) > GIVE_UP_AFTER_S:
        log.error("%s %s dropped: no worker has seen it for over %d days (deleted?)", what, item_id,
                  GIVE_UP_AFTER_S // 86400)
        return
    # Not ours to judge: the producer's data dir may be elsewhere.
    if item_id not in _warned:
        _warned.add(item_id)
        log.error("%s %s is not under this worker's data dir %s; handing it back for a worker that sees it. "
                  "Check DIGITQ_DATA_DIR on this host", what, item_id, settings.data_dir.resolve())
    try:
        stalls.report(settings, item_id, str(error), worker=worker)
    except RedisError as re:
        log.warning("could not record the stall of %s %s: %s", what, item_id, re)
    time.sleep(HAND_BACK_S)
    raise Reject(str(error), requeue=True) from error  # acks_late: the message itself goes back to the queue


@app.task(name=PREDICT_TASK, bind=True, max_retries=3, base=BatchTask)
def predict_batch(self, job_id: str, batch: int, files: list[dict], context: dict | None = None) -> dict | None:
    """Predict one batch of a job; see :func:`worker.inference.run_batch`."""
    settings = Settings.from_env()
    wire = [job_id, batch, files] if context is None else [job_id, batch, files, context]
    try:
        message = BatchMessage.from_wire(wire)
    except JobError as e:
        log.error("job %s batch %s rejected: %s", job_id, batch, e)
        _record_failure(settings, job_id, int(batch), str(e), JobContext.from_wire(context))
        return None
    try:
        return inference.run_batch(settings, message, send=_send)
    except JobNotFound as e:
        _hand_back(settings, "job", job_id, e, self.request.hostname)
        return None
    except JobError as e:
        # Unknown job or a batch that does not fit its manifest: retrying cannot help.
        log.error("job %s batch %s rejected: %s", job_id, batch, e)
        _record_failure(settings, job_id, batch, str(e), message.context)
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
        _hand_back(settings, "job", job_id, e, self.request.hostname)
        return None
    except JobError as e:  # a malformed message or one that does not fit the manifest: no retry mends it
        log.error("job %s batch %s: result rejected: %s", job_id, batch, e)
        _record_failure(settings, job_id, int(batch), str(e))
        return None
    except Exception as e:
        self.retry_or_fail(settings, job_id, batch, e, "commit")
        return None


@app.task(name=TRAIN_TASK, bind=True)
def train_model(self, training_id: str) -> dict | None:
    """Run one training request; see :func:`model.training.run_training`.

    Acked late like every task: a worker killed mid-training gets it redelivered,
    and the registry publishes at most one version per training id.
    """
    from model.training import run_training  # TensorFlow stays out of processes that never train

    settings = Settings.from_env()
    try:
        return run_training(settings, training_id)
    except TrainingClaimed as e:
        # Claimed from another host, whose process cannot be looked up from here: it trains, or it died
        # and its lease has yet to lapse. Look again once it could have (the outcome ends the loop).
        log.info("%s; looking again in %.0f s", e, STALE_AFTER_S)
        raise self.retry(exc=e, countdown=STALE_AFTER_S, max_retries=None) from e
    except TrainingNotFound as e:
        _hand_back(settings, "training", training_id, e, self.request.hostname)
        return None
    except TrainingError as e:
        # An unknown id (another data dir?) cannot be trained by retrying here.
        log.error("training %s rejected: %s", training_id, e)
        return None
