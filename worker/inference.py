"""Batch inference as plain functions: decode each file on its own, predict, commit.

No Celery here, so it can be tested and reused directly.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from digitq.batch import blobs, commit
from digitq.batch.message import BatchMessage, Entry, Kind, Outcome
from digitq.batch.quarantine import Delivery
from digitq.bus import failover, replication
from digitq.disk import scores
from digitq.disk.files import read_file
from digitq.disk.jobs import Job, Row
from digitq.disk.paths import unescape_path
from digitq.errors import ImageError, JobError
from digitq.settings import Settings
from model.registry import Registry
from model.serving.artifacts import ArtifactCache
from model.serving.preprocess import decode_image
from model.serving.runtime import ModelCache, Predictor

#: One cache per process, filled after the fork, on the first batch.
CACHE = ModelCache()
#: Versions fetched through Redis by a worker that cannot see the registry (one per process).
ARTIFACTS = ArtifactCache()
log = logging.getLogger("digitq.worker")


def read_entry(entry: Entry, max_bytes: int, fetched: Mapping[str, bytes | None] | None = None) -> bytes:
    """The image bytes of one message entry: a blob fetched from Redis, inline base64 data, or a path
    on shared storage."""
    if entry.kind is Kind.BLOB:
        data = (fetched or {}).get(entry.value)
        if data is None:
            raise ImageError("image data missing from the batch's blobs")
        return data
    if entry.kind is Kind.DATA:
        try:
            return base64.b64decode(str(entry.value), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"corrupt message data: {e}") from e
    if entry.kind is not Kind.REF:
        raise ImageError("message entry has neither data nor a path")
    try:
        data = read_file(unescape_path(entry.value), max_bytes + 1)
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from e
    if len(data) > max_bytes:
        raise ImageError(f"file is over the {max_bytes} byte limit (DIGITQ_MAX_FILE_BYTES)")
    return data


def predict_entries(predictor: Predictor, entries: Sequence[Entry], max_bytes: int,
                    fetched: Mapping[str, bytes | None] | None = None,
                    before: Callable[[int], str | None] | None = None) -> list[Row]:
    """One row per entry, in order; an entry that fails to decode becomes an error row.

    ``before(index)``, when given, is called before each file is read; a string it
    returns becomes that file's error row instead (see :mod:`digitq.batch.quarantine`). It is
    called once more with ``len(entries)`` before the prediction, which is no file's fault."""
    rows: list[Row | None] = []
    images, slots = [], []
    for index, entry in enumerate(entries):
        path = entry.path
        if entry.kind is Kind.ERROR:
            rows.append(Row(path, error=entry.error, lasting=False))
            continue
        if entry.kind is Kind.SCORED:  # these bytes were scored by this version before (scan --incremental)
            prediction, confidence, error = entry.value
            rows.append(Row(path, None if prediction is None else int(prediction),
                            None if confidence is None else float(confidence), error, digest=entry.digest))
            continue
        refused = before(index) if before else None
        if refused:
            rows.append(Row(path, error=refused, lasting=False))
            continue
        try:
            data = read_entry(entry, max_bytes, fetched)
        except ImageError as e:
            rows.append(Row(path, error=str(e), lasting=False))
            continue
        digest = scores.digest(data)  # of the very bytes decoded: what the row, and the index, are bound to
        try:
            images.append(decode_image(data))
        except ImageError as e:  # the bytes themselves: the same error every time
            rows.append(Row(path, error=str(e), digest=digest))
            continue
        except Exception as e:  # a bug or an exotic file must cost one row, not the batch
            rows.append(Row(path, error=f"cannot process image: {type(e).__name__}: {e}", lasting=False,
                            digest=digest))
            continue
        slots.append((len(rows), digest))
        rows.append(None)
    if before:
        before(len(entries))
    if images:
        probs = predictor.predict(np.stack(images))
        for (slot, digest), p in zip(slots, probs, strict=True):
            digit = int(np.argmax(p))
            rows[slot] = Row(entries[slot].path, digit, round(float(p[digit]), 6), digest=digest)
    return [r for r in rows if r is not None]


