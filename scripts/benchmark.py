"""Throughput of the queue pipeline against a plain local script, on real MNIST digits.

    .venv/bin/python scripts/benchmark.py [--images 10000] [--concurrency 2] [--batch-size 256]

Writes the MNIST test digits as PNG files, then times
  1. a plain local script: read + decode every file, then ``model.predict`` in batches;
  2. digitq: ``scan`` -> Redis -> Celery worker(s) -> CSV, with warm workers,
both from the files on disk to the predictions. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def plain_script(files: list[Path]) -> float:
    """What a user would write without digitq; returns images/s (model load excluded)."""
    import keras
    import numpy as np

    from model.preprocess import decode_image
    from model.registry import Registry

    model = keras.saving.load_model(Registry(Path("/nonexistent")).bundled().path, compile=False)
    started = time.perf_counter()
    x = np.stack([decode_image(f.read_bytes()) for f in files]).astype("float32")[..., None] / 255.0
    model.predict(x, batch_size=256, verbose=0).argmax(axis=1)
    return len(files) / (time.perf_counter() - started)


@click.command()
@click.option("--images", default=10_000, show_default=True)
@click.option("--concurrency", default=os.cpu_count() or 1, show_default=True, help="Worker processes.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--data", envvar="DIGITQ_MNIST", default=str(ROOT.parent / "shared" / "mnist"), show_default=True)
def main(images: int, concurrency: int, batch_size: int, data: str) -> None:
    from digitq.redisserver import RedisServer
    from digitq.settings import Settings
    from model.dataset import load_dataset, write_image_folder
    from producer.dispatch import submit
    from producer.follow import wait_for
    from worker.process import WorkerProcess

    mnist = load_dataset(data)
    with tempfile.TemporaryDirectory(prefix="digitq-bench-") as tmp:
        tmp = Path(tmp)
        files = write_image_folder(tmp / "digits", mnist.x_test[:images], mnist.y_test[:images])
        write_image_folder(tmp / "warmup", mnist.x_test[:64], mnist.y_test[:64])
        baseline = plain_script(files)
        with RedisServer() as redis:
            settings = Settings.from_env(redis_url=redis.url, data_dir=str(tmp / "data"))
            env = {"DIGITQ_REDIS_URL": redis.url, "DIGITQ_DATA_DIR": str(settings.data_dir)}
            with WorkerProcess(env, tmp / "worker.log", concurrency=concurrency):
                def run(folder: Path) -> float:
                    started = time.perf_counter()
                    job = submit(settings, [str(folder)], batch_size=batch_size)
                    wait_for(job, timeout=600, poll=0.02)
                    return time.perf_counter() - started

                for _ in range(concurrency):  # load the model in every pool process
                    run(tmp / "warmup")
                seconds = run(tmp / "digits")
    rate = images / seconds
    print(json.dumps({"images": images, "concurrency": concurrency, "batch_size": batch_size,
                      "pipeline_images_per_s": round(rate, 1), "plain_script_images_per_s": round(baseline, 1),
                      "ratio": round(rate / baseline, 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
