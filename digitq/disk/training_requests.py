"""Trainings on disk, like jobs: the request, who runs it, its progress, its outcome.

``DIGITQ_DATA_DIR/trainings/<training_id>/`` holds

- ``request.json``: what to train (sources, epochs, parent version, promotion
  policy), written before anything is sent, so a request no worker has taken
  yet is ``queued`` and can be re-sent (``digitq train --retry ID``);
- ``run.json``: the host and pid running it, with a heartbeat, rewritten
  every few seconds while it runs (a dead owner means ``interrupted``);
  written only by the delivery that won the claim: an atomic lease in Redis
  (``SET NX PX``, see :mod:`digitq.bus.holders`), so that two concurrent deliveries
  (a duplicate, ``train --retry`` of a message that was not lost) never both train;
  a run that finds its lease taken (or lapsed: Redis silent, the process paused for
  longer than :data:`STALE_AFTER_S`) stops at its next epoch and publishes nothing, or,
  past publishing, promotes nothing and leaves the version to the next delivery
  (:class:`TrainingUnfinished`), which promotes it on the gate's recorded decision;
- ``progress.jsonl``: one line per finished epoch (loss, accuracy, validation);
- ``train.log``: the log of every attempt;
- ``outcome.json``: how it ended: the published version or the error; written
  once (``os.link``, atomic and exclusive), never overwritten.

Only the outcome says a training is over; a duplicate delivery that finds
it does nothing. No TensorFlow here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from digitq.bus import keys
from digitq.bus.holders import UNKNOWN, Holder, Lease
from digitq.disk.records import Record, State, Status, new_id
from digitq.errors import TrainingError, TrainingNotFound
from digitq.settings import Settings

#: A run whose heartbeat is older than this, on another host, is taken as dead (and its claim lapses).
STALE_AFTER_S = 60.0
HEARTBEAT_S = 5.0
log = logging.getLogger("digitq.training")


class TrainingClaimed(TrainingError):
    """Another live process holds this training's claim: this delivery is a duplicate."""

    def __init__(self, training_id: str, holder: Holder):
        super().__init__(f"training {training_id} is already being trained by {holder.describe()}")
        self.holder = holder


class TrainingLost(TrainingError):
    """This run's claim was taken over, or may have been: it must stop, and publish nothing."""

    def __init__(self, training_id: str, holder: Holder | None):
        who = holder.describe() if holder is not None else "another delivery"
        super().__init__(f"training {training_id}: this run lost its claim (now: {who}); it stopped and "
                         "published nothing, the delivery holding the claim records the outcome")


class TrainingUnfinished(TrainingClaimed):
    """The training's version is published, but this run lost its claim before recording the outcome (and,
    maybe, before promoting it): the delivery holding the claim finishes it, or the task, asked again later,
    does (see :func:`model.training.run.run_training`)."""

    def __init__(self, training_id: str, version: str, holder: Holder | None):
        TrainingError.__init__(self, f"training {training_id}: version {version} is published, but this run lost "
                               f"its claim (now: {(holder or UNKNOWN).describe()}) before recording the outcome; "
                               "the next delivery promotes it if its gate decided so and records the outcome "
                               f"(or `digitq train --retry {training_id}`)")
        self.holder = holder or UNKNOWN
        self.version = version


def claim_key(training_id: str) -> str:
    return keys.training_claim(training_id)

ACTIVE_STATES = (State.SCHEDULED, State.QUEUED, State.RUNNING)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class TrainingStatus(Status):
    """A training's summary (``digitq training --json``), fields in output order."""

    training_id: str
    #: A :class:`State`, or an outcome's word this digitq does not know, as written.
    state: State | Any
    version: str | None
    promoted: bool
    accuracy: float | None
    baseline_accuracy: float | None
    baseline_version: str | None
    reason: str | None
    # The published version's calibration and the robustness suite, both versions per shift.
    ece: float | None
    temperature: float | None
    robustness: dict | None
    epoch: int
    epochs: int | None
    loss: float | None
    train_accuracy: float | None
    sources: list[str]
    from_version: str | None
    promote: str | None
    by: str | None
    created: float | None
    eta: float | None
    started: float | None
    finished: float | None
    attempt: int
    host: str | None
    log: str


