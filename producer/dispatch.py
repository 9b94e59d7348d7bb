"""Create jobs from a scan and feed their batches to Redis, with backpressure.

Plain functions over :class:`digitq.disk.jobs.Job`; the CLI is a thin layer on top.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from digitq.batch import blobs, ledger, outbox
from digitq.batch.commit import commit
from digitq.batch.message import BatchMessage, Entry, JobContext, Kind, Outcome
from digitq.bus import failover
from digitq.bus.broker import PREDICT_TASK, batch_repr, client_app, ping, redact
from digitq.bus.replication import durably
from digitq.disk import scores
from digitq.disk.files import read_file
from digitq.disk.jobs import FileEntry, Job, Row, create_job
from digitq.disk.paths import escape_path, unescape_path
from digitq.disk.storage import data_dir_id
from digitq.errors import BrokerError, ConfigError, JobError
from digitq.settings import Settings
from model.registry import Registry
from model.serving import artifacts
from producer.scan import Found

#: Room kept in a message for JSON framing and the path of each file.
_ENTRY_OVERHEAD = 512
#: Most bytes a message carries inline (base64 and all): Redis and JSON stay quick below it.
_MESSAGE_BUDGET = 8 * 1024 * 1024
Progress = Callable[[int], None]


class Enqueued(NamedTuple):
    """What :func:`enqueue` did with the files of the batches it was given."""

    sent: int  # images sent to the workers to decode
    from_index: int  # images whose rows came from the content-hash index (incremental jobs)


def plan_batches(files: Iterable[Found], settings: Settings, *, batch_size: int,
                 by_path: bool) -> tuple[Iterator[FileEntry], list[int]]:
    """Manifest entries and batch sizes: at most ``batch_size`` files, about ``max_batch_bytes``
    of image data (also with ``--by-path``: it bounds a batch's work, so that photos spread over
    processes), and (bytes inline in the message) about 8 MiB of message; a bigger file goes alone.

    The entries are a stream; the sizes list fills in as it is consumed.
    """
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    sizes: list[int] = []

    def entries() -> Iterator[FileEntry]:
        count = weight = inline = 0
        for f in files:
            error = None
            cost, message = 0, _ENTRY_OVERHEAD
            if f.size > settings.max_file_bytes:
                error = (f"file is {f.size} bytes, over the {settings.max_file_bytes} byte limit "
                         "(DIGITQ_MAX_FILE_BYTES)")
            else:
                cost = f.size  # the work a batch holds, wherever its bytes travel
                message += f.size * 4 // 3 if not by_path and f.size <= blobs.INLINE_MAX else 0
            if count and (count >= batch_size or weight + cost > settings.max_batch_bytes
                          or inline + message > _MESSAGE_BUDGET):
                sizes.append(count)
                count = weight = inline = 0
            yield FileEntry(f.path, f.size, error)
            count += 1
            weight += cost
            inline += message
        if count:
            sizes.append(count)

    return entries(), sizes


def new_job(settings: Settings, files: Iterable[Found], *, sources: Sequence[str], skipped: int = 0,
            batch_size: int | None = None, model_version: str | None = None, by_path: bool = False,
            out: str | None = None, incremental: bool = False) -> Job:
    """Pin the model version and write the job's manifest (nothing is sent yet).

    ``incremental`` records the digest of every file's bytes in the manifest, so that
    :func:`enqueue` sends only what the pinned version has not scored (:mod:`digitq.disk.scores`)."""
    ref = Registry(settings.models_dir).resolve(model_version)
    entries, sizes = plan_batches(files, settings, batch_size=batch_size or settings.batch_size, by_path=by_path)
    if incremental:
        _repair_index(settings)
        entries = _with_digests(entries, settings.max_file_bytes)
    try:
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {settings.jobs_dir} ({e.strerror or e}); set DIGITQ_DATA_DIR / --data-dir "
                          "to a writable directory") from e
    data_dir_id(settings.data_dir)  # the identity workers compare theirs with (`digitq workers`)
    return create_job(settings.jobs_dir, entries, sizes, model_version=ref.version, sources=sources,
                      by_path=by_path, out=os.path.abspath(out) if out else None, skipped=skipped,
                      incremental=incremental)


def _with_digests(entries: Iterable[FileEntry], limit: int) -> Iterator[FileEntry]:
    """The entries with the digest of each file's bytes (read now; an unreadable file is an error)."""
    for entry in entries:
        if entry.error:
            yield entry
            continue
        try:
            data = read_file(source_path(None, entry), limit + 1, entry.size)
        except OSError as e:
            yield FileEntry(entry.path, entry.size, f"cannot read file: {e.strerror or e}")
            continue
        yield FileEntry(entry.path, entry.size, None, scores.digest(data))


def submit(settings: Settings, paths: Sequence[str], *, send: bool = True, **options: object) -> Job:
    """Scan ``paths`` into a new job and (unless ``send`` is False) send all its batches.

    ``options`` are those of :func:`new_job`. The CLI's ``scan`` does the same
    steps itself, to show progress and warnings between them.
    """
    from producer.scan import find_images

    found = find_images(paths)
    job = new_job(settings, found.files, sources=list(paths), skipped=found.skipped, **options)
    found.files.clear()
    if send:
        enqueue(settings, job)
    return job


