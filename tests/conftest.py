"""Shared fixtures: a private redis-server on a free port, a real Celery worker, real MNIST."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from digitq.bus.server import RedisServer
from digitq.settings import Settings
from worker.process import WorkerProcess

from .pipeline_helpers import DATABASES, db_url, worker_env

ROOT = Path(__file__).resolve().parent.parent


#: Test files that take longest (each over 20 s in all on 2 cores), started first: with the files spread over
#: processes (scripts/test.sh runs pytest-xdist's ``--dist loadfile``), a long file started last would finish alone.
LONG_FIRST = ("test_sentinel.py", "test_stalls.py", "test_training_recovery.py", "test_index_race.py",
              "test_pipeline.py", "test_training_requests.py", "test_sweeper.py", "test_training.py", "test_fleet.py",
              "test_gate.py", "test_model.py", "test_failing_jobs.py", "test_collecting.py", "test_duplicates.py",
              "test_races.py", "test_review.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of :data:`LONG_FIRST` first, in its order; each file's tests keep theirs."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep collection order


def mnist_source() -> str | None:
    """``DIGITQ_MNIST``, else ``../shared/mnist`` beside the checkout, else None (Keras download)."""
    env = os.environ.get("DIGITQ_MNIST")
    if env:
        return env
    shared = ROOT.parent / "shared" / "mnist"
    return str(shared) if shared.is_dir() else None


@pytest.fixture(scope="session")
def mnist():
    from model.dataset import load_dataset

    return load_dataset(mnist_source())


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer(args=["--databases", str(DATABASES)]).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digitq-data")


@pytest.fixture(scope="session")
def settings(redis_server, data_dir) -> Settings:
    return Settings.from_env(redis_url=redis_server.url, data_dir=str(data_dir))


@pytest.fixture(scope="session", autouse=True)
def _no_default_redis(request):
    # Nothing in the tests may fall back to the machine's own Redis on 6379.
    saved = {k: os.environ.get(k) for k in ("DIGITQ_REDIS_URL", "DIGITQ_DATA_DIR")}
    os.environ["DIGITQ_REDIS_URL"] = "redis://127.0.0.1:1/0"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def worker(settings, data_dir):
    proc = WorkerProcess(worker_env(settings), data_dir / "worker.log").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tsettings(redis_server, tmp_path_factory) -> Settings:
    """A training test module's settings: its own Redis database and data dir (the session's predict worker
    must not take these batches)."""
    url = db_url(redis_server.url, 2)
    return Settings.from_env(redis_url=url, data_dir=str(tmp_path_factory.mktemp("training-data")))


@pytest.fixture(scope="module")
def trainer(tsettings):
    """A training test module's trainer: a real worker on the ``train`` queue of :func:`tsettings`."""
    proc = WorkerProcess(worker_env(tsettings), tsettings.data_dir / "trainer.log", queues="train",
                         name="trainer").start()
    yield proc
    proc.stop()
