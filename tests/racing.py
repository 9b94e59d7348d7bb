"""A Celery app for tests that force the worst interleaving of concurrent deliveries: ``celery -A racing worker``.

Only tests start it (with ``tests/`` on PYTHONPATH). Real barriers (files), no sleeps:

- ``DIGITQ_TEST_BLOCK_MARKER`` and ``DIGITQ_TEST_BLOCK_DIR``: decoding a file whose bytes hold the marker
  first records this process in the dir (``entered-<pid>``), then waits until the file ``release`` appears
  there; so copies of one batch can be held, all alive, inside the same file.
- ``DIGITQ_TEST_CLAIM_BARRIER`` (a dir) and ``DIGITQ_TEST_CLAIM_PARTIES`` (a count): the first time a process
  reads a training's run record (what it decides to claim on) it records itself in the dir and waits until
  that many processes have, so that every delivery has looked before any of them claims.
- ``DIGITQ_TEST_KILL_AFTER_PUBLISH`` (a dir): the first process to publish a version records itself there
  (``killed-<pid>``) and SIGKILLs itself the moment the version is published, before anything else runs:
  a training that dies between publishing and promoting.
- ``DIGITQ_TEST_HALT_AFTER_EPOCH`` (a number): the first attempt of a training, once that epoch's progress is
  recorded, waits there with its claim alive until the test kills it; later attempts run on. However fast the
  epochs of a small training are, a kill "mid-way" lands at that epoch.
"""

import os
import signal
import time
from pathlib import Path

from digitq.disk import training_requests as trainings
from model.registry import Registry
from worker import inference
from worker.application import app

__all__ = ["app"]  # what `celery -A racing` runs

_BLOCK = os.environ.get("DIGITQ_TEST_BLOCK_MARKER", "").encode()
_BLOCK_DIR = os.environ.get("DIGITQ_TEST_BLOCK_DIR")
_CLAIM_DIR = os.environ.get("DIGITQ_TEST_CLAIM_BARRIER")
_PARTIES = int(os.environ.get("DIGITQ_TEST_CLAIM_PARTIES", "2"))
_KILL_DIR = os.environ.get("DIGITQ_TEST_KILL_AFTER_PUBLISH")
_HALT_EPOCH = int(os.environ.get("DIGITQ_TEST_HALT_AFTER_EPOCH", "0"))
_WAIT_S = 120.0
_decode = inference.decode_image
_run_record = trainings.Training.run_record
_publish = Registry.publish
_add_progress = trainings.Training.add_progress
_waited: set[int] = set()


def _wait_for(predicate) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def _blocking_decode(data: bytes, *args, **kwargs):
    if _BLOCK and _BLOCK_DIR and _BLOCK in data:
        folder = Path(_BLOCK_DIR)
        (folder / f"entered-{os.getpid()}-{time.monotonic_ns()}").touch()
        _wait_for((folder / "release").exists)
    return _decode(data, *args, **kwargs)


def _run_record_after_barrier(self):
    record = _run_record(self)
    if _CLAIM_DIR and os.getpid() not in _waited:
        _waited.add(os.getpid())
        folder = Path(_CLAIM_DIR)
        (folder / f"looked-{os.getpid()}").touch()
        _wait_for(lambda: len(list(folder.glob("looked-*"))) >= _PARTIES)
    return record


def _publish_then_die(self, *args, **kwargs):
    published = _publish(self, *args, **kwargs)
    if _KILL_DIR and published[1] and not any(Path(_KILL_DIR).glob("killed-*")):
        (Path(_KILL_DIR) / f"killed-{os.getpid()}-{published[0].version}").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return published


def _add_progress_then_halt(self, epoch: dict) -> None:
    _add_progress(self, epoch)
    if _HALT_EPOCH and epoch.get("attempt") == 1 and epoch.get("epoch") == _HALT_EPOCH:
        _wait_for(lambda: False)  # until killed


inference.decode_image = _blocking_decode
Registry.publish = _publish_then_die
trainings.Training.run_record = _run_record_after_barrier
trainings.Training.add_progress = _add_progress_then_halt
