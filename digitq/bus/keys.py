"""Every Redis key digitq writes: one named family each, with its lifetime and its writer.

Celery's own keys (the queues, ``unacked``, results) are kombu's and not listed here. Every other key
digitq reads or writes is built by a function of this module, so a key's shape is typed once.

==========================================  ==========================  ===================================
key                                         lifetime                    written by (and what for)
==========================================  ==========================  ===================================
``digitq:blob:<job>:<batch>:<index>``       :data:`BLOB_TTL_S`          the producer, a large file's bytes
                                                                        (:mod:`digitq.batch.blobs`); freed
                                                                        at commit
``digitq:outbox:jobs``                      none (members expire with   the producer: jobs with message
                                            their copies)               copies (:mod:`digitq.batch.outbox`)
``digitq:outbox:<job>``                     :data:`OUTBOX_TTL_S`        the producer: a copy of each batch
                                                                        message, for the sweeper to re-send
``digitq:job:<job>:committed``              :data:`LEDGER_TTL_S`        the committer: batches committed
                                                                        (:mod:`digitq.batch.ledger`)
``digitq:job:<job>:stalled``                :data:`STALL_TTL_S`         a worker that cannot see the job
                                                                        (:mod:`digitq.batch.stalls`)
``digitq:job:<job>:batch:<b>:deliveries``   :data:`DELIVERIES_TTL_S`    the worker: deliveries and deaths
                                                                        (:mod:`digitq.batch.quarantine`)
``digitq:job:<job>:batch:<b>:alive:<who>``  :data:`ALIVE_TTL_MS` (ms,   a careful delivery while it runs
                                            refreshed)                  (:mod:`digitq.batch.quarantine`)
``digitq:training:<id>:claim``              the lease (refreshed)       the training's run
                                                                        (:mod:`digitq.disk.training_requests`)
``digitq:sweeper:<data dir id>``            the pass's lease            a worker's sweeper thread
                                                                        (``worker/sweeper.py``)
``digitq:worker:<hostname>:models``         :data:`SERVED_TTL_S`        a worker after each batch: versions
                                                                        it served (``digitq workers``)
``digitq:model:<sha256>``                   :data:`MODEL_TTL_S`         the producer: a version's metadata
                                                                        (``model/serving/artifacts.py``)
``digitq:artifact:<sha256>``                :data:`MODEL_TTL_S`         the producer: a version's ONNX graph
``digitq:replication:probe``                none (one small value)      any writer that waits for a replica
                                                                        (:mod:`digitq.bus.replication`)
==========================================  ==========================  ===================================
"""

from __future__ import annotations

_DAY_S = 24 * 3600

#: A large file's bytes outlive an abandoned job this long at most.
BLOB_TTL_S = _DAY_S
#: A batch message's copy, refreshed with each batch sent.
OUTBOX_TTL_S = _DAY_S
#: The committed-batches set of a job.
LEDGER_TTL_S = 7 * _DAY_S
#: A stall record lapses when no worker reports it again.
STALL_TTL_S = 120
#: A batch's delivery count and death marks.
DELIVERIES_TTL_S = 7 * _DAY_S
#: A careful delivery's alive key, refreshed while it runs.
ALIVE_TTL_MS = 10_000
#: The versions a worker served, for ``digitq workers``.
SERVED_TTL_S = _DAY_S
#: A version published for stateless workers, refreshed by each job that sends it.
MODEL_TTL_S = 30 * _DAY_S

_PREFIX = "digitq:"


def blob(job_id: str, batch: int, index: int) -> str:
    """A large file's bytes, beside its batch message."""
    return f"{_PREFIX}blob:{job_id}:{batch}:{index}"


def outbox_jobs() -> str:
    """The set of jobs that have message copies."""
    return f"{_PREFIX}outbox:jobs"


def outbox(job_id: str) -> str:
    """A job's message copies, one hash field per batch."""
    return f"{_PREFIX}outbox:{job_id}"


def committed(job_id: str) -> str:
    """The set of a job's committed batches (the ledger)."""
    return f"{_PREFIX}job:{job_id}:committed"


def stalled(job_id: str) -> str:
    """Why a worker cannot run a job."""
    return f"{_PREFIX}job:{job_id}:stalled"


def deliveries(job_id: str, batch: int | str) -> str:
    """A batch's delivery count and where deliveries died (``*`` for a pattern)."""
    return f"{_PREFIX}job:{job_id}:batch:{batch}:deliveries"


def alive(job_id: str, batch: int, token: str) -> str:
    """A careful delivery's heartbeat."""
    return f"{_PREFIX}job:{job_id}:batch:{batch}:alive:{token}"


def job_pattern(job_id: str) -> str:
    """Every key of a job (``KEYS``/``SCAN`` pattern)."""
    return f"{_PREFIX}job:{job_id}:*"


def training_claim(training_id: str) -> str:
    """Which run of a training holds it (a lease)."""
    return f"{_PREFIX}training:{training_id}:claim"


def training_pattern(training_id: str) -> str:
    """Every key of a training (``KEYS``/``SCAN`` pattern)."""
    return f"{_PREFIX}training:{training_id}:*"


def sweeper_lock(data_dir_id: str) -> str:
    """The lock of a data dir's sweeper pass."""
    return f"{_PREFIX}sweeper:{data_dir_id}"


def served_models(hostname: str) -> str:
    """The versions a worker served, and when last."""
    return f"{_PREFIX}worker:{hostname}:models"


def model_meta(sha256: str) -> str:
    """A published version's ``model.json``, by the sha256 of its canonical form."""
    return f"{_PREFIX}model:{sha256}"


def model_artifact(sha256: str) -> str:
    """A published version's serving graph, by its sha256."""
    return f"{_PREFIX}artifact:{sha256}"


def replication_probe() -> str:
    """The small write a replica's acknowledgement is waited for."""
    return f"{_PREFIX}replication:probe"
