"""The one error hierarchy of digitq.

Every error a user can cause or fix is a :class:`DigitqError`; its message says
what went wrong and what to do about it. The CLI prints it without a traceback.
"""

from __future__ import annotations


class DigitqError(Exception):
    """Base class: an error with a message meant for the user."""

    exit_code = 1


class ConfigError(DigitqError):
    """A setting or option has an invalid value."""

    exit_code = 2


class DataError(DigitqError):
    """A dataset (MNIST files, an image folder) is missing or malformed."""


class ModelError(DigitqError):
    """A model version is unknown, unreadable or fails its checksum."""


class JobError(DigitqError):
    """A job is unknown, or its files on disk are inconsistent."""


class JobNotFound(JobError):
    """No job of that id under this data dir (a wrong DIGITQ_DATA_DIR, or storage not shared)."""


class TrainingError(DigitqError):
    """A training is unknown, cannot run, or cannot be retried."""


class TrainingNotFound(TrainingError):
    """No training of that id under this data dir (a wrong DIGITQ_DATA_DIR, or storage not shared)."""


class BrokerError(DigitqError):
    """Redis (the broker) cannot be reached or refused a command."""


class ImageError(DigitqError):
    """One image cannot be decoded; it becomes an error row, never a failed batch."""


class WaitTimeout(DigitqError):
    """A ``--timeout`` ran out before the job finished."""

    exit_code = 3
