"""Celery beat for digitq: periodic retraining, ``celery -A worker beat``.

``DIGITQ_RETRAIN_SCHEDULE`` (a five-field crontab, UTC) says when;
``DIGITQ_RETRAIN_DATA``, ``DIGITQ_RETRAIN_EPOCHS`` and ``DIGITQ_RETRAIN_PROMOTE``
say what. Each due run writes a training request under the data dir (so it is
listed, followed and retried like one from ``digitq train``) and sends it to
the ``train`` queue, unless a training is still queued or running: then the
run is skipped with a log line, so slow trainings never pile up.

Exactly one beat process may run: two would each send every periodic run.
"""

from __future__ import annotations

import logging

from celery.beat import Scheduler
from celery.schedules import crontab

from digitq.bus.broker import TRAIN_TASK
from digitq.disk.training_requests import Training, active_trainings, create_training, send_training
from digitq.errors import ConfigError, DigitqError
from digitq.settings import Settings

log = logging.getLogger("digitq.beat")
RETRAIN_ENTRY = "digitq-retrain"


def parse_crontab(expression: str) -> crontab:
    """``minute hour day-of-month month day-of-week``, as in crontab(5)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ConfigError(f"DIGITQ_RETRAIN_SCHEDULE={expression!r} must have five fields "
                          "(minute hour day-of-month month day-of-week), e.g. '0 3 * * 0'")
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month,
                       day_of_week=day_of_week)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"DIGITQ_RETRAIN_SCHEDULE={expression!r} is not a valid crontab: {e}") from e


def scheduled_training(settings: Settings) -> Training | None:
    """Request and send one periodic training, or None when one is still pending."""
    pending = [t for t in active_trainings(settings.trainings_dir) if t["state"] in ("queued", "running")]
    if pending:
        t = pending[0]
        log.warning("periodic retraining skipped: training %s is still %s (started by %s). If it stays queued, "
                    "start a training worker (`celery -A worker worker -Q train -c 1`) or re-send it with "
                    "`digitq train --retry %s`", t["training_id"], t["state"], t["by"], t["training_id"])
        return None
    sources = list(settings.retrain_data) or ([settings.mnist] if settings.mnist else [])
    if not sources:
        raise ConfigError("periodic retraining has no data: set DIGITQ_RETRAIN_DATA (sources separated by ':') "
                          "or DIGITQ_MNIST")
    training = create_training(settings.trainings_dir, sources=sources, epochs=settings.retrain_epochs,
                               from_version=None, holdout=0.2, seed=0, promote=settings.retrain_promote,
                               by="schedule")
    send_training(settings, training)
    log.warning("periodic retraining: sent training %s (%d epochs on %s, promote %s)", training.id,
                settings.retrain_epochs, ", ".join(sources), settings.retrain_promote)
    return training


class RetrainScheduler(Scheduler):
    """Beat's in-memory scheduler plus the retraining entry, which it runs itself
    (checks for a pending training, writes the request, sends it)."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        settings = Settings.from_env()
        if not settings.retrain_schedule:
            log.warning("DIGITQ_RETRAIN_SCHEDULE is not set: beat has no periodic retraining to run")
            return
        entry = {"task": TRAIN_TASK, "schedule": parse_crontab(settings.retrain_schedule),
                 "options": {"queue": settings.train_queue}}
        self.merge_inplace({RETRAIN_ENTRY: entry})
        log.warning("periodic retraining on '%s' (UTC) into data dir %s", settings.retrain_schedule,
                    settings.data_dir.resolve())

    def apply_entry(self, entry, producer=None):
        if entry.name != RETRAIN_ENTRY:
            return super().apply_entry(entry, producer=producer)
        try:
            scheduled_training(Settings.from_env())
        except DigitqError as e:
            log.error("periodic retraining not sent: %s", e)
        except OSError as e:
            log.error("periodic retraining not sent: cannot write under the data dir: %s", e)
        return None
