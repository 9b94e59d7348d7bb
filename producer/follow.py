"""Follow a job to its end from the files on disk, and place its CSV where the user asked."""

from __future__ import annotations

import time
from collections.abc import Callable

import click
from redis.exceptions import RedisError

from digitq.batch import stalls
from digitq.disk.jobs import Job
from digitq.disk.storage import atomic_write
from digitq.errors import BrokerError, JobError, WaitTimeout
from digitq.settings import Settings

#: How often ``wait`` asks Redis whether a worker reported the job as stalled.
STALL_CHECK_S = 2.0
#: How often ``wait`` asks the live workers which batches they hold (a broadcast; see live_status).
ORPHAN_CHECK_S = 10.0
#: How long a job may sit with nothing done before ``wait`` asks whether any worker consumes its queue.
NO_WORKER_AFTER_S = 10.0
START_WORKER = "celery -A worker worker"


def live_status(settings: Settings, job: Job, orphans: bool = True, collecting: bool = False) -> dict:
    """The job's status from its files, ``stalled`` (with the cause) while a worker reports it cannot
    run it, or (with ``orphans``) when no commit came for ``stall_after`` seconds and none of its missing
    batches is queued or held by a live worker (see :func:`digitq.batch.stalls.is_orphaned`), or when results of
    stateless workers wait with nobody to commit them (unless ``collecting``: this process commits them)."""
    status = job.status()
    if status["state"] in ("done", "failed"):
        return status
    try:
        record = stalls.read(settings, job.id)
    except RedisError:
        return status  # Redis unreachable: the files still tell the truth about progress
    if record:
        status.update(state="stalled", stalled={**record, "cause": stalls.describe(record)})
        return status
    idle = time.time() - (status["last_commit"] or status["created"])
    if orphans and not collecting and idle > NO_WORKER_AFTER_S and _nobody_collects(settings, job):
        waiting = stalls.uncollected(settings, job.id)
        status.update(state="stalled", stalled={"cause": stalls.describe_uncollected(settings, waiting, job.id),
                                                "uncollected": waiting, "queue": stalls.collect_queue(settings),
                                                "collect": f"digitq wait {job.id}"})
        return status
    if not orphans or idle < settings.stall_after:  # not idle long enough: no need to list the results
        return status
    committed = job.committed()
    if stalls.is_orphaned(settings, job, committed):
        missing = set(range(job.n_batches)) - committed
        cause = (f"no commit for {stalls.idle_s(job, committed):.0f}s and none of its {len(missing)} missing "
                 "batch(es) is queued or held by a live worker (a worker host died, or Redis lost them): "
                 f"run `digitq resume {job.id}`")
        status.update(state="stalled", stalled={"cause": cause, "orphaned": sorted(missing), "resume": True})
    return status


def wait_for(job: Job, timeout: float | None, on_status: Callable[[dict], None] | None = None,
             poll: float | None = None, settings: Settings | None = None,
             resume_stalled: Callable[[], list[int]] | None = None, collect: bool = False) -> dict:
    """Poll the job's files until it is done; raise on failure or timeout. With ``settings``,
    also say (once) when a worker reports that it cannot run the job, and when its missing
    batches are orphaned; then call ``resume_stalled``, if given, to send them again. With
    ``collect`` too, commit the results of stateless workers while no live worker does
    (:mod:`producer.collector`).

    A poll lists the job's results, so big jobs are polled less often (20 ms up to half a second)."""
    poll = poll or min(0.5, max(0.02, job.n_batches / 4000))
    deadline = None if timeout is None else time.monotonic() + timeout
    started = time.monotonic()
    collector = None
    if settings is not None and collect:
        from producer.collector import Collector

        collector = Collector(settings, say=lambda line: click.secho(f"\n{line}", err=True, fg="yellow"))
    try:
        return _follow_files(job, deadline, timeout, poll, on_status, settings, resume_stalled, collector, started)
    finally:
        if collector is not None:
            collector.close()


