"""A Celery app for tests whose trainings halt at a known epoch: ``celery -A halting_training worker -Q train``.

Only tests start it (with ``tests/`` on PYTHONPATH). The first attempt of every training stops after epoch
``DIGITQ_TEST_HALT_AFTER_EPOCH`` has recorded its progress and waits there, its claim alive, until the test
kills the process; later attempts run to the end. A kill mid-way then lands at that epoch, however fast the
epochs of a small training are.
"""

import os
import time

from model import training
from worker.application import app

__all__ = ["app"]  # what `celery -A halting_training` runs

_HALT = int(os.environ.get("DIGITQ_TEST_HALT_AFTER_EPOCH", "0"))
_callback = training._progress_callback


def _halting_callback(run, attempt: int, epochs: int):
    callback = _callback(run, attempt, epochs)
    recorded = callback.on_epoch_end

    def on_epoch_end(epoch, logs=None):
        recorded(epoch, logs)
        while attempt == 1 and epoch + 1 == _HALT:
            time.sleep(1)  # until killed

    callback.on_epoch_end = on_epoch_end
    return callback


training._progress_callback = _halting_callback
