"""Celery tasks: thin wrappers that deserialize, retry, and record failures."""

from __future__ import annotations

import logging

from digitq.broker import PREDICT_TASK, TRAIN_TASK
from digitq.errors import DigitqError, JobError, TrainingError
from digitq.jobs import Job
from digitq.settings import Settings
from worker import inference
from worker.application import app

log = logging.getLogger("digitq.worker")


def _record_failure(settings: Settings, job_id: str, batch: int, error: str) -> None:
    try:
        Job.load(settings.jobs_dir, job_id).mark_failed(batch, error)
    except (DigitqError, OSError) as e:
        log.error("job %s batch %s: could not record failure: %s", job_id, batch, e)


@app.task(name=PREDICT_TASK, bind=True, max_retries=3)
def predict_batch(self, job_id: str, batch: int, files: list[dict]) -> dict | None:
    """Predict one batch of a job; see :func:`worker.inference.run_batch`."""
    settings = Settings.from_env()
    try:
        return inference.run_batch(settings, job_id, int(batch), files)
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
