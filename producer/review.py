"""``digitq review JOB``: export a finished job's doubtful images into a folder a person can label.

``DIR/<predicted digit>/<name>`` for each image below the confidence threshold, the
decodable images that got an error row at the top of ``DIR`` (unlabelled), and
``DIR/review.json`` recording each file's source path, sha256, prediction, confidence
and job. A person moves every mislabelled file into its right digit folder (or into
``DIR/discard/``); ``digitq train --data MNIST --data DIR`` then learns from the folder
as it is, counting the moves as corrections (:func:`model.dataset.read_labelled_folder`).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from digitq import scores
from digitq.errors import ConfigError
from digitq.jobs import Job
from digitq.paths import REVIEW_MANIFEST, unescape_path
from digitq.settings import Settings
from digitq.storage import atomic_write
from producer.dispatch import read_file, source_path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _name(digest: str, path: str) -> str:
    """A file name unique in the folder (digest prefix) and safe on any file system."""
    base = os.path.basename(unescape_path(path)).decode("utf-8", "replace")
    return f"{digest[:12]}-{_UNSAFE.sub('_', base)[-80:] or 'image'}"


def _decodable(data: bytes, decode) -> bool:
    try:
        decode(data)
    except Exception:  # noqa: BLE001 - ImageError, or any decoder failure: not an image to label
        return False
    return True


def export_review(settings: Settings, job: Job, below: float, limit: int | None, out: Path) -> dict:
    """Copy the doubtful images of ``job`` into ``out``; return what was exported."""
    from model.preprocess import decode_image

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; give --out a new folder (a review folder holds one job's images)")
    rows = job.rows()
    doubtful = sorted(((entry, row) for entry, row in rows if not row["error"] and float(row["confidence"]) < below),
                      key=lambda pair: float(pair[1]["confidence"]))[:limit]
    failed = [(entry, row) for entry, row in rows if row["error"]]
    files, unreadable = [], 0
    for entry, row in doubtful + failed:
        try:
            data = read_file(source_path(job, entry), settings.max_file_bytes + 1, entry.size)
        except OSError:
            unreadable += 1
            continue
        if row["error"] and not _decodable(data, decode_image):
            continue  # not an image anyone could label
        digest = scores.digest(data)
        name = _name(digest, entry.path)
        folder = None if row["error"] else row["prediction"]
        target = out / folder / name if folder else out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files.append({"file": name, "exported_to": folder, "source": entry.path, "sha256": digest,
                      "prediction": int(row["prediction"]) if folder else None,
                      "confidence": float(row["confidence"]) if folder else None, "error": row["error"] or None})
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"job_id": job.id, "model_version": job.model_version, "below": below, "created": time.time(),
                "files": files}
    atomic_write(out / REVIEW_MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return {"job_id": job.id, "out": str(out.resolve()), "exported": len(files),
            "doubtful": sum(1 for f in files if f["exported_to"]),
            "unlabelled": sum(1 for f in files if not f["exported_to"]), "unreadable": unreadable, "below": below}
