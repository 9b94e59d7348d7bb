"""Celery configuration shared by workers and the producer, and the producer's client.

The producer sends tasks *by name* through a bare Celery app: it never imports
the worker's task code (nor TensorFlow).
"""

from __future__ import annotations

import os
import ssl

from digitq.errors import BrokerError
from digitq.redisurl import redact
from digitq.settings import Settings

PREDICT_TASK = "digitq.predict_batch"
TRAIN_TASK = "digitq.train_model"


def _ssl_options(url: str) -> dict | None:
    if not url.startswith("rediss://") or "ssl_cert_reqs" in url:
        return None
    options: dict = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    for env, key in (("DIGITQ_REDIS_CA", "ssl_ca_certs"), ("DIGITQ_REDIS_CERT", "ssl_certfile"),
                     ("DIGITQ_REDIS_KEY", "ssl_keyfile")):
        if os.environ.get(env):
            options[key] = os.environ[env]
    return options


def celery_config(settings: Settings) -> dict:
    """Celery settings: JSON only, late acks, one message prefetched, no result backend."""
    from kombu import Queue

    config = {
        "broker_url": settings.redis_url,
        # Unacked messages come back after this long; far above any batch.
        # Bodies are JSON text already: kombu's default base64 around them would cost a
        # third more bytes and an encode/decode per message. Receivers follow each message's
        # own encoding, so messages from older producers still decode.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout, "body_encoding": "utf-8"},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Results go to files under the data dir, not to Redis.
        "task_ignore_result": True,
        "result_backend": None,
        # A batch is acked only once its result is committed; a worker killed
        # mid-batch gets it redelivered (commits are idempotent).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.predict_queue,
        # A plain `celery -A worker worker` consumes only `predict`: training runs on its
        # own worker (`-Q train -c 1`), so a long training never takes an inference process.
        "task_queues": (Queue(settings.predict_queue),),
        "task_create_missing_queues": True,
        "task_routes": {PREDICT_TASK: {"queue": settings.predict_queue},
                        TRAIN_TASK: {"queue": settings.train_queue}},
        "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        "worker_send_task_events": False,
    }
    tls = _ssl_options(settings.redis_url)
    if tls:
        config["broker_use_ssl"] = tls
    return config


def client_app(settings: Settings):
    """A Celery app that only sends tasks by name."""
    from celery import Celery

    app = Celery("digitq-producer", set_as_current=False)
    app.config_from_object(celery_config(settings))
    return app


_clients: dict[str, object] = {}
# A forked process (producer/senders.py) must not share its parent's sockets.
os.register_at_fork(after_in_child=_clients.clear)


def _connect(url: str, timeout: float):
    """A redis-py client for ``url``, with TLS options from the environment for ``rediss://``."""
    import redis

    options = dict(_ssl_options(url) or {})
    try:
        from redis._parsers import Encoder
        from redis.connection import PythonRespSerializer
    except ImportError:  # another redis-py layout: its default packer works, a little slower
        pass
    else:
        # hiredis parses replies fast, but its command packer copies every argument into one new
        # buffer: 5 ms of CPU to SET a 3 MB photo, against 1.3 ms for redis-py's own packer, which
        # sends large values as they are.
        options["command_packer"] = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
    # Replies are read 1 MiB at a time, not 64 KiB: fetching a batch of five 3 MB photos took 13 ms
    # instead of 17-22 (fewer reads, and fewer feeds of hiredis' buffer).
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                socket_read_size=1 << 20, **options)


def redis_client(settings: Settings, timeout: float = 10.0):
    """A Redis client for digitq's own keys (not the queue), one per URL and process."""
    client = _clients.get(settings.redis_url)
    if client is None:
        client = _clients[settings.redis_url] = _connect(settings.redis_url, timeout)
    return client


def ping(settings: Settings, timeout: float = 3.0) -> None:
    """Fail fast, with advice, when Redis is not reachable."""
    import redis

    try:
        client = _connect(settings.redis_url, timeout)
        client.ping()
        client.close()
    except redis.exceptions.AuthenticationError as e:
        raise BrokerError(f"Redis at {redact(settings.redis_url)} refused the password: {e}") from e
    except redis.exceptions.RedisError as e:
        raise BrokerError(
            f"cannot reach Redis at {redact(settings.redis_url)} ({e}). "
            "Start Redis or set DIGITQ_REDIS_URL / --redis-url."
        ) from e


def live_consumers(settings: Settings, queue: str, timeout: float = 1.0) -> list[str]:
    """Names of the live workers consuming ``queue`` (Celery remote control, so any host that reaches Redis).

    A :class:`BrokerError` when Redis cannot be asked."""
    from kombu.exceptions import KombuError
    from redis.exceptions import RedisError

    app = client_app(settings)
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except (KombuError, RedisError, OSError) as e:
        raise BrokerError(f"cannot ask Redis at {redact(settings.redis_url)} which workers run: {e}") from e
    finally:
        app.close()
    return sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues or []))


def eviction_policy(settings: Settings) -> tuple[str | None, str | None]:
    """Redis's ``maxmemory-policy`` and, unless it is ``noeviction``, a warning for the user.

    An evicting Redis can drop queued batches (and blobs, and the ledger) under memory
    pressure. Managed Redis often refuses ``CONFIG``: then nothing is said rather than guessed."""
    try:
        policy = redis_client(settings, timeout=3.0).config_get("maxmemory-policy").get("maxmemory-policy")
    except Exception:  # noqa: BLE001 - refused, unreachable or unparsable: we cannot tell
        return None, None
    if isinstance(policy, bytes):
        policy = policy.decode()
    if not policy or policy == "noeviction":
        return policy, None
    return policy, (f"Redis maxmemory-policy is {policy!r}: an evicting Redis can drop queued batches; "
                    "set it to noeviction (`CONFIG SET maxmemory-policy noeviction`, or your provider's setting)")
