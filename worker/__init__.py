"""Celery workers for digitq: ``celery -A worker worker``.

Importing this package does not import TensorFlow; each worker process loads
the model on its first batch, after the fork, and keeps it.
"""

from worker.application import app

__all__ = ["app"]
