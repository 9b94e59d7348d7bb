"""Trainings on disk, like jobs: the request, who runs it, its progress, its outcome.

``DIGITQ_DATA_DIR/trainings/<training_id>/`` holds

- ``request.json``: what to train (sources, epochs, parent version, promotion
  policy), written before anything is sent, so a request no worker has taken
  yet is ``queued`` and can be re-sent (``digitq train --retry ID``);
- ``run.json``: the host and pid running it, with a heartbeat, rewritten
  every few seconds while it runs (a dead owner means ``interrupted``);
- ``progress.jsonl``: one line per finished epoch (loss, accuracy, validation);
- ``train.log``: the log of every attempt;
- ``outcome.json``: how it ended: the published version or the error.

Only the outcome says a training is over; a duplicate delivery that finds
it does nothing. No TensorFlow here.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

from digitq.errors import TrainingError, TrainingNotFound
from digitq.jobs import JOB_ID_RE, list_ids, new_job_id
from digitq.settings import Settings
from digitq.storage import atomic_write_json

#: A run whose heartbeat is older than this, on another host, is taken as dead.
STALE_AFTER_S = 60.0
HEARTBEAT_S = 5.0
ACTIVE_STATES = ("scheduled", "queued", "running")


def check_training_id(training_id: str) -> str:
    """``training_id`` if well-formed; keeps task arguments from naming paths outside the data dir."""
    if not isinstance(training_id, str) or not JOB_ID_RE.match(training_id):
        raise TrainingError(f"{training_id!r} is not a training id (expected YYYYMMDD-HHMMSS-xxxxxx); "
                            "see `digitq trainings`")
    return training_id


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # half-visible on a lazy network mount; the next poll sees it whole


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Training:
    """One training's directory."""

    def __init__(self, directory: Path, request: dict):
        self.dir = Path(directory)
        self.request = request

    @classmethod
    def load(cls, trainings_dir: Path, training_id: str) -> Training:
        directory = Path(trainings_dir) / check_training_id(training_id)
        request = _read_json(directory / "request.json")
        if request is None:
            raise TrainingNotFound(f"no training {training_id} under {trainings_dir}; check DIGITQ_DATA_DIR "
                                "or `digitq trainings`")
        return cls(directory, request)

    @property
    def id(self) -> str:
        return self.request["training_id"]

    @property
    def log_path(self) -> Path:
        return self.dir / "train.log"

    # -- what workers write ---------------------------------------------

    def outcome(self) -> dict | None:
        return _read_json(self.dir / "outcome.json")

    def run_record(self) -> dict | None:
        return _read_json(self.dir / "run.json")

    def owner_alive(self, run: dict | None = None) -> bool:
        """Whether the process that claimed this training still runs it."""
        run = self.run_record() if run is None else run
        if not run or run.get("ended"):
            return False
        if run.get("host") == socket.gethostname():
            return _pid_alive(int(run.get("pid", 0)))
        return time.time() - float(run.get("heartbeat", 0)) < STALE_AFTER_S

    @contextmanager
    def running(self) -> Iterator[int]:
        """Claim the training for this process and keep a heartbeat while the block runs.

        Yields the attempt number (1 for the first run)."""
        previous = self.run_record() or {}
        attempt = int(previous.get("attempt", 0)) + 1
        record = {"host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt,
                  "started": time.time(), "heartbeat": time.time()}
        atomic_write_json(self.dir / "run.json", record)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                record["heartbeat"] = time.time()
                try:
                    atomic_write_json(self.dir / "run.json", record)
                except OSError:
                    pass  # a missed beat only makes the run look older

        thread = threading.Thread(target=beat, name="digitq-training-heartbeat", daemon=True)
        thread.start()
        try:
            yield attempt
        finally:
            stop.set()
            thread.join()
            record.update(heartbeat=time.time(), ended=time.time())
            atomic_write_json(self.dir / "run.json", record)

    def add_progress(self, epoch: dict) -> None:
        """Append one finished epoch's figures."""
        with open(self.dir / "progress.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**epoch, "at": round(time.time(), 3)}) + "\n")

    def progress(self) -> list[dict]:
        """The epochs of the latest attempt (a rerun starts a fresh list)."""
        try:
            lines = (self.dir / "progress.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        attempt = max((p.get("attempt", 1) for p in out), default=1)
        return [p for p in out if p.get("attempt", 1) == attempt]

    def finish(self, outcome: dict) -> None:
        """Record how the training ended; from now on it is over."""
        atomic_write_json(self.dir / "outcome.json", {**outcome, "training_id": self.id, "finished": time.time()})

    def reopen(self) -> None:
        """Forget a failed outcome so the training can run again (``--retry``)."""
        outcome = self.outcome()
        if outcome and outcome.get("state") == "done":
            raise TrainingError(f"training {self.id} already published version {outcome.get('version')}; "
                                "start a new training instead")
        if self.owner_alive():
            run = self.run_record() or {}
            raise TrainingError(f"training {self.id} is running on {run.get('host')} (pid {run.get('pid')}); "
                                f"follow it with `digitq training {self.id}`")
        if outcome:
            os.replace(self.dir / "outcome.json", self.dir / f"outcome.{int(time.time())}.json")

    # -- reading ----------------------------------------------------------

    def status(self) -> dict:
        """A truthful summary from the files on disk."""
        req, outcome, run = self.request, self.outcome(), self.run_record()
        epochs = self.progress()
        last = epochs[-1] if epochs else {}
        if outcome:
            state = outcome.get("state", "failed")
        elif run and not run.get("ended") and self.owner_alive(run):
            state = "running"
        elif run:
            state = "interrupted"
        elif req.get("eta") and req["eta"] > time.time():
            state = "scheduled"
        else:
            state = "queued"
        outcome = outcome or {}
        return {
            "training_id": self.id,
            "state": state,
            "version": outcome.get("version"),
            "promoted": bool(outcome.get("promoted", False)),
            "accuracy": outcome.get("accuracy"),
            "baseline_accuracy": outcome.get("baseline_accuracy"),
            "baseline_version": outcome.get("baseline_version"),
            "reason": outcome.get("reason") or outcome.get("error"),
            "epoch": last.get("epoch", 0),
            "epochs": req.get("epochs"),
            "loss": last.get("loss"),
            "train_accuracy": last.get("accuracy"),
            "sources": req.get("sources", []),
            "from_version": req.get("from_version"),
            "promote": req.get("promote"),
            "by": req.get("by"),
            "created": req.get("created"),
            "eta": req.get("eta"),
            "started": (run or {}).get("started"),
            "finished": outcome.get("finished"),
            "attempt": (run or {}).get("attempt", 0),
            "host": (run or {}).get("host"),
            "log": str(self.log_path.resolve()),
        }


def create_training(trainings_dir: Path, *, sources: list[str], epochs: int, from_version: str | None,
                    holdout: float, seed: int, promote: str, by: str, eta: float | None = None) -> Training:
    """Write a new training request (nothing is sent yet)."""
    training_id = new_job_id()
    directory = Path(trainings_dir) / training_id
    directory.mkdir(parents=True, exist_ok=False)
    request = {"training_id": training_id, "created": time.time(), "sources": list(sources), "epochs": epochs,
               "from_version": from_version, "holdout": holdout, "seed": seed, "promote": promote, "by": by,
               "eta": eta}
    atomic_write_json(directory / "request.json", request)
    return Training(directory, request)


def list_trainings(trainings_dir: Path) -> list[str]:
    """Training ids, newest first."""
    return list_ids(trainings_dir, "request.json")


def active_trainings(trainings_dir: Path, by: str | None = None) -> list[dict]:
    """Statuses of the trainings that are scheduled, queued or running (optionally only those ``by``)."""
    out = []
    for training_id in list_trainings(trainings_dir):
        training = Training.load(trainings_dir, training_id)
        if by is not None and training.request.get("by") != by:
            continue
        status = training.status()
        if status["state"] in ACTIVE_STATES:
            out.append(status)
    return out


def send_training(settings: Settings, training: Training, *, countdown: float | None = None,
                  eta: float | None = None) -> None:
    """Send the training's task by name to the ``train`` queue."""
    from datetime import datetime

    from digitq.broker import TRAIN_TASK, client_app, redact
    from digitq.errors import BrokerError

    options: dict = {"queue": settings.train_queue}
    if countdown:
        options["countdown"] = countdown
    if eta:
        options["eta"] = datetime.fromtimestamp(eta, tz=UTC)
    app = client_app(settings)
    try:
        app.send_task(TRAIN_TASK, args=[training.id], **options)
    except Exception as e:
        raise BrokerError(f"sending training {training.id} to Redis at {redact(settings.redis_url)} failed ({e}); "
                          f"the request is saved: run `digitq train --retry {training.id}` once Redis is back") from e
    finally:
        app.close()