def _follow_files(job: Job, deadline: float | None, timeout: float | None, poll: float,
                  on_status: Callable[[dict], None] | None, settings: Settings | None,
                  resume_stalled: Callable[[], list[int]] | None, collector, started: float) -> dict:
    """The loop of :func:`wait_for`."""
    last_change, last_done, hinted = time.monotonic(), -1, False
    stall_checked, orphans_checked, stall_said, workers_checked = 0.0, 0.0, False, False
    while True:
        if collector is not None:
            collector.step()
        if job.is_complete():
            job.finalize()  # idempotent; covers a worker that died between commit and merge
        if settings is not None and time.monotonic() - stall_checked > STALL_CHECK_S:
            stall_checked = time.monotonic()
            orphans = time.monotonic() - orphans_checked > ORPHAN_CHECK_S
            orphans_checked = time.monotonic() if orphans else orphans_checked
            status = live_status(settings, job, orphans=orphans, collecting=bool(collector and collector.active))
            if status["state"] == "stalled" and status["stalled"].get("resume") and resume_stalled:
                resent = resume_stalled()
                click.secho(f"\njob {job.id} was stalled ({len(resent)} batch(es) neither queued nor held by a live "
                            "worker): sent them again", err=True, fg="yellow")
                status["state"] = "running"
            elif status["state"] == "stalled" and not stall_said:
                stall_said = True
                click.secho(f"\njob {job.id} is stalled: {status['stalled']['cause']}", err=True, fg="yellow")
        else:
            status = job.status()
        if (settings is not None and not workers_checked and status["done"] == 0
                and time.monotonic() - started > NO_WORKER_AFTER_S):
            workers_checked = True
            _say_if_no_worker(settings, job)
        if on_status:
            on_status(status)
        if status["state"] == "done":
            return status
        if status["state"] == "failed":
            from producer.dispatch import job_failed

            raise job_failed(job, {int(b): reason for b, reason in status["failed_batches"].items()})
        if status["done"] != last_done:
            last_done, last_change = status["done"], time.monotonic()
        elif not hinted and time.monotonic() - last_change > 120:
            hinted = True
            click.secho(f"\nno progress for 2 minutes: are workers running (`celery -A worker worker`)? "
                        f"If Redis lost its queue, `digitq resume {job.id}` re-sends what is missing.",
                        err=True, fg="yellow")
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"job {job.id} not done after {timeout:g}s ({status['done']}/{status['total']}); "
                              f"keep waiting with `digitq wait {job.id}`")
        time.sleep(poll)


def _nobody_collects(settings: Settings, job: Job) -> bool:
    """Whether results of ``job`` wait in Redis with no live worker to commit them (False when unsure)."""
    from digitq.bus.broker import live_consumers

    try:
        queue = stalls.collect_queue(settings)
        return bool(queue and stalls.uncollected(settings, job.id) and not live_consumers(settings, queue))
    except (BrokerError, RedisError):
        return False


def _say_if_no_worker(settings: Settings, job: Job) -> None:
    """Once, when nothing consumes the job's queue: say so, and how to start a worker."""
    from digitq.bus.broker import live_consumers, redact

    try:
        if live_consumers(settings, settings.predict_queue):
            return
    except BrokerError:
        return  # cannot tell; the two-minute hint below still comes
    click.secho(f"\nno worker is consuming the `{settings.predict_queue}` queue on {redact(settings.redis_url)}: "
                f"start one with `{START_WORKER}` (same DIGITQ_REDIS_URL and DIGITQ_DATA_DIR). "
                f"Job {job.id} waits for it; nothing is lost.", err=True, fg="yellow")


def place_output(job: Job, out: str | None = None) -> str | None:
    """Copy the finished CSV to ``out`` (default: the job's ``--out``), atomically."""
    target = out or job.header.get("out")
    if not target:
        return None
    try:
        atomic_write(target, job.csv_path.read_bytes())
    except OSError as e:
        raise JobError(f"job {job.id} is done, but writing {target} failed ({e.strerror or e}); "
                       f"the CSV is at {job.csv_path}") from e
    return target