def source_path(job: Job | None, entry: FileEntry) -> bytes:
    """The file's path as bytes: relative paths are relative to the scan's directory (this one, before
    the job exists)."""
    raw = unescape_path(entry.path)
    if os.path.isabs(raw) or job is None:
        return raw
    return os.path.join(os.fsencode(job.header["cwd"]), raw)


def message_entries(settings: Settings, job: Job, batch: int, files: Sequence[FileEntry],
                    scored: Mapping[str, scores.Score] | None = None) -> list[Entry]:
    """The entries of one batch's message: small files inline (base64), large ones stored as blobs
    in Redis first (see :mod:`digitq.batch.blobs`), or absolute paths with ``--by-path``. A file whose
    digest is in ``scored`` carries its score instead of its bytes."""
    out, large = [], {}
    for index, entry in enumerate(files):
        out.append(_entry(settings, job, batch, index, entry, scored, large))
    blobs.put(settings, large)
    return out


def _entry(settings: Settings, job: Job, batch: int, index: int, entry: FileEntry,
           scored: Mapping[str, scores.Score] | None, large: dict[str, bytes]) -> Entry:
    """One file's entry; a large file's bytes go into ``large`` (stored as a blob by the caller)."""
    if entry.error:
        return Entry(Kind.ERROR, entry.path, entry.error, entry.digest)
    if scored and entry.digest in scored:
        return Entry(Kind.SCORED, entry.path, tuple(scored[entry.digest]), entry.digest)
    if job.header.get("by_path"):
        return Entry(Kind.REF, entry.path, escape_path(source_path(job, entry)), entry.digest)
    try:
        data = read_file(source_path(job, entry), settings.max_file_bytes + 1, entry.size)
    except OSError as e:
        return Entry(Kind.ERROR, entry.path, f"cannot read file: {e.strerror or e}", entry.digest)
    if len(data) > settings.max_file_bytes:
        return Entry(Kind.ERROR, entry.path, f"file is over the {settings.max_file_bytes} byte limit "
                     "(DIGITQ_MAX_FILE_BYTES)", entry.digest)
    if len(data) > blobs.INLINE_MAX:
        key = blobs.key(job.id, batch, index)
        large[key] = data
        return Entry(Kind.BLOB, entry.path, key, entry.digest)
    return Entry(Kind.DATA, entry.path, base64.b64encode(data).decode("ascii"), entry.digest)


def job_context(settings: Settings, job: Job) -> JobContext:
    """What every message of ``job`` says about it, so that a worker without the data dir can run it: the data
    dir's id (a worker with the same one commits itself), the pinned model by content (put in Redis here, see
    :mod:`model.serving.artifacts`), and the queue that takes results back to this data dir."""
    ref = Registry(settings.models_dir).resolve(job.model_version)
    dir_id = data_dir_id(settings.data_dir)
    try:
        durably(settings, lambda: artifacts.publish(settings, ref), "putting the model in Redis")
    except RedisError as e:
        raise BrokerError(f"cannot put model {ref.version} in Redis at {redact(settings.redis_url)} ({e})"
                          f"{failover.explain(settings, e)}; the manifest is saved: run `digitq resume {job.id}` "
                          "once Redis is back") from e
    return JobContext(dir_id, artifacts.descriptor(ref), settings.collect_route(dir_id))


