"""Celery tasks: thin wrappers that deserialize, retry, and record failures."""

from __future__ import annotations

import calendar
import logging
import time

from celery.exceptions import Reject
from redis.exceptions import RedisError

from digitq import stalls
from digitq.broker import PREDICT_TASK, TRAIN_TASK, redis_client
from digitq.errors import DigitqError, JobError, JobNotFound, TrainingError
from digitq.jobs import Job
from digitq.settings import Settings
from worker import inference
from worker.application import app

log = logging.getLogger("digitq.worker")
#: How long a worker that cannot see a job waits before handing its batch back (so that it does
#: not spin on it, and a worker that can see the job gets its turn).
HAND_BACK_S = 2.0
#: A job no worker has seen for this long is taken as deleted: its leftover batches are dropped, not bounced.
GIVE_UP_AFTER_S = 7 * 24 * 3600
_warned: set[str] = set()  # jobs this process already logged as invisible


def job_age_s(job_id: str) -> float:
    """Seconds since the job was created, from its id (``YYYYMMDD-HHMMSS-xxxxxx``, UTC)."""
    created = calendar.timegm(time.strptime(job_id[:15], "%Y%m%d-%H%M%S"))
    return time.time() - created


def _record_failure(settings: Settings, job_id: str, batch: int, error: str) -> None:
    try:
        Job.load(settings.jobs_dir, job_id).mark_failed(batch, error)
    except (DigitqError, OSError) as e:
        log.error("job %s batch %s: could not record failure: %s", job_id, batch, e)


def _served(settings: Settings, worker: str | None, version: str | None) -> None:
    # Which model versions each worker serves, for `digitq workers` (a day, refreshed by every batch).
    if not worker or not version:
        return
    try:
        key = f"digitq:worker:{worker}:models"
        redis_client(settings).pipeline().hset(key, version, time.time()).expire(key, 86400).execute()
    except RedisError:
        pass


@app.task(name=PREDICT_TASK, bind=True, max_retries=3)
def predict_batch(self, job_id: str, batch: int, files: list[dict]) -> dict | None:
    """Predict one batch of a job; see :func:`worker.inference.run_batch`."""
    settings = Settings.from_env()
    try:
        result = inference.run_batch(settings, job_id, int(batch), files)
        _served(settings, self.request.hostname, result.get("model_version"))
        return result
    except JobNotFound as e:
        if job_age_s(job_id) > GIVE_UP_AFTER_S:
            log.error("job %s batch %s dropped: no worker has seen the job for over %d days (deleted?)",
                      job_id, batch, GIVE_UP_AFTER_S // 86400)
            return None
        # Not ours to judge: the producer's data dir may be elsewhere. Never consume the batch.
        if job_id not in _warned:
            _warned.add(job_id)
            log.error("job %s is not under this worker's data dir %s; handing its batches back for a worker "
                      "that sees it. Check DIGITQ_DATA_DIR on this host", job_id, settings.data_dir.resolve())
        try:
            stalls.report(settings, job_id, str(e), worker=self.request.hostname)
        except RedisError as re:
            log.warning("could not record the stall of job %s: %s", job_id, re)
        time.sleep(HAND_BACK_S)
        raise Reject(str(e), requeue=True) from e  # acks_late: the message itself goes back to the queue
    except JobError as e:
        # Unknown job or a batch that does not fit its manifest: retrying cannot help.
        log.error("job %s batch %s rejected: %s", job_id, batch, e)
        _record_failure(settings, job_id, batch, str(e))
        return None
    except Exception as e:
        if self.request.retries < self.max_retries:
            log.warning("job %s batch %s failed (%s); retrying", job_id, batch, e)
            raise self.retry(exc=e, countdown=2**self.request.retries) from e
        log.error("job %s batch %s failed for good: %s", job_id, batch, e)
        _record_failure(settings, job_id, batch, f"{type(e).__name__}: {e}")
        return None


@app.task(name=TRAIN_TASK)
def train_model(training_id: str) -> dict | None:
    """Run one training request; see :func:`model.training.run_training`.

    Acked late like every task: a worker killed mid-training gets it redelivered,
    and the registry publishes at most one version per training id.
    """
    from model.training import run_training  # TensorFlow stays out of processes that never train

    try:
        return run_training(Settings.from_env(), training_id)
    except TrainingError as e:
        # An unknown id (another data dir?) cannot be trained by retrying here.
        log.error("training %s rejected: %s", training_id, e)
        return None
