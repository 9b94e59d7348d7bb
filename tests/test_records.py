"""The record base that jobs and trainings share: ids, states, and status dicts exactly as before it."""

from __future__ import annotations

import json

import pytest

from digitq.disk.jobs import FileEntry, Job, Row, create_job, list_jobs
from digitq.disk.records import ID_RE, State, list_ids, new_id
from digitq.disk.training_requests import Training, create_training, list_trainings
from digitq.errors import JobError, JobNotFound, TrainingError, TrainingNotFound

BAD_IDS = ["", "x", "20240101-000000-abcde", "20240101-000000-ABCDEF", "../20240101-000000-abcdef",
           "20240101-000000-abcdef\n", "20240101-000000-abcdef/..", None, 20240101]


def test_ids_are_one_format_for_jobs_and_trainings():
    assert ID_RE.fullmatch(new_id())
    good = new_id()
    assert Job.check_id(good) == good and Training.check_id(good) == good
    for bad in BAD_IDS:
        with pytest.raises(JobError, match="is not a job id .expected YYYYMMDD-HHMMSS-xxxxxx.; see `digitq jobs`"):
            Job.check_id(bad)
        with pytest.raises(TrainingError, match="is not a training id .*; see `digitq trainings`"):
            Training.check_id(bad)


def test_loading_a_missing_record_says_which_and_where(tmp_path):
    with pytest.raises(JobNotFound, match="no job 20240101-000000-abcdef under .*`digitq jobs`"):
        Job.load(tmp_path, "20240101-000000-abcdef")
    with pytest.raises(TrainingNotFound, match="no training 20240101-000000-abcdef under .*`digitq trainings`"):
        Training.load(tmp_path, "20240101-000000-abcdef")
    # A broken job manifest is an error, not a missing job; a half-visible request is not there yet.
    for name in ("job.json", "request.json"):
        (tmp_path / "20240101-000000-abcdef").mkdir(exist_ok=True)
        (tmp_path / "20240101-000000-abcdef" / name).write_text("{")
    with pytest.raises(JobError, match="unreadable manifest") as caught:
        Job.load(tmp_path, "20240101-000000-abcdef")
    assert not isinstance(caught.value, JobNotFound)
    with pytest.raises(TrainingNotFound):
        Training.load(tmp_path, "20240101-000000-abcdef")


def test_ids_are_listed_newest_first_and_only_whole_records(tmp_path):
    for name in ("20240101-000000-aaaaaa", "20250101-000000-aaaaaa", "20230101-000000-aaaaaa", "not-an-id"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "job.json").write_text("{}")
    (tmp_path / "20260101-000000-aaaaaa").mkdir()  # no header yet: not a job
    assert list_jobs(tmp_path) == list_ids(tmp_path, "job.json") == Job.ids(tmp_path) == [
        "20250101-000000-aaaaaa", "20240101-000000-aaaaaa", "20230101-000000-aaaaaa"]
    assert list_trainings(tmp_path) == [] and list_jobs(tmp_path / "absent") == []


def test_state_is_its_word_in_json_and_comparisons():
    for state in State:
        assert json.dumps({"state": state}) == json.dumps({"state": state.value})
        assert json.dumps({"state": state}, indent=1) == json.dumps({"state": state.value}, indent=1)
        assert State(json.loads(json.dumps(state))) is state
        assert state == state.value and f"{state:<12}|" == f"{state.value:<12}|" and str(state) == state.value
    assert [s.value for s in State] == ["scheduled", "queued", "running", "done", "failed", "interrupted",
                                        "stalled"]
    assert State.of("done") is State.DONE and State.of("newer") == "newer"


def test_job_status_is_the_dict_it_always_was(tmp_path):
    files = [FileEntry(f"f{i}.png", 10) for i in range(5)]
    job = create_job(tmp_path, files, [3, 2], model_version="1", sources=["in"], by_path=False, out="o.csv",
                     skipped=1)
    status = job.status()
    assert status == job.snapshot().to_dict()
    assert list(status) == ["job_id", "state", "total", "done", "errors", "skipped", "batches", "batches_done",
                            "failed_batches", "model_version", "output", "out", "created", "started", "finished",
                            "last_commit", "elapsed_s", "rate_per_s", "duplicates"]
    assert (status["state"], status["done"], status["started"], status["elapsed_s"]) == ("queued", 0, None, None)

    job.commit(0, [Row(f"f{i}.png", 1, 0.9) for i in range(3)], model_version="1", started=100.0)
    job.mark_failed(1, "boom")
    assert job.status()["state"] == State.FAILED and job.status()["failed_batches"] == {"1": "boom"}
    job.commit(1, [Row(f"f{i}.png", error="bad") for i in (3, 4)], model_version="1", started=50.0)
    assert job.finalize()
    done = json.loads((job.dir / "done.json").read_text())
    status = Job.load(tmp_path, job.id).status()
    expected = {
        "job_id": job.id, "state": "done", "total": 5, "done": 5, "errors": 2, "skipped": 1, "batches": 2,
        "batches_done": 2, "failed_batches": {}, "model_version": "1", "output": str(job.csv_path.resolve()),
        "out": "o.csv", "created": job.header["created"], "started": 50.0, "finished": done["finished"],
        "last_commit": (job.dir / "results").stat().st_mtime, "elapsed_s": round(done["finished"] - 50.0, 3),
        "rate_per_s": round(5 / (done["finished"] - 50.0), 1), "duplicates": 0,
    }
    assert json.dumps(status) == json.dumps(expected)
    assert json.dumps(status, indent=1) == json.dumps(expected, indent=1)


def test_training_status_is_the_dict_it_always_was(tmp_path):
    training = create_training(tmp_path, sources=["mnist"], epochs=3, from_version="1", holdout=0.1, seed=7,
                               promote="better", by="cli")
    request = json.loads((training.dir / "request.json").read_text())
    assert training.request is training.header and request == training.request
    assert list(request) == ["training_id", "created", "sources", "epochs", "from_version", "holdout", "seed",
                             "promote", "by", "eta"]
    expected = {
        "training_id": training.id, "state": "queued", "version": None, "promoted": False, "accuracy": None,
        "baseline_accuracy": None, "baseline_version": None, "reason": None, "ece": None, "temperature": None,
        "robustness": None, "epoch": 0, "epochs": 3, "loss": None, "train_accuracy": None, "sources": ["mnist"],
        "from_version": "1", "promote": "better", "by": "cli", "created": request["created"], "eta": None,
        "started": None, "finished": None, "attempt": 0, "host": None,
        "log": str((training.dir / "train.log").resolve()),
    }
    status = Training.load(tmp_path, training.id).status()
    assert status == training.snapshot().to_dict()
    assert json.dumps(status) == json.dumps(expected)

    training.add_progress({"epoch": 1, "loss": 0.5, "accuracy": 0.9, "attempt": 1})
    assert training.finish({"state": "done", "version": "2", "promoted": True, "accuracy": 0.99})
    outcome = training.outcome()
    expected.update(state="done", version="2", promoted=True, accuracy=0.99, epoch=1, loss=0.5,
                    train_accuracy=0.9, finished=outcome["finished"])
    assert json.dumps(Training.load(tmp_path, training.id).status()) == json.dumps(expected)
