"""A Celery app for tests whose decoder misbehaves on marked files: ``celery -A sabotage worker``.

Only tests start it (with ``tests/`` on PYTHONPATH). A file whose bytes hold
``DIGITQ_TEST_KILL_MARKER`` kills the pool process (``os._exit``), as a crashing native
decoder would; one holding ``DIGITQ_TEST_SLOW_MARKER`` takes a minute to decode.
"""

import os
import time

from worker import inference
from worker.application import app

__all__ = ["app"]  # what `celery -A sabotage` runs

_KILL = os.environ.get("DIGITQ_TEST_KILL_MARKER", "").encode()
_SLOW = os.environ.get("DIGITQ_TEST_SLOW_MARKER", "").encode()
_decode = inference.decode_image


def _sabotaged_decode(data: bytes, *args, **kwargs):
    if _KILL and _KILL in data:
        os._exit(70)
    if _SLOW and _SLOW in data:
        time.sleep(60)
    return _decode(data, *args, **kwargs)


inference.decode_image = _sabotaged_decode
