"""A Celery app for tests whose beat runs the periodic retraining every few seconds: ``celery -A seconds_beat beat``.

Only tests start it (with ``tests/`` on PYTHONPATH). It is digitq's beat, scheduler and all, except that
the retraining entry parsed from ``DIGITQ_RETRAIN_SCHEDULE`` falls due every ``DIGITQ_TEST_RETRAIN_EVERY_S``
seconds instead of on its crontab's minutes: two runs take seconds, not two minutes.
"""

import os

from celery.schedules import schedule

from worker.application import app
from worker.beat import RETRAIN_ENTRY, RetrainScheduler

__all__ = ["app"]  # what `celery -A seconds_beat` runs


class SecondsScheduler(RetrainScheduler):
    """:class:`worker.beat.RetrainScheduler` with its retraining entry on an interval of seconds."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        entry = self.schedule.get(RETRAIN_ENTRY)
        if entry is not None:
            entry.schedule = schedule(float(os.environ["DIGITQ_TEST_RETRAIN_EVERY_S"]), app=self.app)


app.conf.beat_scheduler = "seconds_beat:SecondsScheduler"
