"""Jobs on disk: the manifest is the source of truth, results are committed per batch.

``DIGITQ_DATA_DIR/jobs/<job_id>/`` holds

- ``files.jsonl``: every image file of the job, in order, one JSON line each;
- ``job.json``: the header (pinned model version, batch sizes, ``--out`` target),
  written last, so a job exists once it is complete on disk;
- ``results/<batch>.jsonl``: one committed result per batch, created atomically
  by whichever worker committed it first and never replaced: a later outcome of the
  batch (a duplicate, a redelivery, a re-send) is discarded, and counted in
  ``discarded/``;
- ``failed/<batch>.json``: a batch that failed for good, until ``resume``;
- ``predictions.csv`` and ``done.json``: the merge, once every batch is committed.

Completion is decided by which result files exist, never by a counter, so a
duplicate delivery cannot finish a job early or twice.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from digitq.disk import csvfile
from digitq.disk.records import Record, State, Status, new_id, read_json
from digitq.disk.scores import DIGEST
from digitq.disk.storage import atomic_open, create_once
from digitq.errors import JobError, JobNotFound

_json_string = json.encoder.encode_basestring_ascii
_json_decode = json.JSONDecoder().decode
_RESULT_RE = re.compile(r"^([0-9]{6,})\.jsonl\Z")
FORMAT = 1
#: A committed batch: a JSON head line, a JSON line of the rows' digests, then the rows as CSV lines.
RESULT_FORMAT = "csv+digests"


class FileEntry(NamedTuple):
    """One file of a job: its display path, size, any error known at scan time, and (for
    ``--incremental`` scans) the digest of its bytes (:data:`digitq.disk.scores.DIGEST`). A tuple: a
    million are built per scan, at a fifth of a frozen dataclass's cost."""

    path: str
    size: int = 0
    error: str | None = None
    digest: str | None = None

    def to_json(self) -> str:
        # What json.dumps([path, size, error]) writes, without its per-call set-up (a million lines a scan).
        error = "null" if self.error is None else _json_string(self.error)
        sha = "" if self.digest is None else f", {_json_string(self.digest)}"
        return f"[{_json_string(self.path)}, {int(self.size)}, {error}{sha}]"

    @classmethod
    def from_json_lines(cls, lines: Sequence[str]) -> list[FileEntry]:
        """Many manifest lines in one JSON decode (a batch of 512 at a third of the cost of one by one)."""
        return [cls(*item) for item in _json_decode("[" + ",".join(lines) + "]")] if lines else []


@dataclass(frozen=True)
class Row:
    """One output row: a prediction or an error for one file."""

    path: str
    prediction: int | None = None
    confidence: float | None = None
    error: str | None = None
    #: Whether the row follows from the file's bytes alone (a prediction, a decode error), so that the
    #: content-hash index may keep it; a read failure or a quarantine does not.
    lasting: bool = field(default=True, compare=False, repr=False)
    #: The digest (:data:`digitq.disk.scores.DIGEST`) of the bytes this row scored, or that the index entry it
    #: came from was recorded under; None when no bytes were read.
    digest: str | None = field(default=None, compare=False, repr=False)


def create_job(
    jobs_dir: Path,
    files: Iterable[FileEntry],
    batch_sizes: Sequence[int],
    *,
    model_version: str,
    sources: Sequence[str],
    by_path: bool,
    out: str | None,
    skipped: int = 0,
    job_id: str | None = None,
    incremental: bool = False,
) -> Job:
    """Write a new job's manifest and return it.

    ``files`` is streamed to disk (a million entries never sit in memory at once);
    ``batch_sizes`` is read after it is consumed, so a planner may fill it as it goes.
    """
    job_id = Job.check_id(job_id or new_id())
    directory = Path(jobs_dir) / job_id
    (directory / "results").mkdir(parents=True, exist_ok=False)
    total = 0
    with atomic_open(directory / "files.jsonl", "w", encoding="utf-8") as f:
        for entry in files:
            f.write(entry.to_json() + "\n")
            total += 1
    if sum(batch_sizes) != total:
        raise JobError(f"batch sizes add up to {sum(batch_sizes)}, but the job has {total} files")
    header = {
        "format": FORMAT,
        "job_id": job_id,
        "created": time.time(),
        "model_version": model_version,
        "total": total,
        "skipped": skipped,
        "batch_sizes": list(batch_sizes),
        "sources": list(sources),
        "cwd": os.getcwd(),
        "by_path": by_path,
        "out": out,
        "incremental": incremental,
    }
    return Job._publish(directory, header)


