"""A worker that cannot see a job (wrong DIGITQ_DATA_DIR) hands its batches back and says why;
a correctly configured worker then finishes the job, with no `resume`."""

import json

from click.testing import CliRunner

from digitq import csvfile
from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.cli import main
from worker.process import WorkerProcess

from .conftest import worker_env
from .pipeline_helpers import last_json, wait_until


def test_a_worker_with_the_wrong_data_dir_stalls_the_job_loudly_and_loses_nothing(redis_server, tmp_path, mnist):
    url = redis_server.url.rsplit("/", 1)[0] + "/4"  # this test's own queue
    settings = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "data"))
    wrong = Settings.from_env(redis_url=url, data_dir=str(tmp_path / "elsewhere"))
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:24], mnist.y_test[:24])
    runner = CliRunner()

    def cli(*args: str):
        return runner.invoke(main, ["--redis-url", url, "--data-dir", str(settings.data_dir), *args],
                             catch_exceptions=False)

    with WorkerProcess(worker_env(wrong), tmp_path / "wrong.log", name="wrong") as bad:
        job_id = last_json(cli("scan", str(folder), "--batch-size", "8", "--json"))["job_id"]
        stalled = wait_until(lambda: (st := json.loads(cli("status", job_id, "--json").stdout))["state"] == "stalled"
                             and st, timeout=60, poll=0.5, what="the job to show stalled")
        assert str((tmp_path / "elsewhere").resolve()) in stalled["stalled"]["cause"]
        assert stalled["stalled"]["worker"].startswith("wrong-") and stalled["done"] == 0
        human = cli("status", job_id).stdout
        assert "stalled" in human and "DIGITQ_DATA_DIR" in human
        with WorkerProcess(worker_env(settings), tmp_path / "good.log", name="good"):
            waited = cli("wait", job_id, "--timeout", "120", "--json")
        assert waited.exit_code == 0, waited.output
        assert bad.log().count(f"job {job_id} is not under this worker's data dir") == 1  # said once, not per batch
    rows = csvfile.read(last_json(waited)["output"])
    assert len(rows) == 24 and sum(r["prediction"] == r["path"].split("/")[-2] for r in rows) >= 23
    assert json.loads(cli("status", job_id, "--json").stdout)["state"] == "done"
