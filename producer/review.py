"""``digitq review JOB``: export a finished job's doubtful images into a folder a person can label.

``DIR/<predicted digit>/<name>`` for each image below the confidence threshold, the
decodable images that got an error row at the top of ``DIR`` (unlabelled), and
``DIR/review.json`` recording each file's source path, digest, prediction, confidence
and job. Only files whose bytes are still those their row scored are exported; the
rest are skipped and listed. A person moves every mislabelled file into its right digit folder (or into
``DIR/discard/``); ``digitq train --data MNIST --data DIR`` then learns from the folder
as it is, counting the moves as corrections (:func:`model.dataset.read_labelled_folder`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from digitq.disk import scores
from digitq.disk.files import read_file
from digitq.disk.jobs import FileEntry, Job
from digitq.disk.paths import REVIEW_MANIFEST, unescape_path
from digitq.disk.storage import atomic_write
from digitq.errors import ConfigError
from digitq.settings import Settings
from producer.dispatch import source_path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DIGITS = frozenset(str(d) for d in range(10))


def _name(digest: str, path: str, taken: set[str]) -> str:
    """A file name safe on any file system, unique in the folder: the digest's prefix and the scanned name,
    with ``-2``, ``-3``... where equal bytes or names that map to the same one would collide."""
    base = os.path.basename(unescape_path(path)).decode("utf-8", "replace")
    name = f"{digest[:12]}-{_UNSAFE.sub('_', base)[-80:] or 'image'}"
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    candidate, n = name, 1
    while candidate.lower() in taken:  # lower: a case-insensitive file system would collide too
        n += 1
        candidate = f"{stem}-{n}{dot}{ext}"
    taken.add(candidate.lower())
    return candidate


def _decodable(data: bytes, decode) -> bool:
    try:
        decode(data)
    except Exception:  # noqa: BLE001 - ImageError, or any decoder failure: not an image to label
        return False
    return True


def scored_bytes(settings: Settings, job: Job, entry: FileEntry, digest: str | None) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` when the file at the scanned path still holds the bytes its row scored, else
    ``(None, why)``: the file changed or was replaced (a symlink to another file, say), is no longer a
    readable regular file, or the row records no digest (it read no bytes, or its result file has no digests line)."""
    if not digest:
        return None, "no digest recorded for this row (scanned before digitq recorded them: scan again)"
    try:
        data = read_file(source_path(job, entry), settings.max_file_bytes + 1, entry.size)
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if scores.digest(data) != digest:
        return None, f"changed since it was scanned (its {scores.DIGEST} digest differs from the row's)"
    return data, None


def _prepare(out: Path) -> None:
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"{out} is not an empty folder; give --out a new folder (a review folder holds one "
                              "job's images)")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the review folder {out} ({e.strerror or e}); give --out a new folder "
                          "in a place you can write") from e


def export_review(settings: Settings, job: Job, below: float, limit: int | None, out: Path) -> dict:
    """Copy the doubtful images of ``job`` into ``out``; return what was exported, and what was skipped.

    A file is exported only while its bytes are those its row scored (:func:`scored_bytes`); others are
    skipped and counted, with their paths, in the summary and in ``review.json``."""
    from model.serving.preprocess import decode_image

    out = Path(out)
    rows = job.rows()  # first: a job that is not done leaves no folder behind
    _prepare(out)
    doubtful = sorted(((entry, row) for entry, row in rows if not row["error"] and float(row["confidence"]) < below),
                      key=lambda pair: float(pair[1]["confidence"]))[:limit]
    failed = [(entry, row) for entry, row in rows if row["error"]]
    files: list[dict] = []
    skipped: list[dict] = []
    taken = {REVIEW_MANIFEST.lower()}
    for entry, row in doubtful + failed:
        data, why = scored_bytes(settings, job, entry, row["digest"])
        if data is None:
            if not row["error"] or row["digest"]:  # error rows that never read bytes have nothing to label
                skipped.append({"source": entry.path, "reason": why})
            continue
        if row["error"] and not _decodable(data, decode_image):
            continue  # not an image anyone could label
        folder = None if row["error"] else row["prediction"]
        if folder is not None and folder not in _DIGITS:  # a CSV edited by hand: never a path
            skipped.append({"source": entry.path, "reason": f"prediction {folder!r} is not a digit"})
            continue
        name = _name(row["digest"], entry.path, taken)
        target = out / folder / name if folder else out / name
        try:
            target.parent.mkdir(exist_ok=True)
            with open(target, "xb") as f:  # "x": never over a file already there, nor through a planted link
                f.write(data)
        except OSError as e:
            raise ConfigError(f"cannot write {target} ({e.strerror or e}); {len(files)} image(s) exported so far "
                              f"to {out}: free space or give --out a new folder, and run review again") from e
        files.append({"file": name, "exported_to": folder, "source": entry.path, "digest": row["digest"],
                      "prediction": int(row["prediction"]) if folder else None,
                      "confidence": float(row["confidence"]) if folder else None, "error": row["error"] or None})
    manifest = {"job_id": job.id, "model_version": job.model_version, "below": below, "created": time.time(),
                "digest": scores.DIGEST, "files": files, "skipped": skipped}
    atomic_write(out / REVIEW_MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return {"job_id": job.id, "out": str(out.resolve()), "exported": len(files),
            "doubtful": sum(1 for f in files if f["exported_to"]),
            "unlabelled": sum(1 for f in files if not f["exported_to"]), "skipped": len(skipped),
            "skipped_files": skipped, "below": below}