def _guarded_rows(delivery: Delivery, predictor: Predictor, entries: Sequence[Entry],
                  max_bytes: int, fetched: Mapping[str, bytes | None]) -> list[Row]:
    """The batch's rows, processed carefully when it was delivered before (a process died on it)."""
    where = f"job {delivery.job_id} batch {delivery.batch}"
    if delivery.exhausted:
        log.error("%s: given up after %d deliveries, every file an error row", where, delivery.count)
        error = f"batch given up: worker processes died on it {delivery.count - 1} times, not on any one file"
        return [Row(e.path, error=e.error or error, lasting=False) for e in entries]
    if not delivery.careful:
        return predict_entries(predictor, entries, max_bytes, fetched)
    for index in (i for i in delivery.quarantined() if i < len(entries)):
        log.error("%s: %s killed %d worker processes; quarantined as an error row", where,
                  entries[index].path, delivery.deaths[index])
    log.warning("%s: delivery %d, processing file by file to find what killed the last one", where, delivery.count)
    try:
        return predict_entries(predictor, entries, max_bytes, fetched, before=delivery.before)
    except BaseException:
        delivery.interrupted()
        raise


def run_batch(settings: Settings, message: BatchMessage, cache: ModelCache = CACHE,
              send: Callable[[str, list], None] | None = None) -> dict:
    """Predict one batch of a job with its pinned model; commit it (:mod:`digitq.batch.commit`) when this worker
    sees the job's data dir, else hand the outcome in through ``send(queue, args)`` to a worker that does.

    A message without a :class:`JobContext` is run only where its job is visible."""
    started = time.time()
    job_id, batch, entries, context = message.job_id, message.batch, message.entries, message.context
    local = commit.sees(settings, context)
    if not local and send is None:
        raise JobError(f"job {job_id} lives in another data dir, and this caller cannot hand results in")
    job = Job.load(settings.jobs_dir, job_id) if local else None
    keys = message.blob_keys
    if job is not None and job.result_path(batch).exists():  # committed: its first result stands
        return {"job_id": job_id, "batch": batch, "duplicate": True,
                "done": commit.discard(settings, job, batch, keys), "pid": os.getpid()}
    fetched = dict(zip(keys, failover.ride(settings, lambda: blobs.get(settings, keys), "fetching blobs"), strict=True))
    missing = [k for k, v in fetched.items() if v is None]
    if missing:
        if commit.already_committed(settings, job, job_id, batch):  # a late duplicate: committed, blobs freed
            log.warning("job %s batch %d: a delivery discarded, a duplicate: the batch is committed (the ledger says "
                        "so) and its blobs are freed", job_id, batch)
            if job is None and send is not None and context is not None and context.collect:
                try:  # counted where the job is seen; a lost notice costs a count, never a row
                    commit.hand_in_duplicate(send, context, job_id, batch)
                except Exception as e:  # noqa: BLE001 - the batch is committed whatever happens here
                    log.warning("job %s batch %d: could not hand the duplicate in to be counted: %s", job_id, batch, e)
            return {"job_id": job_id, "batch": batch, "duplicate": True, "done": job.is_done() if job else None,
                    "pid": os.getpid()}
        raise JobError(f"the image data of {len(missing)} file(s) in batch {batch} is no longer in Redis (kept "
                       f"{blobs.TTL_S // 3600} h; or Redis restarted); `digitq resume {job_id}` sends it again")
    if job is not None:
        ref = Registry(settings.models_dir).resolve(job.model_version)
    else:
        ref = failover.ride(settings, lambda: ARTIFACTS.get(settings, context.model),  # type: ignore[union-attr]
                            "fetching the model")
    delivery = Delivery.begin(settings, job_id, batch)
    rows = _guarded_rows(delivery, cache.get(ref), entries, settings.max_file_bytes, fetched)
    outcome = Outcome(job_id, batch, rows, ref.version, started, index=commit.index_entries(entries, rows), blobs=keys)
    if job is not None:
        done = commit.commit(settings, job, outcome, committed=delivery.finish)
    else:
        # Acked only once a replica has the outcome too (where there is one): a failover cannot lose it. A master
        # lost before it confirms: the outcome is handed in again on the new master (a duplicate is harmless).
        replication.durably(settings, lambda: commit.hand_in(send, context, outcome),  # type: ignore[arg-type]
                            f"handing in batch {batch} of job {job_id}")
        delivery.finish()
        done = None  # the collector knows
    return {"job_id": job_id, "batch": batch, "rows": len(rows), "errors": sum(1 for r in rows if r.error),
            "done": done, "pid": os.getpid(), "model_version": ref.version, "stateless": job is None}
