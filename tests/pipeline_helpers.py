"""Helpers for end-to-end tests: sample files and job submission."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from digitq.settings import Settings
from model.registry import Registry
from producer.dispatch import submit

#: The session's redis-server keeps this many databases (conftest); 0-15 stay for fixed uses.
DATABASES = 4096
_next_db = itertools.count(16)
_dbs: dict[tuple[str, str, int], int] = {}


#: The version production names until something is promoted (read from the shipped model.json only).
BUNDLED = Registry("unused").bundled().version

def db_url(url: str, key: int) -> str:
    """``url`` on a database of its own for the running test: the same ``key`` names the same database
    within one test, and no other test ever gets it (no hand-picked numbers to collide)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    base = url.rsplit("/", 1)[0]
    db = _dbs.setdefault((test, base, key), next(_next_db))
    return f"{base}/{db}"


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment a test's worker process needs to reach ``settings``' Redis and data dir."""
    return {"DIGITQ_REDIS_URL": settings.redis_url, "DIGITQ_DATA_DIR": str(settings.data_dir)}


def make_job(settings: Settings, folder: Path, batch_size: int, send: bool = True, **kw):
    """Scan ``folder`` into a job; send all its batches unless ``send`` is False."""
    return submit(settings, [str(folder)], send=send, batch_size=batch_size, **kw)


def last_json(result) -> dict:
    """The JSON object a ``--json`` command printed on its last stdout line."""
    import json

    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_until(predicate, timeout: float = 60.0, poll: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def cli_for(settings: Settings, env: dict[str, str] | None = None):
    """A function that runs `digitq ARGS...` in-process against ``settings``' Redis and data dir."""
    from click.testing import CliRunner

    from producer.cli import main

    runner = CliRunner(env=env)

    def cli(*args: str):
        return runner.invoke(main, ["--redis-url", settings.redis_url, "--data-dir", str(settings.data_dir), *args],
                             catch_exceptions=False)

    return cli


#: How the guarantee tests run their workers: one that sees the data dir, or one that does not (it predicts
#: statelessly and hands results in through Redis) beside a collector that sees it and predicts nothing.
MODES = ("shared", "stateless")


def start_workers(mode: str, settings: Settings, logs: Path, *, env: dict[str, str] | None = None,
                  app: str = "worker", concurrency: int = 1, name: str = "w"):
    """The workers of ``mode``, started; the predicting one first. Stop them with :func:`stop_workers`."""
    from digitq.disk.storage import data_dir_id
    from worker.process import WorkerProcess

    base = {**worker_env(settings), **(env or {})}
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # seen at start: a worker that sees it collects for it
    if mode == "shared":
        return [WorkerProcess(base, logs / f"{name}.log", app=app, concurrency=concurrency, name=name).start()]
    assert mode == "stateless", mode
    private = logs / f"{name}-private"  # its own data dir: none of the producer's files are in it
    private.mkdir(parents=True, exist_ok=True)
    predictor = WorkerProcess({**base, "DIGITQ_DATA_DIR": str(private)}, logs / f"{name}-stateless.log", app=app,
                              concurrency=concurrency, name=f"{name}-stateless")
    collector = WorkerProcess(base, logs / f"{name}-collector.log", name=f"{name}-collector",
                              queues=settings.collect_route(data_dir_id(settings.data_dir)))
    started = [predictor.start()]
    try:
        started.append(collector.start())
    except BaseException:
        predictor.stop()
        raise
    return started


def stop_workers(workers) -> None:
    for w in workers:
        w.stop()
