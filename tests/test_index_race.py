"""Setting a damaged content-hash index aside races with workers recording into the new one: real processes,
started together on each of many damaged indexes. Nothing but the damaged file (and its own journal) is ever
moved, and every row a worker recorded is in the index afterwards."""

import fcntl
import json
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from digitq.disk import scores

ROUNDS = 120
WRITES = 15  # record() calls per writer and round, 40 rows each
GARBAGE = b"this is not an SQLite database " * 200


def _set_aside_rounds(root: str, rounds: int, barrier, way: str) -> None:
    """As producers do at once: ``repair`` before an incremental scan, or ``set_aside`` after a lookup
    found the index damaged."""
    for r in range(rounds):
        data = Path(root) / f"r{r}"
        barrier.wait()
        for _ in range(3):
            if way == "repair":
                scores.repair(data)
                continue
            try:
                scores.lookup(data, "1", ["0" * 64])
            except sqlite3.Error as e:
                if scores.is_corrupt(e):
                    scores.set_aside(data)
        barrier.wait()


def _write_rounds(root: str, rounds: int, barrier, name: str) -> None:
    """As workers do: record scores, over and over; a row counts as recorded once ``record`` returned."""
    for r in range(rounds):
        data = Path(root) / f"r{r}"
        barrier.wait()
        recorded: list[str] = []
        for i in range(WRITES):
            rows = [(scores.digest(f"{name}-{r}-{i}-{k}".encode()), k % 10, 0.5, None) for k in range(40)]
            try:
                scores.record(data, "1", rows)
            except sqlite3.Error:
                continue  # the damaged index, not yet set aside: nothing recorded
            recorded.extend(row[0] for row in rows)
        (data / f"recorded-{name}.json").write_text(json.dumps(recorded))
        barrier.wait()


def test_setting_a_damaged_index_aside_never_moves_a_new_index_its_journal_or_its_rows(tmp_path):
    for r in range(ROUNDS):
        index = scores.index_path(tmp_path / f"r{r}")
        index.parent.mkdir(parents=True)
        index.write_bytes(GARBAGE)
    ctx = multiprocessing.get_context("spawn")  # no fork of a test process that may hold TensorFlow's threads
    barrier = ctx.Barrier(5, timeout=120)
    procs = [ctx.Process(target=_set_aside_rounds, args=(str(tmp_path), ROUNDS, barrier, way))
             for way in ("repair", "lookup", "repair")]
    procs += [ctx.Process(target=_write_rounds, args=(str(tmp_path), ROUNDS, barrier, f"w{n}")) for n in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
    assert [proc.exitcode for proc in procs] == [0] * len(procs)

    new_moved = journals_moved = lost = recorded_total = 0
    for r in range(ROUNDS):
        data = tmp_path / f"r{r}"
        index = scores.index_path(data)
        aside = sorted(index.parent.glob(index.name + ".corrupt-*"))
        journals_moved += sum(p.name.endswith("-journal") for p in aside)  # the damaged file had none
        files = [p for p in aside if not p.name.endswith("-journal")]
        assert sum(p.read_bytes() == GARBAGE for p in files) == 1, files  # the damaged one, set aside once
        new_moved += len(files) - 1
        recorded = [d for f in data.glob("recorded-*.json") for d in json.loads(f.read_text())]
        recorded_total += len(recorded)
        lost += len(set(recorded) - set(scores.lookup(data, "1", recorded)))
    assert (new_moved, journals_moved, lost) == (0, 0, 0)
    assert recorded_total >= ROUNDS * 40  # the writers did write into each new index, as the race was run



def test_a_stopped_lock_holder_costs_the_index_not_the_commit(tmp_path, monkeypatch):
    """A holder that never lets go (a paused scan, a dead NFS client) makes connections and a set-aside give
    up after the lock's deadline with a busy error, which callers treat as a cache miss, instead of
    stalling every commit; the index itself is untouched."""
    scores.record(tmp_path, "1", [(scores.digest(b"x"), 3, 0.5, None)])
    path = scores.index_path(tmp_path)
    monkeypatch.setattr(scores, "LOCK_WAIT_S", 0.3)
    held = os.open(path.with_name(path.name + ".lock"), os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # its own open file description: as another process's lock
    try:
        with pytest.raises(sqlite3.OperationalError) as busy:
            scores.lookup(tmp_path, "1", [scores.digest(b"x")])
        assert not scores.is_corrupt(busy.value)
        with pytest.raises(sqlite3.OperationalError):
            scores.record(tmp_path, "1", [(scores.digest(b"y"), 4, 0.5, None)])
        with pytest.raises(sqlite3.OperationalError):
            scores.set_aside(tmp_path, os.stat(path))
    finally:
        os.close(held)
    assert path.exists()
    assert scores.lookup(tmp_path, "1", [scores.digest(b"x")]) == {scores.digest(b"x"): (3, 0.5, None)}
