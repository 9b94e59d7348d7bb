"""Large image files travel beside their task message, as binary Redis values (a claim check).

A 3 MB phone photo inside a JSON message costs base64, then JSON inside JSON,
on both sides: about 70 ms of CPU per photo before anything is decoded. Stored
as its own Redis value it costs two memory copies. Small files (MNIST digits,
most scans) stay inline, where one message carries hundreds of them.

The producer stores a batch's large files before it sends the batch; the worker
fetches them, and deletes them once the batch's result is committed. A duplicate
delivery after that finds them gone and the result already there. Values expire
after :data:`TTL_S` in any case, so an abandoned job cannot fill Redis; a batch
whose values are gone is marked failed, and ``digitq resume`` sends it again.
Behind Sentinel, :func:`put` returns once a replica has them too (a failover would
otherwise fail the batch), see :mod:`digitq.bus.replication`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from digitq.bus import keys
from digitq.bus.broker import redis_client
from digitq.bus.replication import durably
from digitq.settings import Settings

#: Files larger than this travel as blobs; smaller ones inline, base64 in the message.
INLINE_MAX = 16 * 1024
TTL_S = keys.BLOB_TTL_S


def key(job_id: str, batch: int, index: int) -> str:
    """The Redis key of one file of one batch."""
    return keys.blob(job_id, batch, index)


def put(settings: Settings, blobs: Mapping[str, bytes]) -> None:
    """Store blobs (key -> bytes), each with the TTL, in one round trip; where the master has a replica,
    return once it has them."""
    if not blobs:
        return

    def write() -> None:
        pipe = redis_client(settings).pipeline(transaction=False)
        for name, data in blobs.items():
            pipe.set(name, data, ex=TTL_S)
        pipe.execute()

    durably(settings, write)


def get(settings: Settings, keys: Sequence[str]) -> list[bytes | None]:
    """The blobs' bytes, None for any that expired or was deleted."""
    return list(redis_client(settings).mget(keys)) if keys else []


def delete(settings: Settings, keys: Sequence[str]) -> None:
    """Free the blobs (``UNLINK``: Redis frees a photo's megabytes in a background thread)."""
    if keys:
        redis_client(settings).unlink(*keys)