class Training(Record):
    """One training's directory; its header is the request (``request.json``)."""

    kind = "training"
    header_file = "request.json"
    error = TrainingError
    not_found = TrainingNotFound
    # The request is polled from any host (`digitq trainings`, beat): one half-visible on a lazy network mount
    # is not there yet, as it always was.
    missing_if_unreadable = True

    def __init__(self, directory: Path, request: dict):
        super().__init__(directory, request)
        self.lease: Lease | None = None  # this process's claim, while :meth:`running`

    @property
    def request(self) -> dict:
        """The request: what to train (the record's header)."""
        return self.header

    @property
    def log_path(self) -> Path:
        return self.dir / "train.log"

    # -- what workers write ---------------------------------------------

    def outcome(self) -> dict | None:
        return self.read_json("outcome.json")

    def run_record(self) -> dict | None:
        return self.read_json("run.json")

    def owner_alive(self, run: dict | None = None) -> bool:
        """Whether the process that claimed this training still runs it."""
        run = self.run_record() if run is None else run
        if not run or run.get("ended"):
            return False
        holder = Holder.from_token(run["holder"]) if run.get("holder") else None
        if holder is not None:
            if holder.local():
                return holder.running()
        elif run.get("host") == socket.gethostname():  # a run.json that names no holder
            return _pid_alive(int(run.get("pid", 0)))
        return time.time() - float(run.get("heartbeat", 0)) < STALE_AFTER_S

    def claim(self, settings: Settings) -> Lease:
        """Claim the training for this process, atomically: a lease in Redis that the heartbeat of
        :meth:`running` keeps. Raises :class:`TrainingClaimed` when a live process holds it.

        A claimant SIGKILLed on this host is known dead at once (its pid), so a redelivery takes the
        claim over; one on another host is, once its lease lapses (:data:`STALE_AFTER_S`)."""
        from redis.exceptions import RedisError

        from digitq.bus.broker import redact, redis_client

        lease = Lease(redis_client(settings), claim_key(self.id), STALE_AFTER_S)
        try:
            holder = lease.acquire()
        except RedisError as e:
            raise TrainingError(f"training {self.id}: cannot claim it in Redis at {redact(settings.redis_url)} "
                                f"({e}); run `digitq train --retry {self.id}` once Redis is back") from e
        if holder is not None:
            raise TrainingClaimed(self.id, holder)
        return lease

    @contextmanager
    def running(self, lease: Lease | None = None) -> Iterator[int]:
        """Record this process as running the training (``run.json``) and keep a heartbeat, and the
        claim ``lease``, while the block runs; give the claim up after it.

        Yields the attempt number (1 for the first run)."""
        previous = self.run_record() or {}
        attempt = int(previous.get("attempt", 0)) + 1
        holder = lease.holder if lease is not None else Holder.me()
        record = {"host": socket.gethostname(), "pid": os.getpid(), "holder": holder.token(), "attempt": attempt,
                  "started": time.time(), "heartbeat": time.time()}
        self.write_json("run.json", record)
        self.lease = lease
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                # The claim first: a run that lost it no longer writes anything the new holder owns.
                if lease is not None and _keep(lease, self.id) is not None:
                    return
                record["heartbeat"] = time.time()
                try:
                    self.write_json("run.json", record)
                except OSError:
                    pass  # a missed beat only makes the run look older

        thread = threading.Thread(target=beat, name="digitq-training-heartbeat", daemon=True)
        thread.start()
        try:
            yield attempt
        finally:
            stop.set()
            thread.join()
            self.lease = None
            if lease is not None and lease.lost.is_set():
                self._end_lost_run(record, lease.taker)
            else:
                record.update(heartbeat=time.time(), ended=time.time())
                try:
                    self.write_json("run.json", record)
                finally:
                    if lease is not None:
                        release_claim(lease, self.id)

    def _end_lost_run(self, record: dict, taker: Holder | None) -> None:
        """A run that lost its claim: mark ``run.json`` ended only if it is still this run's (the new holder
        rewrites its own every beat), and say so in the log."""
        log.error("training %s: attempt %d (pid %d) was superseded: its claim is held by %s; it published "
                  "nothing and records no outcome", self.id, record["attempt"], record["pid"],
                  (taker or UNKNOWN).describe())
        current = self.run_record() or {}
        if current.get("holder") == record["holder"] and current.get("started") == record["started"]:
            try:
                self.write_json("run.json", {**record, "heartbeat": time.time(), "ended": time.time(),
                                                          "lost": True})
            except OSError:
                pass

    def claim_lost(self) -> bool:
        """Whether the claim of this process's run is lost (checked by every epoch, and before publishing)."""
        lease = self.lease
        return lease is not None and lease.lost.is_set()

    def check_claim(self) -> None:
        """Raise :class:`TrainingLost` when this run's claim is lost: it must not train on, publish or promote."""
        lease = self.lease
        if lease is not None and lease.lost.is_set():
            raise TrainingLost(self.id, lease.taker)

    def still_claimed(self, lease: Lease) -> bool:
        """Whether ``lease`` is still this process's claim: refreshed now, never taken again once another
        holder was seen in it or it could have lapsed (see :meth:`Lease.keep`); False for good after that."""
        return _keep(lease, self.id, may_retake=lambda: self.outcome() is None) is None

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

    def finish(self, outcome: dict) -> bool:
        """Record how the training ended; from now on it is over. Never replaces an outcome already there
        (written whole to a temporary file, then hard-linked into place: atomic and exclusive). Returns
        whether this outcome is the one recorded."""
        path = self.dir / "outcome.json"
        tmp = self.dir / f".outcome.{os.getpid()}.{threading.get_ident()}.tmp"
        self.write_json(tmp.name, {**outcome, "training_id": self.id, "finished": time.time()})
        try:
            os.link(tmp, path)
        except FileExistsError:
            log.error("training %s: an outcome is already recorded (%s); this one (%s) is not", self.id,
                      (self.outcome() or {}).get("state"), outcome.get("state"))
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def reopen(self) -> None:
        """Forget a failed outcome so the training can run again (``--retry``)."""
        outcome = self.outcome()
        if outcome and outcome.get("state") == State.DONE:
            raise TrainingError(f"training {self.id} already published version {outcome.get('version')}; "
                                "start a new training instead")
        if self.owner_alive():
            run = self.run_record() or {}
            raise TrainingError(f"training {self.id} is running on {run.get('host')} (pid {run.get('pid')}); "
                                f"follow it with `digitq training {self.id}`")
        if outcome:
            os.replace(self.dir / "outcome.json", self.dir / f"outcome.{int(time.time())}.json")

    # -- reading ----------------------------------------------------------

    def snapshot(self) -> TrainingStatus:
        """A truthful summary from the files on disk."""
        req, outcome, run = self.request, self.outcome(), self.run_record()
        epochs = self.progress()
        last = epochs[-1] if epochs else {}
        if outcome:
            state = State.of(outcome.get("state", State.FAILED))
        elif run and not run.get("ended") and self.owner_alive(run):
            state = State.RUNNING
        elif run:
            state = State.INTERRUPTED
        elif req.get("eta") and req["eta"] > time.time():
            state = State.SCHEDULED
        else:
            state = State.QUEUED
        outcome = outcome or {}
        return TrainingStatus(
            training_id=self.id,
            state=state,
            version=outcome.get("version"),
            promoted=bool(outcome.get("promoted", False)),
            accuracy=outcome.get("accuracy"),
            baseline_accuracy=outcome.get("baseline_accuracy"),
            baseline_version=outcome.get("baseline_version"),
            reason=outcome.get("reason") or outcome.get("error"),
            ece=outcome.get("ece"),
            temperature=outcome.get("temperature"),
            robustness=outcome.get("robustness"),
            epoch=last.get("epoch", 0),
            epochs=req.get("epochs"),
            loss=last.get("loss"),
            train_accuracy=last.get("accuracy"),
            sources=req.get("sources", []),
            from_version=req.get("from_version"),
            promote=req.get("promote"),
            by=req.get("by"),
            created=req.get("created"),
            eta=req.get("eta"),
            started=(run or {}).get("started"),
            finished=outcome.get("finished"),
            attempt=(run or {}).get("attempt", 0),
            host=(run or {}).get("host"),
            log=str(self.log_path.resolve()),
        )