def list_jobs(jobs_dir: Path) -> list[str]:
    """Job ids under ``jobs_dir``, newest first."""
    return Job.ids(jobs_dir)


@dataclass(frozen=True)
class JobStatus(Status):
    """A job's summary (``digitq status --json``), fields in output order."""

    job_id: str
    state: State
    total: int
    done: int
    errors: int
    skipped: int
    batches: int
    batches_done: int
    failed_batches: dict[str, str]
    model_version: str
    output: str
    out: str | None
    created: float
    started: float | None
    finished: float | None
    last_commit: float | None
    elapsed_s: float | None
    rate_per_s: float | None
    #: Later outcomes of committed batches that were discarded (the first commit of a batch stands).
    duplicates: int = 0


class Job(Record):
    """A job's directory: read its manifest, commit batch results, merge the CSV."""

    kind = "job"
    header_file = "job.json"
    error = JobError
    not_found = JobNotFound

    def __init__(self, directory: Path, header: dict):
        super().__init__(directory, header)
        self._result_cache: dict[str, tuple[int, dict]] = {}

    # -- manifest -------------------------------------------------------

    @property
    def model_version(self) -> str:
        return self.header["model_version"]

    @property
    def total(self) -> int:
        return self.header["total"]

    @property
    def batch_sizes(self) -> list[int]:
        return self.header["batch_sizes"]

    @property
    def n_batches(self) -> int:
        return len(self.batch_sizes)

    @property
    def csv_path(self) -> Path:
        return self.dir / "predictions.csv"

    def batches(self, wanted: Container[int] | None = None) -> Iterator[tuple[int, list[FileEntry]]]:
        """``(index, files)`` for every batch (or those ``wanted``), streamed from the manifest."""
        with open(self.dir / "files.jsonl", encoding="utf-8") as f:
            for index, size in enumerate(self.batch_sizes):
                lines = [f.readline() for _ in range(size)]
                if wanted is None or index in wanted:
                    yield index, FileEntry.from_json_lines(lines)

    def rows(self) -> list[tuple[FileEntry, dict[str, str]]]:
        """The finished CSV's rows, each with its manifest entry (the path as scanned: the CSV's cells
        are neutralised for spreadsheets) and, as ``row["digest"]``, the digest of the bytes it scored."""
        if not self.is_done():
            raise JobError(f"job {self.id} is not done yet: `digitq wait {self.id}` first")
        rows = csvfile.read(self.csv_path)
        entries = [entry for _, files in self.batches() for entry in files]
        digests = [d for batch in range(self.n_batches) for d in self.result_digests(batch)]
        if not len(entries) == len(rows) == len(digests):
            raise JobError(f"job {self.id}: the CSV holds {len(rows)} rows for {len(entries)} files")
        for row, digest in zip(rows, digests, strict=True):
            row["digest"] = digest
        return list(zip(entries, rows, strict=True))

    # -- results --------------------------------------------------------

    def result_path(self, batch: int) -> Path:
        return self.dir / "results" / f"{batch:06d}.jsonl"

    def committed(self) -> set[int]:
        """Indexes of the batches whose result is on disk."""
        found = set()
        for name in os.listdir(self.dir / "results"):
            m = _RESULT_RE.fullmatch(name)
            if m and int(m.group(1)) < self.n_batches:
                found.add(int(m.group(1)))
        return found

    def commit(self, batch: int, rows: Sequence[Row], *, model_version: str, started: float,
               host: str | None = None, pid: int | None = None) -> bool:
        """Commit the result of one batch, atomically, unless it is committed already: True when this call
        committed it. A later outcome of the batch is discarded and counted (:meth:`discarded`): a result is
        never replaced, so the merged CSV, the result files and their digests agree whenever a duplicate
        arrives. ``host`` and ``pid``: the worker process that predicted it, when another process commits it."""
        if not 0 <= batch < self.n_batches:
            raise JobError(f"job {self.id} has no batch {batch} (it has {self.n_batches})")
        if len(rows) != self.batch_sizes[batch]:
            raise JobError(f"job {self.id} batch {batch}: {len(rows)} rows for {self.batch_sizes[batch]} files")
        head = {
            "batch": batch,
            # The rows' digests on one line, then the rows as finished CSV lines: the merge only concatenates.
            # Not "csv": that format has no digests line (see result_csv).
            "format": RESULT_FORMAT,
            "rows": len(rows),
            "errors": sum(1 for r in rows if r.error),
            "model_version": model_version,
            "started": started,
            "finished": time.time(),
            "host": host or socket.gethostname(),
            "pid": pid or os.getpid(),
            # The digests line lists, row by row, the digest of the bytes each row scored (review and report
            # show a file only while its bytes still have it). Not in the CSV: it is for digitq, not readers.
            "digest": DIGEST,
        }
        body = csvfile.render(
            ({"path": r.path, "prediction": r.prediction, "confidence": r.confidence,
              "model_version": model_version, "error": r.error} for r in rows), header=False)
        digests = json.dumps([r.digest for r in rows], separators=(",", ":"))
        # The temp file beside results/, not in it: results/'s mtime is the last commit (last_commit).
        if not create_once(self.result_path(batch), json.dumps(head) + "\n" + digests + "\n" + body, self.dir):
            self.record_discarded(batch, host=head["host"], pid=head["pid"])
            return False
        (self.dir / "failed" / f"{batch:06d}.json").unlink(missing_ok=True)
        return True

    def record_discarded(self, batch: int, *, host: str | None = None, pid: int | None = None) -> None:
        """Count a later outcome (or delivery) of a committed batch that was discarded: one file each in
        ``discarded/``, so that concurrent discards never lose a count."""
        (self.dir / "discarded").mkdir(exist_ok=True)
        record = {"batch": batch, "host": host or socket.gethostname(), "pid": pid or os.getpid(), "at": time.time()}
        name = f"{batch:06d}-{os.getpid()}-{os.urandom(4).hex()}.json"
        create_once(self.dir / "discarded" / name, json.dumps(record) + "\n", self.dir)

    def discarded(self) -> int:
        """How many later outcomes of committed batches were discarded (:meth:`record_discarded`)."""
        try:
            return sum(1 for name in os.listdir(self.dir / "discarded") if not name.startswith("."))
        except FileNotFoundError:
            return 0

    def result_header(self, batch: int) -> dict | None:
        """The first line of a committed result (counts and timings), cached by mtime."""
        path = self.result_path(batch)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        cached = self._result_cache.get(path.name)
        if cached and cached[0] == mtime:
            return cached[1]
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
        self._result_cache[path.name] = (mtime, head)
        return head

    def result_csv(self, batch: int) -> bytes:
        """The committed rows of one batch as CSV lines (no header)."""
        with open(self.result_path(batch), "rb") as f:
            head = json.loads(f.readline())
            if head.get("format") == RESULT_FORMAT:
                f.readline()  # the digests
                return f.read()
            body = f.read()
        if head.get("format") == "csv":  # CSV lines without a digests line
            return body
        # The JSON-lines format: rendered here.
        version = head.get("model_version", self.model_version)
        rows = (json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip())
        return csvfile.render(({"path": p, "prediction": d, "confidence": c, "model_version": version, "error": e}
                               for p, d, c, e in rows), header=False).encode("utf-8")

    def result_digests(self, batch: int) -> list[str | None]:
        """The digest of the bytes each row of a committed batch scored, in row order (None for a row that
        read no bytes, and for every row of a result written before digitq recorded digests)."""
        with open(self.result_path(batch), "rb") as f:
            head = json.loads(f.readline())
            if head.get("format") == RESULT_FORMAT and head.get("digest") == DIGEST:
                return json.loads(f.readline())
        return [None] * int(head.get("rows", 0))

    def mark_failed(self, batch: int, error: str) -> None:
        """Record that a batch failed for good (``resume`` retries it)."""
        (self.dir / "failed").mkdir(exist_ok=True)
        self.write_json(f"failed/{batch:06d}.json", {"batch": batch, "error": error, "at": time.time()})

    def failed(self, committed: set[int] | None = None) -> dict[int, str]:
        """Failed batches and their errors, except those committed since."""
        out = {}
        committed = self.committed() if committed is None else committed
        for path in sorted((self.dir / "failed").glob("*.json")):
            rec = read_json(path)
            if rec is None:
                continue
            if rec.get("batch") not in committed:
                out[int(rec["batch"])] = str(rec.get("error", "unknown error"))
        return out

    def clear_failed(self) -> None:
        for path in (self.dir / "failed").glob("*.json"):
            path.unlink(missing_ok=True)

    # -- completion -----------------------------------------------------

    def is_complete(self) -> bool:
        return len(self.committed()) == self.n_batches

    def is_done(self) -> bool:
        return (self.dir / "done.json").is_file() and self.csv_path.is_file()

    def finalize(self) -> bool:
        """Merge all batch results into ``predictions.csv`` once every batch is committed.

        Safe to call any number of times, from any process: it does nothing
        before the last commit, and the merge is deterministic and atomic.
        Returns True when the job is done.
        """
        if self.is_done():
            return True
        if not self.is_complete():  # the one listing of results/ a merge costs
            return False
        heads = [self.result_header(batch) or {} for batch in range(self.n_batches)]
        rows = sum(int(h.get("rows", 0)) for h in heads)
        if rows != self.total:
            raise JobError(f"job {self.id}: results hold {rows} rows for {self.total} files; run `digitq resume`")
        errors = sum(int(h.get("errors", 0)) for h in heads)
        with atomic_open(self.csv_path) as f:
            # One batch in memory at a time: the merge's memory does not grow with the job.
            f.write(csvfile.header_line())
            for batch in range(self.n_batches):
                f.write(self.result_csv(batch))
        self.write_json("done.json", {
            "finished": time.time(), "rows": rows, "errors": errors,
            "started": min((h.get("started", time.time()) for h in heads), default=None),
        })
        return True

    # -- status ---------------------------------------------------------

    def last_commit(self, committed: set[int] | None = None) -> float | None:
        """When the job's last batch was committed (None before any): every commit renames a file into
        ``results/``, so the directory's mtime is the last one."""
        committed = self.committed() if committed is None else committed
        return os.stat(self.dir / "results").st_mtime if committed else None

    def snapshot(self) -> JobStatus:
        """A truthful summary built from the files on disk."""
        committed = self.committed()
        heads = [h for h in (self.result_header(b) for b in sorted(committed)) if h]
        done_count = sum(h["rows"] for h in heads)
        errors = sum(h["errors"] for h in heads)
        failed = self.failed(committed)
        done_info = self.read_json("done.json") if self.is_done() else None
        if done_info:
            state = State.DONE
        elif failed:
            state = State.FAILED
        elif committed:
            state = State.RUNNING
        else:
            state = State.QUEUED
        created = self.header["created"]
        started = min((h["started"] for h in heads), default=None)
        last_commit = self.last_commit(committed)
        finished = done_info["finished"] if done_info else None
        end = finished or time.time()
        elapsed = end - (started or created)
        return JobStatus(
            job_id=self.id,
            state=state,
            total=self.total,
            done=done_count,
            errors=errors,
            skipped=self.header.get("skipped", 0),
            batches=self.n_batches,
            batches_done=len(committed),
            failed_batches={str(k): v for k, v in failed.items()},
            model_version=self.model_version,
            output=str(self.csv_path.resolve()),
            out=self.header.get("out"),
            created=created,
            started=started,
            finished=finished,
            last_commit=last_commit,
            elapsed_s=round(elapsed, 3) if started else None,
            rate_per_s=round(done_count / elapsed, 1) if started and elapsed > 0 else None,
            duplicates=self.discarded(),
        )

