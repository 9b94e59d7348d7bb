"""Model versions by content, through Redis: what a worker that cannot see the registry serves.

The producer, when it sends a job's batches, puts the pinned version's ``model.json``
under ``digitq:model:<its sha256>`` and its serving graph under ``digitq:artifact:<sha256
of the graph>``; each message names the version, its ``model.keras`` sha256 and the
``model.json`` sha256. A worker without the data dir fetches both once, checks
``model.json`` against the sha256 the message names and the graph against the checksum
``model.json`` records, and keeps them in ``<data dir>/cache/models/`` (bounded by
``DIGITQ_MODEL_CACHE_BYTES``), or in memory when it has no data dir to write. It then
loads them like any registry version: by content, so a promotion (a new version pinned
by the next job) is picked up without a restart, and nothing stale is ever served.

Only the ONNX graph travels: a worker without the registry never needs TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from digitq.bus import keys
from digitq.bus.broker import redis_client
from digitq.disk.storage import atomic_write
from digitq.errors import ModelError
from digitq.settings import Settings
from model.registry import MODEL_FILE, ONNX_FILE, ModelRef, sha256_bytes

log = logging.getLogger("digitq.model")
#: Kept this long after the last job that sent it (each send refreshes it); ``resume`` puts it back.
TTL_S = keys.MODEL_TTL_S
_SHA_LEN = 64


def _meta_key(sha256: str) -> str:
    return keys.model_meta(sha256)


def _artifact_key(sha256: str) -> str:
    return keys.model_artifact(sha256)


def _meta_bytes(ref: ModelRef) -> bytes:
    """``model.json`` in one canonical form: what its sha256 is taken of."""
    return json.dumps(ref.meta, separators=(",", ":"), sort_keys=True).encode()


def descriptor(ref: ModelRef) -> dict[str, str]:
    """What a message says about its model: the version, the sha256 of its ``model.keras`` and of its metadata."""
    return {"version": ref.version, "sha256": ref.sha256, "meta": sha256_bytes(_meta_bytes(ref))}


def publish(settings: Settings, ref: ModelRef) -> None:
    """Make ``ref`` fetchable by content (idempotent; the graph's megabyte is sent only when Redis lacks it).

    A version without an ONNX graph is put without one: a worker
    without the registry then says that it cannot serve it."""
    client = redis_client(settings)
    meta = _meta_bytes(ref)
    onnx_sha = ref.artifacts().get(ONNX_FILE)
    pipe = client.pipeline(transaction=False)
    pipe.set(_meta_key(sha256_bytes(meta)), meta, ex=TTL_S)
    if onnx_sha:
        pipe.expire(_artifact_key(onnx_sha), TTL_S)
    replies = pipe.execute()
    if onnx_sha and not replies[1]:  # EXPIRE found nothing: send it
        client.set(_artifact_key(onnx_sha), ref.read_verified(ONNX_FILE), ex=TTL_S)


class ArtifactCache:
    """Versions fetched through Redis, by what the message names: cached on disk under the data dir (bounded by
    ``DIGITQ_MODEL_CACHE_BYTES``), else in memory; the last :attr:`size` resolved are kept at hand."""

    size = 8

    def __init__(self) -> None:
        self._refs: OrderedDict[tuple[str, str, str], ModelRef] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, settings: Settings, model: dict) -> ModelRef:
        """The verified :class:`ModelRef` a message's ``model`` descriptor names, fetched on first use."""
        version, sha, meta_sha = (str(model.get(k, "")) for k in ("version", "sha256", "meta"))
        if len(sha) != _SHA_LEN or len(meta_sha) != _SHA_LEN or not version:
            raise ModelError(f"the message names no valid model ({model!r}); send the job again with "
                             "`digitq resume` from an up-to-date digitq")
        key = (version, sha, meta_sha)
        with self._lock:
            if key not in self._refs:
                self._refs[key] = self._load(settings, version, sha, meta_sha)
                while len(self._refs) > self.size:
                    self._refs.popitem(last=False)
            self._refs.move_to_end(key)
            return self._refs[key]

    def _load(self, settings: Settings, version: str, sha: str, meta_sha: str) -> ModelRef:
        directory = _cache_dir(settings, meta_sha)
        if directory is not None:
            ref = _from_disk(directory, version, sha, meta_sha)
            if ref is not None:
                os.utime(directory)  # recently used: evicted last
                return ref
        raw, meta, graph = _fetch(settings, version, sha, meta_sha)
        if directory is None:
            return _InMemoryRef(version=version, path=Path(f"<redis:{sha[:12]}>") / MODEL_FILE, sha256=sha,
                                meta=meta, graph=graph)
        _evict(directory.parent, settings.model_cache_bytes - len(graph))
        staging = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        atomic_write(staging / ONNX_FILE, graph)
        atomic_write(staging / "model.json", raw)
        try:
            staging.rename(directory)
        except OSError:  # another process of this host cached it first: the same bytes
            shutil.rmtree(staging, ignore_errors=True)
        log.info("model %s (sha256 %s...) fetched through Redis into %s", version, sha[:12], directory)
        return ModelRef(version=version, path=directory / MODEL_FILE, sha256=sha, meta=meta)


class _InMemoryRef(ModelRef):
    """A version held in memory (a worker with nothing to write under): reads its graph from there."""

    def __init__(self, *, graph: bytes, **kwargs) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_graph", graph)

    def read_verified(self, name: str = MODEL_FILE) -> bytes:
        if name != ONNX_FILE:
            raise ModelError(f"model {self.version}: only its ONNX graph travels through Redis, not {name}")
        return self._graph


def _cache_dir(settings: Settings, sha: str) -> Path | None:
    """Where this worker caches a version, or None when its data dir does not exist (nothing is created there)."""
    if not settings.data_dir.is_dir() or not os.access(settings.data_dir, os.W_OK):
        return None
    root = settings.data_dir / "cache" / "models"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return root / sha


def _from_disk(directory: Path, version: str, sha: str, meta_sha: str) -> ModelRef | None:
    try:
        raw = (directory / "model.json").read_bytes()
        meta = json.loads(raw)
    except (OSError, ValueError):
        return None
    ref = ModelRef(version=version, path=directory / MODEL_FILE, sha256=sha, meta=meta)
    try:
        _check(ref, raw, sha, meta_sha, ref.read_verified(ONNX_FILE))
    except ModelError as e:  # corrupted on disk: fetch it again
        log.warning("cached model %s at %s is damaged (%s); fetching it again", version, directory, e)
        shutil.rmtree(directory, ignore_errors=True)
        return None
    return ref


def _fetch(settings: Settings, version: str, sha: str, meta_sha: str) -> tuple[bytes, dict, bytes]:
    """``model.json`` (as fetched, and parsed) and the ONNX graph, verified."""
    client = redis_client(settings)
    raw = client.get(_meta_key(meta_sha))
    if raw is None:
        raise ModelError(f"model {version} (sha256 {sha[:12]}...) is not in Redis (it expired, or Redis lost it); "
                         "`digitq resume JOB` sends it again")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ModelError(f"model {version}: its metadata in Redis is not JSON ({e})") from e
    onnx_sha = (meta.get("artifacts") or {}).get(ONNX_FILE)
    if not onnx_sha:
        raise ModelError(f"model {version} has no {ONNX_FILE} (published without one): only a worker that "
                         "sees the data dir can serve it; export it (`python -m model.training.export`) or promote "
                         "a newer one")
    graph = client.get(_artifact_key(onnx_sha))
    if graph is None:
        raise ModelError(f"the ONNX graph of model {version} is not in Redis; `digitq resume JOB` sends it again")
    _check(ModelRef(version=version, path=Path(MODEL_FILE), sha256=sha, meta=meta), raw, sha, meta_sha, graph)
    return raw, meta, graph


def _check(ref: ModelRef, raw_meta: bytes, sha: str, meta_sha: str, graph: bytes) -> None:
    """The metadata is the one the message names (by sha256), of the model it names, and the graph is the one
    it records."""
    if sha256_bytes(raw_meta) != meta_sha or ref.meta.get("sha256") != sha:
        raise ModelError(f"model {ref.version}: its metadata fails its checksum (expected sha256 {meta_sha[:12]}... "
                         f"for model {sha[:12]}...); it was modified or corrupted")
    expected = ref.artifacts().get(ONNX_FILE)
    actual = sha256_bytes(graph)
    if actual != expected:
        raise ModelError(f"model {ref.version}: the ONNX graph fetched fails its checksum (sha256 {actual[:12]}..., "
                         f"expected {str(expected)[:12]}...); it was modified or corrupted in Redis")


def _evict(root: Path, budget: int) -> None:
    """Remove the least recently used cached versions until the rest fit in ``budget`` bytes."""
    entries = []
    for child in root.iterdir():
        if child.name.startswith("."):
            continue
        try:
            size = sum(f.stat().st_size for f in child.iterdir())
            entries.append((child.stat().st_mtime, size, child))
        except OSError:
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, child in sorted(entries):
        if total <= budget:
            break
        shutil.rmtree(child, ignore_errors=True)
        total -= size
