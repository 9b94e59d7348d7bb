"""Celery configuration shared by workers and the producer, and the producer's client.

The producer sends tasks *by name* through a bare Celery app: it never imports
the worker's task code (nor TensorFlow).
"""

from __future__ import annotations

import os
import ssl

from digitq.bus.urls import is_sentinel, parse_sentinel, redact
from digitq.errors import BrokerError
from digitq.settings import Settings

PREDICT_TASK = "digitq.predict_batch"
TRAIN_TASK = "digitq.train_model"


def batch_repr(args: list) -> str:
    """How a batch message's arguments show in logs and Flower: the job and batch, not hundreds of entries
    (Celery's own summary of them cost about 0.5 ms a message)."""
    items = args[2] if len(args) > 2 else []
    count = f"{len(items.get('rows', []))} rows" if isinstance(items, dict) else f"{len(items)} files"
    return f"[{args[0]!r}, {args[1]!r}, <{count}>]"


#: Behind Sentinel, a lost master is replaced after the sentinels' ``down-after-milliseconds`` and an
#: election (a few seconds): a command, a publish, retries that long, each time asking the sentinels anew.
FAILOVER_RETRIES = 12  # at least ~6 s with the backoff below, at most ~10 s
FAILOVER_BACKOFF = (0.1, 1.0)  # base, cap (s): equal jitter, doubling
#: What Celery's publish retries behind Sentinel: 0.2, 0.7, then 1 s sleeps, about 11 s in all.
_SENTINEL_PUBLISH_RETRY = {"max_retries": 12, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def _ssl_options(url: str) -> dict | None:
    if not url.startswith(("rediss://", "sentinels://")) or "ssl_cert_reqs" in url:
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
        # own encoding, so base64 bodies decode as well.
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
    if is_sentinel(settings.redis_url):
        config["broker_url"] = parse_sentinel(settings.redis_url).kombu_url
        options = config["broker_transport_options"]
        options["master_name"] = settings.redis_master
        # A master that vanishes without closing its sockets (a host lost, not a process) must not hang a
        # publish: kombu's own advice for failover.
        options.update(socket_timeout=10, socket_connect_timeout=5)
        sentinel_kwargs = _sentinel_kwargs(settings, 5.0)
        options["sentinel_kwargs"] = sentinel_kwargs
        config["task_publish_retry_policy"] = dict(_SENTINEL_PUBLISH_RETRY)
    return config


def _sentinel_kwargs(settings: Settings, timeout: float) -> dict:
    """How to reach the sentinels themselves: their own password, and TLS as for the master."""
    options: dict = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if settings.sentinel_password:
        options["password"] = settings.sentinel_password
    tls = _ssl_options(settings.redis_url)
    if tls:
        options.update(ssl=True, **tls)
    return options


def client_app(settings: Settings):
    """A Celery app that only sends tasks by name."""
    from celery import Celery

    app = Celery("digitq-producer", set_as_current=False)
    app.config_from_object(celery_config(settings))
    return app


_clients: dict[str, object] = {}
# A forked process (producer/senders.py) must not share its parent's sockets.
os.register_at_fork(after_in_child=_clients.clear)


def _connect(settings: Settings, timeout: float, retry: bool = True):
    """A redis-py client for the settings' URL, with TLS options from the environment for ``rediss://`` and
    ``sentinels://``; behind Sentinel, a client of the current master (``retry``: through a failover)."""
    import redis

    url = settings.redis_url
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
    options.update(socket_timeout=timeout, socket_connect_timeout=timeout, socket_read_size=1 << 20)
    if not is_sentinel(url):
        if not retry:
            options["retry"] = None  # redis-py's default retries ten times
        return redis.Redis.from_url(url, **options)
    from redis.backoff import EqualJitterBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    if not settings.redis_master:
        raise BrokerError("DIGITQ_REDIS_MASTER is empty: give the name the sentinels monitor the master by "
                          "(`sentinel monitor NAME ...`; default mymaster)")
    parsed = parse_sentinel(url)
    if parsed.tls:
        options["ssl"] = True  # a SentinelManagedSSLConnection, with the ssl_* options above
    # Every new connection asks the sentinels for the master; a command that fails on a lost one is sent
    # again (redis-py's Retry) on a new connection, so to the master the sentinels promoted.
    base, cap = FAILOVER_BACKOFF
    options["retry"] = Retry(EqualJitterBackoff(cap=cap, base=base), FAILOVER_RETRIES if retry else 0)
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=_sentinel_kwargs(settings, timeout))
    return sentinel.master_for(settings.redis_master, redis_class=redis.Redis, db=parsed.db,
                               username=parsed.username, password=parsed.password, **options)


def redis_client(settings: Settings, timeout: float = 10.0, *, retry: bool = True):
    """A Redis client for digitq's own keys (not the queue), one per URL (and master) and process.

    ``retry=False``: one whose commands are never re-sent on another connection (see :mod:`digitq.bus.replication`)."""
    key = f"{settings.redis_url}|{settings.redis_master}|{retry}"
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = _connect(settings, timeout, retry)
    return client


def ping(settings: Settings, timeout: float = 3.0) -> None:
    """Fail fast, with advice, when Redis is not reachable."""
    import redis
    from redis.sentinel import MasterNotFoundError

    try:
        client = _connect(settings, timeout, retry=False)
        client.ping()
        client.close()
    except redis.exceptions.AuthenticationError as e:
        raise BrokerError(f"Redis at {redact(settings.redis_url)} refused the password: {e}") from e
    except MasterNotFoundError as e:
        raise BrokerError(
            f"no sentinel at {redact(settings.redis_url)} names a live master {settings.redis_master!r} ({e}). "
            "Check DIGITQ_REDIS_MASTER (`sentinel monitor NAME ...`), DIGITQ_SENTINEL_PASSWORD if the sentinels "
            "have a password, and that a failover is not under way."
        ) from e
    except redis.exceptions.RedisError as e:
        raise BrokerError(
            f"cannot reach Redis at {redact(settings.redis_url)} ({e}). "
            "Start Redis or set DIGITQ_REDIS_URL / --redis-url."
        ) from e


def live_consumers(settings: Settings, queue: str, timeout: float = 1.0) -> list[str]:
    """Names of the live workers consuming ``queue`` (Celery remote control, so any host that reaches Redis).

    A :class:`BrokerError` when Redis cannot be asked."""
    from kombu.exceptions import KombuError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError

    for attempt in (1, 2):
        app = client_app(settings)
        try:
            replies = app.control.inspect(timeout=timeout).active_queues() or {}
            break
        except RedisConnectionError as e:
            # kombu keeps a process's broker connections in a global pool, across Celery apps: after a failover
            # the first one taken from it may still point at the lost master. A read-only question: ask again.
            if attempt == 2:
                raise BrokerError(f"cannot ask Redis at {redact(settings.redis_url)} which workers run: {e}") from e
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
