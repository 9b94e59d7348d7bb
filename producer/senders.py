"""Sender processes: one job's batches sent by several forked processes at once.

Sending is Python work (reading files, encoding, publishing) that one core does at about 15,000
files a second on a small machine; with N senders each takes every Nth batch. Each sender keeps its
share of the in-flight bounds, and each batch is still sent exactly once. A batch that fails for good
stops every sender that waits for room (see :func:`producer.dispatch.enqueue`), and the scan ends with
that error, whichever sender saw it.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import replace

from digitq.disk.jobs import Job
from digitq.errors import BrokerError, DigitqError, JobError
from digitq.settings import Settings, available_cores
from producer.dispatch import Enqueued, Progress, enqueue
from producer.forks import can_fork, exit_reason, fork_child

#: Batches each sender must have before a scan forks for it: a small job is sent sooner by one.
MIN_BATCHES_PER_SENDER = 4


def default_senders() -> int:
    """Two senders where there are two cores or more (measured: 1.3x the rate of one on two cores;
    Redis itself and the workers want the rest)."""
    return min(2, available_cores())


def enqueue_parallel(settings: Settings, job: Job, progress: Progress | None = None, collect: bool = False) -> Enqueued:
    """:func:`producer.dispatch.enqueue` for all of ``job``, by ``settings.senders`` processes (0: the
    default): this one and forked children, batch ``i`` by sender ``i % senders``. One process where
    forking is not safe (another thread runs, or no ``fork``) or the job is small. ``collect``: see
    :func:`producer.dispatch.enqueue` (each sender collects while it waits for room)."""
    senders = min(settings.senders or default_senders(), job.n_batches // MIN_BATCHES_PER_SENDER)
    if senders < 2 or not can_fork():
        return enqueue(settings, job, progress=progress, collect=collect)
    share = replace(settings, max_in_flight=max(1, settings.max_in_flight // senders),
                    max_in_flight_bytes=max(1, settings.max_in_flight_bytes // senders))
    counts = mmap.mmap(-1, 8 * senders)  # shared with the children: files each has handled
    children: list[tuple[int, int]] = []  # (pid, read end of its result pipe)
    try:
        for rank in range(1, senders):
            children.append(_fork_sender(share, job, rank, senders, counts, collect))

        def mine(handled: int) -> None:
            struct.pack_into("q", counts, 0, handled)
            if progress:
                progress(sum(struct.unpack_from(f"{senders}q", counts)))

        result = enqueue(share, job, range(0, job.n_batches, senders), progress=mine, collect=collect)
    finally:
        outcomes = [_reap(pid, fd, job) for pid, fd in children]
    if progress:
        progress(sum(struct.unpack_from(f"{senders}q", counts)))
    failed = [o for o in outcomes if isinstance(o, DigitqError)]
    if failed:  # a failed job first: its reason says more than the senders it stopped
        raise next((e for e in failed if isinstance(e, JobError)), failed[0])
    for sent, from_index in outcomes:
        result = Enqueued(result.sent + sent, result.from_index + from_index)
    if job.header.get("incremental") and job.is_complete():
        job.finalize()  # whichever sender finished last may not have seen the others' commits
    return result


def _fork_sender(settings: Settings, job: Job, rank: int, senders: int, counts: mmap.mmap,
                 collect: bool = False) -> tuple[int, int]:
    """Start the sender of batches ``rank``, ``rank + senders``, ...; its pid and result pipe."""
    read_end, write_end = os.pipe()
    pid = fork_child(lambda: _send_share(settings, job, rank, senders, counts, read_end, write_end, collect))
    os.close(write_end)
    return pid, read_end


def _send_share(settings: Settings, job: Job, rank: int, senders: int, counts: mmap.mmap, unused: int,
                fd: int, collect: bool = False) -> int:
    """The child's side: send its share, report on the pipe; the exit code."""
    os.close(unused)
    code = 1
    try:
        done = enqueue(settings, job, range(rank, job.n_batches, senders),
                       progress=lambda handled: struct.pack_into("q", counts, 8 * rank, handled), collect=collect)
        report = {"sent": done.sent, "from_index": done.from_index}
        code = 0
    except DigitqError as e:  # its message says what to do; the parent raises the same kind
        report = {"error": str(e), "kind": "job" if isinstance(e, JobError) else "broker"}
    except KeyboardInterrupt:
        report = {"error": f"interrupted: job {job.id} is saved; `digitq resume {job.id}` sends the rest"}
    except Exception as e:  # anything else still reaches the user, through the parent
        report = {"error": f"sender {rank} of job {job.id} failed ({type(e).__name__}: {e}); "
                           f"the manifest is saved: run `digitq resume {job.id}` to send what is missing"}
    with os.fdopen(fd, "w") as pipe:
        pipe.write(json.dumps(report))
    return code


def _reap(pid: int, fd: int, job: Job) -> tuple[int, int] | DigitqError:
    """Wait for a sender; what it sent, or the error to raise."""
    with os.fdopen(fd, "rb") as pipe:
        raw = pipe.read()
    _, status = os.waitpid(pid, 0)
    try:
        report = json.loads(raw)
    except ValueError:
        report = {"error": f"a sender process of job {job.id} died ({exit_reason(status)}); the manifest is saved: "
                           f"run `digitq resume {job.id}` to send what is missing"}
    if "error" in report:
        return (JobError if report.get("kind") == "job" else BrokerError)(report["error"])
    return report["sent"], report["from_index"]