def _keep(lease: Lease, training_id: str, may_retake=None) -> Holder | None:
    """Refresh the claim: None while it is ours (or Redis cannot say yet, within the lease's TTL), else the
    holder that took it (:data:`digitq.bus.holders.UNKNOWN` when it lapsed); lost for good from then on."""
    from redis.exceptions import RedisError

    was_lost = lease.lost.is_set()
    try:
        holder = lease.keep(may_retake)
    except RedisError as e:
        log.warning("training %s: could not refresh its claim in Redis (%s); it is lost once that lasts %.0f s",
                    training_id, e, lease.ttl_s)
        return None
    if holder is not None and not was_lost:
        log.error("training %s: this run lost its claim (now: %s); it stops and publishes nothing", training_id,
                  holder.describe())
    return holder


def release_claim(lease: Lease, training_id: str) -> None:
    """Give the claim up (a delivery that found nothing left to do, or a finished run)."""
    from redis.exceptions import RedisError

    try:
        lease.release()
    except RedisError as e:  # it lapses by itself within STALE_AFTER_S
        log.warning("training %s: could not release its claim in Redis (%s)", training_id, e)


def create_training(trainings_dir: Path, *, sources: list[str], epochs: int, from_version: str | None,
                    holdout: float, seed: int, promote: str, by: str, eta: float | None = None) -> Training:
    """Write a new training request (nothing is sent yet)."""
    training_id = new_id()
    directory = Path(trainings_dir) / training_id
    directory.mkdir(parents=True, exist_ok=False)
    request = {"training_id": training_id, "created": time.time(), "sources": list(sources), "epochs": epochs,
               "from_version": from_version, "holdout": holdout, "seed": seed, "promote": promote, "by": by,
               "eta": eta}
    return Training._publish(directory, request)


def list_trainings(trainings_dir: Path) -> list[str]:
    """Training ids, newest first."""
    return Training.ids(trainings_dir)


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

    from digitq.bus import failover
    from digitq.bus.broker import TRAIN_TASK, client_app, redact
    from digitq.errors import BrokerError

    options: dict = {"queue": settings.train_queue}
    if countdown:
        options["countdown"] = countdown
    if eta:
        options["eta"] = datetime.fromtimestamp(eta, tz=UTC)
    app = client_app(settings)
    try:  # through a failover too (beat's periodic runs, `digitq train`): a duplicate trains at most once
        failover.ride(settings, lambda: app.send_task(TRAIN_TASK, args=[training.id], **options),
                      f"sending training {training.id}")
    except Exception as e:
        raise BrokerError(f"sending training {training.id} to Redis at {redact(settings.redis_url)} failed ({e})"
                          f"{failover.explain(settings, e)}; the request is saved: run "
                          f"`digitq train --retry {training.id}` once Redis is back") from e
    finally:
        app.close()

