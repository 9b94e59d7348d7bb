"""One settings object, read from the environment (``DIGITQ_*``).

CLI options mirror these variables with ``envvar=``, so a flag and a variable
always mean the same thing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from digitq.bus.urls import normalise
from digitq.errors import ConfigError

MiB = 1024 * 1024


def _number(name: str, default, minimum, kind: type, what: str):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {what}; unset it or give e.g. {default}") from None
    if not value >= minimum:  # also refuses NaN
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _int(name: str, default: int, minimum: int = 1) -> int:
    return _number(name, default, minimum, int, "a whole number")


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    return _number(name, default, minimum, float, "a number")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


PROMOTE_CHOICES = ("auto", "always", "never")
JPEG_READER_CHOICES = ("on", "off")


def jpeg_reader_setting() -> str:
    """``DIGITQ_JPEG_READER`` alone: decoding reads it at import, where a bad value of another setting
    (a Redis URL, say) must not stop ``import model.serving.preprocess`` in evaluate, export or training."""
    return _choice("DIGITQ_JPEG_READER", "on", JPEG_READER_CHOICES)


def available_cores() -> int:
    """Cores this process may run on (honours CPU affinity / cgroups pinning): what worker thread
    pools and the scan's default senders are sized from."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Everything digitq reads from its environment."""

    redis_url: str = "redis://localhost:6379/0"
    #: The Sentinel master's name, for a ``sentinel://`` Redis URL.
    redis_master: str = "mymaster"
    #: The sentinels' own password (their ``requirepass``), when they have one; the URL's is the master's.
    sentinel_password: str | None = None
    #: Behind Sentinel, how long every role keeps trying through a failover (the sentinels'
    #: down-after-milliseconds, the election, with room to spare) before it fails with the ``resume`` advice.
    failover_s: float = 60.0
    data_dir: Path = Path("digitq-data")
    mnist: str | None = None
    batch_size: int = 512  # fewer messages and commits; ~150 KB a message for MNIST-sized PNGs
    max_in_flight: int = 50_000
    max_in_flight_bytes: int = 128 * MiB
    max_file_bytes: int = 20 * MiB
    max_batch_bytes: int = 16 * MiB
    #: Processes that send a scan's batches (producer/senders.py); 0: two where there are two cores.
    senders: int = 0
    visibility_timeout: int = 3600
    #: A job with no commit for this long, whose missing batches nobody queues or holds, is stalled.
    stall_after: int = 120
    predict_queue: str = "predict"
    train_queue: str = "train"
    #: Results of stateless workers travel on ``<collect_queue>.<data dir id>`` to a worker that sees that data dir.
    collect_queue: str = "collect"
    #: Model artifacts a worker fetched through Redis are cached under ``<data dir>/cache/models`` up to this size.
    model_cache_bytes: int = 512 * MiB
    #: The promotion gate: a candidate may trail production by this many percentage points.
    promote_tolerance: float = 0.1
    #: Images per shift of the robustness suite a training scores both versions on (model.json, the gate):
    #: at 1,000 a per-shift accuracy near 98% is +/-0.44 points (one standard error), the paired
    #: candidate-minus-production difference less; about 20 s of a training on 2 cores.
    suite_limit: int = 1000
    #: Celery beat's periodic retraining: a five-field crontab (UTC), or None for none.
    retrain_schedule: str | None = None
    retrain_data: tuple[str, ...] = ()
    retrain_epochs: int = 20
    retrain_promote: str = "auto"
    #: "off": libjpeg decodes every JPEG, the C reader of phone photos (model/serving/jpegdc.c) none (README, Security).
    jpeg_reader: str = "on"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read ``DIGITQ_*`` variables; keyword arguments that are not None win."""
        env = os.environ
        settings = cls(
            redis_url=normalise(env.get("DIGITQ_REDIS_URL") or cls.redis_url),
            redis_master=(env.get("DIGITQ_REDIS_MASTER") or cls.redis_master).strip(),
            sentinel_password=env.get("DIGITQ_SENTINEL_PASSWORD") or None,
            failover_s=_float("DIGITQ_FAILOVER_S", cls.failover_s),
            data_dir=Path(env.get("DIGITQ_DATA_DIR") or cls.data_dir).expanduser(),
            mnist=env.get("DIGITQ_MNIST") or None,
            batch_size=_int("DIGITQ_BATCH_SIZE", cls.batch_size),
            max_in_flight=_int("DIGITQ_MAX_IN_FLIGHT", cls.max_in_flight),
            max_in_flight_bytes=_int("DIGITQ_MAX_IN_FLIGHT_BYTES", cls.max_in_flight_bytes, minimum=MiB),
            max_file_bytes=_int("DIGITQ_MAX_FILE_BYTES", cls.max_file_bytes),
            max_batch_bytes=_int("DIGITQ_MAX_BATCH_BYTES", cls.max_batch_bytes, minimum=64 * 1024),
            senders=_int("DIGITQ_SENDERS", cls.senders, minimum=0),
            visibility_timeout=_int("DIGITQ_VISIBILITY_TIMEOUT", cls.visibility_timeout, minimum=60),
            stall_after=_int("DIGITQ_STALL_AFTER", cls.stall_after),
            model_cache_bytes=_int("DIGITQ_MODEL_CACHE_BYTES", cls.model_cache_bytes, minimum=MiB),
            promote_tolerance=_float("DIGITQ_PROMOTE_TOLERANCE", cls.promote_tolerance),
            suite_limit=_int("DIGITQ_SUITE_LIMIT", cls.suite_limit),
            retrain_schedule=(env.get("DIGITQ_RETRAIN_SCHEDULE") or "").strip() or None,
            retrain_data=tuple(p for p in (env.get("DIGITQ_RETRAIN_DATA") or "").split(os.pathsep) if p),
            retrain_epochs=_int("DIGITQ_RETRAIN_EPOCHS", cls.retrain_epochs),
            retrain_promote=_choice("DIGITQ_RETRAIN_PROMOTE", cls.retrain_promote, PROMOTE_CHOICES),
            jpeg_reader=jpeg_reader_setting(),
        )
        known = {f.name for f in fields(cls)}
        changes = {k: v for k, v in overrides.items() if v is not None and k in known}
        if "redis_url" in changes:
            changes["redis_url"] = normalise(str(changes["redis_url"]))
        if "data_dir" in changes:
            changes["data_dir"] = Path(changes["data_dir"]).expanduser()
        return replace(settings, **changes)

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def trainings_dir(self) -> Path:
        return self.data_dir / "trainings"

    def collect_route(self, dir_id: str) -> str:
        """The queue that carries results back to the workers that see the data dir ``dir_id``."""
        return f"{self.collect_queue}.{dir_id}"
