"""``digitq demo``: the whole pipeline on one machine, started and stopped here."""

from __future__ import annotations

import os
from pathlib import Path

import click

from digitq.disk import csvfile
from digitq.settings import Settings

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "digits"


def run_demo(samples: str | None = None, data_dir: str = "digitq-demo-data", timeout: float = 300) -> int:
    """Private Redis + one worker + a scan of the sample digits; prints a table and the CSV path."""
    from digitq.bus.server import RedisServer
    from producer.dispatch import submit
    from producer.follow import wait_for
    from producer.progress import Progress
    from worker.process import WorkerProcess

    folder = Path(samples) if samples else SAMPLES
    if not folder.is_dir():
        raise click.UsageError(f"sample folder {folder} not found; pass --samples DIR")
    data = Path(data_dir).resolve()
    with RedisServer() as redis:
        env = {"DIGITQ_REDIS_URL": redis.url, "DIGITQ_DATA_DIR": str(data)}
        settings = Settings.from_env(**{"redis_url": redis.url, "data_dir": str(data)})
        click.echo(f"redis-server {redis.binary} on 127.0.0.1:{redis.port}; starting one worker...", err=True)
        with WorkerProcess(env, data / "demo-worker.log"):
            shown = os.path.relpath(folder) if folder.resolve().is_relative_to(Path.cwd()) else str(folder.resolve())
            job = submit(settings, [shown])
            click.echo(f"job {job.id}: {job.total} images, model {job.model_version}", err=True)
            with Progress(job.total, "predict") as bar:
                status = wait_for(job, timeout, on_status=lambda s: bar.update(s["done"]))
    rows = csvfile.read(job.csv_path)
    width = max(len(r["path"]) for r in rows) if rows else 4
    click.echo(f"\n{'FILE':<{width}}  DIGIT  CONFIDENCE")
    for r in rows:
        shown = r["prediction"] if not r["error"] else "error: " + r["error"]
        click.echo(f"{r['path']:<{width}}  {shown:>5}  {r['confidence']}")
    click.echo(f"\n{status['done']} images, {status['errors']} errors in {status['elapsed_s'] or 0:.1f}s "
               "(including the worker's one-time model load)")
    click.echo(f"CSV: {job.csv_path}")
    return 0