def enqueue(settings: Settings, job: Job, batches: Iterable[int] | None = None,
            progress: Progress | None = None, poll: float = 0.25, collect: bool = False) -> Enqueued:
    """Send the given batches (default: all) in order, keeping at most ``max_in_flight`` images
    and ``max_in_flight_bytes`` of image data sent but not committed. For an incremental job,
    what the index has scored is filled in instead (a batch of nothing else is committed here).
    ``progress`` gets the files handled so far.

    A batch that failed for good (``failed/<batch>.json``) will never commit: waiting on it would
    wait forever, so once any batch of the job has failed this stops sending and raises the
    :class:`JobError` of :func:`job_failed` (the reason, and ``digitq resume JOB`` to send the rest
    once the cause is fixed).

    ``collect`` (``scan --wait``): while it waits for room, commit the results of stateless workers that no
    worker seeing this data dir commits (:mod:`producer.collector`); without it, they fill the window for good."""
    wanted = set(range(job.n_batches)) if batches is None else set(batches)
    collector = None
    sizes = job.batch_sizes
    context = job_context(settings, job)
    app = client_app(settings)
    in_flight: dict[int, tuple[int, int]] = {}  # batch -> (images, bytes)
    sent = handled = from_index = 0
    incremental = bool(job.header.get("incremental"))
    try:
        with app.producer_or_acquire() as producer:
            for index, files in job.batches(wanted):
                scored = _scored(settings, job, files) if incremental else {}
                handled += sizes[index]
                from_index += sum(1 for f in files if not f.error and f.digest in scored)
                if scored and all(f.error or f.digest in scored for f in files):
                    _commit_scored(settings, job, index, files, scored)  # nothing left for a worker
                    if progress:
                        progress(handled)
                    continue
                files_to_send = [f for f in files if not f.error and f.digest not in scored]
                size = sum(f.size for f in files_to_send)
                while in_flight and (sum(n for n, _ in in_flight.values()) + sizes[index] > settings.max_in_flight
                                     or sum(b for _, b in in_flight.values()) + size > settings.max_in_flight_bytes):
                    if collect:
                        collector = collector or _collector(settings)
                        collector.step()
                    time.sleep(poll)
                    _release(job, in_flight)
                args = BatchMessage(job.id, index, message_entries(settings, job, index, files, scored),
                                    context).to_wire()
                # A copy the stack can send again (digitq/batch/outbox.py), then the message; returns once a replica has
                # both (where there is one): a failover cannot lose them. Through a failover both are sent again
                # until the new master has them (a duplicate message commits the same rows).
                durably(settings, lambda args=args, index=index: (
                    outbox.put(settings, job.id, index, args),
                    app.send_task(PREDICT_TASK, args=args, queue=settings.predict_queue, producer=producer,
                                  argsrepr=batch_repr(args))), f"sending batch {index} of job {job.id}")
                in_flight[index] = (sizes[index], size)
                sent += len(files_to_send)
                if progress:
                    progress(handled)
    except (OSError, KombuError, RedisError) as e:
        raise BrokerError(
            f"sending job {job.id} to Redis at {redact(settings.redis_url)} failed "
            f"({e}){failover.explain(settings, e)}; the manifest is saved: run `digitq resume {job.id}` "
            "once Redis is back"
        ) from e
    finally:
        if collector is not None:
            collector.close()
        app.close()
    if incremental and job.is_complete():
        job.finalize()  # every batch came from the index: no worker will merge
    return Enqueued(sent, from_index)


def _collector(settings: Settings):
    from producer.collector import Collector

    return Collector(settings, say=lambda line: print(f"\nwarning: {line}", file=sys.stderr))


def _release(job: Job, in_flight: dict[int, tuple[int, int]]) -> None:
    """Release the share of the batches that committed. Raise once any batch of the job failed for good:
    it never commits, so its share would never come back, and the job is ``failed`` until ``resume``."""
    committed = job.committed()
    for done in committed & in_flight.keys():
        del in_flight[done]
    failed = job.failed(committed)
    if failed:
        raise job_failed(job, failed)


def job_failed(job: Job, failed: Mapping[int, str]) -> JobError:
    """The error of a job with batches that failed for good: the first one's reason, and the advice."""
    batch, reason = min(failed.items())
    more = f" (and {len(failed) - 1} more batch(es))" if len(failed) > 1 else ""
    return JobError(f"job {job.id} failed: batch {batch}{more}: {reason}. "
                    f"Fix the cause, then run `digitq resume {job.id}`")


def _scored(settings: Settings, job: Job, files: Sequence[FileEntry]) -> dict[str, scores.Score]:
    """What the index holds for these files under the job's pinned version."""
    try:
        return scores.lookup(settings.data_dir, job.model_version, [f.digest for f in files if f.digest])
    except sqlite3.Error as e:
        if scores.is_corrupt(e):  # damaged deeper than the check at scan time saw
            _say_set_aside(e, scores.set_aside(settings.data_dir))
        return {}  # an unreadable index costs predictions, never rows
    except OSError:
        return {}


def _repair_index(settings: Settings) -> None:
    """Before an incremental scan: a damaged index is moved aside, once, and a new one starts."""
    try:
        moved = scores.repair(settings.data_dir)
    except OSError:
        return  # unreadable or unmovable: lookups find nothing, and the rows are right all the same
    _say_set_aside("it cannot be read", moved)


def _say_set_aside(why: object, moved: os.PathLike | None) -> None:
    if moved is not None:  # None: another process moved it, and said so
        print(f"warning: the content-hash index was damaged ({why}); it is now {moved}, and a new one starts "
              "(files it held are predicted again)", file=sys.stderr)


def _commit_scored(settings: Settings, job: Job, batch: int, files: Sequence[FileEntry],
                   scored: Mapping[str, scores.Score]) -> None:
    """Commit a batch whose every file the index has scored, here, as a worker would (if a worker committed it
    first, its result stands and these rows are discarded and counted, as any later outcome)."""
    rows = [Row(f.path, error=f.error) if f.error else Row(f.path, *scored[f.digest], digest=f.digest) for f in files]
    commit(settings, job, Outcome(job.id, batch, rows, job.model_version, time.time()))


def resume(settings: Settings, job: Job, progress: Progress | None = None) -> list[int]:
    """Re-send every batch without a committed result; merge if nothing is missing."""
    committed = job.committed()
    missing = sorted(set(range(job.n_batches)) - committed)
    job.clear_failed()
    if missing:
        ping(settings)  # fail fast, before anything is half-sent
        ledger.seed(settings, job.id, committed)  # Redis may have lost the set with the queue
        enqueue(settings, job, missing, progress)
    else:
        job.finalize()
    return missing
