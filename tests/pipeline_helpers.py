"""Helpers for end-to-end tests: sample files and job submission."""

from __future__ import annotations

import time
from pathlib import Path

from digitq.settings import Settings
from producer.dispatch import submit


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
