"""`digitq workers`: two workers sharing one job are both listed with what they served and the
data-dir id they see; a worker that sees another data dir serves statelessly, and says so."""

import json

from click.testing import CliRunner

from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.cli import main
from producer.dispatch import submit
from producer.follow import wait_for
from worker.process import WorkerProcess

from .conftest import worker_env
from .pipeline_helpers import BUNDLED, db_url, wait_until

#: The version production names until something is promoted.


def test_workers_lists_every_live_worker_and_flags_a_foreign_data_dir(redis_server, tmp_path, mnist):
    url = db_url(redis_server.url, 8)
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:200], mnist.y_test[:200])

    def workers() -> dict:
        result = CliRunner().invoke(main, ["--redis-url", url, "--data-dir", str(settings.data_dir), "workers",
                                           "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    with WorkerProcess(worker_env(settings), tmp_path / "a.log", name="alpha"), \
            WorkerProcess(worker_env(settings), tmp_path / "b.log", name="beta"):
        job = submit(settings, [str(folder)], batch_size=5)  # 40 batches: both take some
        wait_for(job, timeout=120)
        # Started before the data dir existed (the scan made it): they take up its collect queue once it does.
        def collecting() -> dict | None:
            report = workers()
            return report if all(w["collects"] for w in report["workers"]) else None

        report = wait_until(collecting, timeout=15, poll=0.5, what="both workers to collect for the new data dir")
        names = [w["name"] for w in report["workers"]]
        assert len(names) == 2 and {n.split("-")[0] for n in names} == {"alpha", "beta"}
        for w in report["workers"]:
            collect = f"collect.{report['data_dir_id']}"
            assert w["queues"] == [collect, "predict"] and w["collects"] == collect
            assert w["concurrency"] >= 1 and w["pid"]
            assert w["data_dir_id"] == report["data_dir_id"] and not w["stateless"]
            assert w["batches_done"] >= 1 and w["models"] == [BUNDLED]
        assert sum(w["batches_done"] for w in report["workers"]) >= job.n_batches
        assert report["queues"] == {"predict": 0, "train": 0, collect: 0} and len(report["data_dir_id"]) == 16
        assert report["warnings"] == []
        other = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "elsewhere"))  # does not exist
        with WorkerProcess(worker_env(other), tmp_path / "c.log", name="gamma"):
            report = workers()
            human = CliRunner().invoke(main, ["--redis-url", url, "--data-dir", str(settings.data_dir), "workers"])
    flagged = [w for w in report["workers"] if w["stateless"]]
    assert [w["name"].split("-")[0] for w in flagged] == ["gamma"] and flagged[0]["data_dir_id"] is None
    assert flagged[0]["queues"] == ["predict"] and flagged[0]["collects"] is None
    assert report["warnings"] == []  # alpha and beta commit what gamma predicts
    assert "gamma" in human.stdout and "stateless" in human.stdout and human.stdout.count("sees the data dir") == 2
    assert "serving statelessly" in (tmp_path / "c.log").read_text()
    human = CliRunner().invoke(main, ["--redis-url", url, "--data-dir", str(settings.data_dir), "workers"])
    assert "no live worker answered" in human.stdout


def test_workers_warns_about_an_evicting_redis(redis_server, tmp_path):
    import redis

    url = db_url(redis_server.url, 9)
    client = redis.Redis.from_url(url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        result = CliRunner().invoke(main, ["--redis-url", url, "--data-dir", str(tmp_path), "workers", "--json"],
                                    catch_exceptions=False)
        settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path))
        with WorkerProcess(worker_env(settings), tmp_path / "w.log", name="evicted") as worker:
            log = worker.log()
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    report = json.loads(result.stdout)
    assert report["redis_maxmemory_policy"] == "allkeys-lru"
    assert any("noeviction" in warning for warning in report["warnings"]) and report["workers"] == []
    assert "WARNING" in log and "maxmemory-policy is 'allkeys-lru'" in log  # the worker says it at start
