"""A data dir that appears after its worker started (a volume mounted late): the worker never gives the empty
mountpoint an id of its own, notices the real one, and collects for it without a restart."""

import json
import os

import redis

from digitq.bus import keys
from digitq.disk import csvfile
from digitq.disk.storage import data_dir_id
from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.follow import wait_for
from worker.process import WorkerProcess

from .conftest import worker_env
from .pipeline_helpers import cli_for, db_url, make_job, wait_until


def test_a_worker_whose_data_dir_is_mounted_mid_job_collects_for_it_without_a_restart(redis_server, tmp_path,
                                                                                        mnist):
    url = db_url(redis_server.url, 11)
    client = redis.Redis.from_url(url)
    client.flushdb()
    real = tmp_path / "volume"  # the producer's data dir: the volume, before it is mounted on the worker's path
    settings = Settings.from_env(redis_url=url, data_dir=str(real))
    empty = tmp_path / "mountpoint"
    empty.mkdir()
    mount = tmp_path / "data"  # the worker's DIGITQ_DATA_DIR: an empty mountpoint until the volume comes
    mount.symlink_to(empty)
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:80], mnist.y_test[:80])
    # A short stall time: the sweeper passes every second, so that its lock shows which data dir it serves.
    with WorkerProcess({**worker_env(settings), "DIGITQ_DATA_DIR": str(mount), "DIGITQ_STALL_AFTER": "4"},
                       tmp_path / "late.log", name="late") as late:
        job = make_job(settings, folder, batch_size=10)  # 8 batches
        report_id = data_dir_id(real, create=False)
        collect = settings.collect_route(report_id)
        # Predicted statelessly, handed in for a data dir nobody sees yet.
        wait_until(lambda: client.llen(collect) >= 2, timeout=90, poll=0.1, what="results waiting to be collected")
        assert job.status()["done"] == 0
        assert list(empty.iterdir()) in ([], [empty / "cache"])  # a model cache at most: never an id
        # The volume arrives on the worker's path, mid-job.
        (tmp_path / "data.new").symlink_to(real)
        os.replace(tmp_path / "data.new", mount)
        status = wait_for(job, timeout=90)  # polls the files only: this process commits nothing
        wait_until(lambda: client.exists(keys.sweeper_lock(report_id)), timeout=30, poll=0.1,
                   what="the sweeper to pass over the mounted data dir")
        report = json.loads(cli_for(settings)("workers", "--json").stdout)
        log = late.log()
    assert status["state"] == "done" and len(csvfile.read(job.csv_path)) == 80
    assert not (empty / ".digitq-id").exists()
    [w] = report["workers"]
    assert w["data_dir_id"] == report["data_dir_id"] and not w["stateless"]
    assert w["collects"] == collect and collect in w["queues"] and "predict" in w["queues"]
    assert "Task digitq.collect_batch" in log and client.llen(collect) == 0


def test_init_creates_the_data_dir_and_its_id_once(redis_server, tmp_path):
    settings = Settings.from_env(redis_url=redis_server.url, data_dir=str(tmp_path / "a" / "data"))
    cli = cli_for(settings)
    first = cli("init", "--json")
    assert first.exit_code == 0, first.output
    made = json.loads(first.stdout)
    assert made["created"] and made["data_dir_id"] == data_dir_id(settings.data_dir, create=False)
    assert made["collect_queue"] == f"collect.{made['data_dir_id']}"
    again = cli("init")
    assert again.exit_code == 0 and again.stdout.strip() == made["data_dir_id"]


def test_the_data_dir_id_is_read_again_when_it_changes_and_never_created(tmp_path):
    from digitq.batch.commit import local_data_dir

    first, second, empty = tmp_path / "first", tmp_path / "second", tmp_path / "empty"
    empty.mkdir()
    ids = [data_dir_id(first), data_dir_id(second)]
    path = tmp_path / "data"
    settings = Settings.from_env(redis_url="redis://127.0.0.1:1/0", data_dir=str(path))
    assert local_data_dir(settings) is None  # no dir at all
    path.symlink_to(empty)
    assert local_data_dir(settings) is None and not (empty / ".digitq-id").exists()
    for target, expected in ((first, ids[0]), (second, ids[1]), (empty, None), (first, ids[0])):
        (tmp_path / "next").symlink_to(target)
        os.replace(tmp_path / "next", path)
        assert local_data_dir(settings) == expected
    assert list(empty.iterdir()) == []
