"""Model versions: where each lives, its checksums, and which one is ``production``.

Layout under ``DIGITQ_DATA_DIR/models/``:

- ``<N>/``: a published version, numbered 1, 2, 3, ... and immutable:
  ``model.keras``, the plots, and ``model.json`` (metadata with the sha256 of
  every artifact). It appears by one atomic rename of a finished staging folder,
  so readers see a whole version or none;
- ``production``: the alias (JSON) naming the version new jobs pin;
- ``history.jsonl``: every move of the alias: when, from, to, why, by whom;
- ``.lock``: held (``flock``) while numbering a version or moving the alias.

The model shipped inside the package (``model/bundled/``) is production until
something is promoted. No TensorFlow here: the producer resolves versions without it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from digitq.disk.storage import atomic_write_json
from digitq.errors import ModelError

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
PRODUCTION = "production"
BUNDLED = "bundled"
MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"  # the serving artifact (model/training/export.py)
INT8_FILE = "model.int8.onnx"  # an int8 quantisation: verified where a version lists it, never served
_VERSION_RE = re.compile(r"^[0-9]{1,9}\Z")  # \Z: "$" matches before a trailing newline


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """One model version: its name, model file, expected sha256 and metadata."""

    version: str
    path: Path
    sha256: str
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def artifacts(self) -> dict[str, str]:
        """Every artifact's file name and recorded sha256 (the model file at least)."""
        return {MODEL_FILE: self.sha256, **self.meta.get("artifacts", {})}

    def read_verified(self, name: str = MODEL_FILE) -> bytes:
        """An artifact's bytes, after checking them against the recorded sha256."""
        expected = self.artifacts().get(name)
        if expected is None:
            raise ModelError(f"model {self.version} records no artifact {name!r}")
        path = self.directory / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelError(f"cannot read {name} of model {self.version} at {path}: {e.strerror or e}") from e
        actual = sha256_bytes(data)
        if actual != expected:
            raise ModelError(
                f"model {self.version}: {path} fails its checksum (sha256 {actual[:12]}..., expected "
                f"{expected[:12]}...); it was modified or corrupted: do not use it, publish a new version"
            )
        return data

    def verify_all(self) -> dict[str, str]:
        """``{artifact: "ok" | problem}`` for every recorded artifact."""
        report = {}
        for name in self.artifacts():
            try:
                self.read_verified(name)
                report[name] = "ok"
            except ModelError as e:
                report[name] = str(e)
        return report


def read_version(directory: Path, version: str) -> ModelRef:
    """The model version in ``directory``: its ``model.json`` read and its sha256 checked for form (the bytes
    are verified when read), named as the file says, else ``version``."""
    meta_path = directory / "model.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"model version {version!r} has no metadata at {meta_path}") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {meta_path}: {e}") from e
    sha = meta.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise ModelError(f"{meta_path} has no valid sha256; the model cannot be verified")
    return ModelRef(version=str(meta.get("version", version)), path=directory / MODEL_FILE, sha256=sha, meta=meta)


def _check_intact(ref: ModelRef) -> None:
    problems = [problem for problem in ref.verify_all().values() if problem != "ok"]
    if problems:
        raise ModelError(problems[0])


class Registry:
    """Resolves version names (``production``, ``bundled``, ``bundled-N``, ``3``), publishes and promotes."""

    def __init__(self, models_dir: str | Path):
        self.models_dir = Path(models_dir)

    # -- reading ----------------------------------------------------------

    def bundled(self) -> ModelRef:
        """The model that ships with digitq."""
        return read_version(BUNDLED_DIR, BUNDLED)

    def production_version(self) -> str | None:
        """The version the ``production`` alias names, or None when nothing was ever promoted."""
        alias = self.models_dir / PRODUCTION
        try:
            return str(json.loads(alias.read_text())["version"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"the production alias {alias} is unreadable ({e}); fix or delete it") from e

    def current(self) -> str:
        """The version production names now (the bundled one until something is promoted)."""
        return self.production_version() or self.bundled().version

    def resolve(self, spec: str | None = None) -> ModelRef:
        """The model a version spec names; None means ``production``."""
        spec = (spec or PRODUCTION).strip()
        if spec == PRODUCTION:
            return self.resolve(self.current())
        bundled = self.bundled()
        if spec in (BUNDLED, bundled.version):
            return bundled
        if not _VERSION_RE.match(spec):
            raise ModelError(
                f"unknown model version {spec!r}; use 'production', 'bundled', "
                f"'{bundled.version}' or a published version number (see `digitq models list`)"
            )
        directory = self.models_dir / str(int(spec))
        if not directory.is_dir():
            raise ModelError(f"model version {spec} is not published under {self.models_dir}; "
                             "see `digitq models list`")
        return read_version(directory, str(int(spec)))

    def published(self) -> list[int]:
        """Published version numbers, ascending."""
        try:
            names = os.listdir(self.models_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if _VERSION_RE.match(n) and (self.models_dir / n / "model.json").is_file())

    def versions(self) -> list[ModelRef]:
        """The bundled model, then every published version."""
        return [self.bundled()] + [self.resolve(str(n)) for n in self.published()]

    def find_training(self, training_id: str) -> ModelRef | None:
        """The version a training published, if it did."""
        for n in reversed(self.published()):
            ref = self.resolve(str(n))
            if ref.meta.get("training_id") == training_id:
                return ref
        return None

    def history(self) -> list[dict]:
        """Every move of the production alias, oldest first."""
        try:
            lines = (self.models_dir / "history.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        moves = []
        for line in lines:
            try:
                moves.append(json.loads(line))
            except ValueError:  # a line torn by a crash mid-append: that move never happened
                continue
        return moves

    def position(self) -> tuple[str, int]:
        """``(version production names, how many moves it has had)``, read together under the lock.

        The count tells a later promotion whether anything moved the alias since (a promotion, or a
        rollback back to the same version): see ``expect_moves`` in :meth:`promote`."""
        with self._locked():
            return self.current(), len(self.history())

    # -- writing ----------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock dies with its process: a crash never leaves the registry locked.
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with open(self.models_dir / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def staging_dir(self, name: str) -> Path:
        """A fresh folder to assemble a version in, on the same filesystem as the versions."""
        path = self.models_dir / ".staging" / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        path.mkdir(parents=True)
        return path

    def publish(self, staging: Path, training_id: str | None = None) -> tuple[ModelRef, bool]:
        """Number a finished staging folder and move it into place, atomically.

        Returns ``(version, created)``. A training that already published (a
        duplicate delivery, a rerun after a crash past this point) gets its
        existing version back, ``created=False``, and its staging is removed.
        """
        staging = Path(staging)
        meta = json.loads((staging / "model.json").read_text())
        for name, sha in {MODEL_FILE: meta["sha256"], **meta.get("artifacts", {})}.items():
            if sha256_file(staging / name) != sha:
                raise ModelError(f"staged {name} does not match its recorded sha256; nothing was published")
        with self._locked():
            existing = self.find_training(training_id) if training_id else None
            if existing is not None:
                shutil.rmtree(staging, ignore_errors=True)
                return existing, False
            number = (self.published() or [0])[-1] + 1
            while True:
                meta["version"] = str(number)
                atomic_write_json(staging / "model.json", meta)
                try:
                    # Fails when the number exists (a version folder is never empty).
                    os.rename(staging, self.models_dir / str(number))
                    break
                except OSError:
                    if not (self.models_dir / str(number)).exists():
                        raise
                    number += 1
        return self.resolve(str(number)), True

    def promote(self, spec: str, *, reason: str, by: str, expect: str | None = None,
                expect_moves: int | None = None, action: str = "promote") -> dict:
        """Point ``production`` at a verified version and log the move.

        With ``expect``, the move happens only if production still names that
        version (compare-and-swap); with ``expect_moves`` too, only if the alias has
        not moved since :meth:`position` counted that many moves (not even away and back).
        Otherwise the returned entry has ``moved: False``, and ``moves``: the count now.
        """
        ref = self.resolve(spec)
        _check_intact(ref)  # never promote a version whose files would be refused at load
        with self._locked():
            current = self.current()
            moves = len(self.history()) if expect_moves is not None else None
            if (expect is not None and current != expect) or moves != expect_moves:
                return {"moved": False, "from": current, "to": ref.version, "moves": moves}
            if current == ref.version:
                return {"moved": False, "from": current, "to": ref.version, "reason": "already production"}
            self._move(current, ref.version, reason=reason, by=by, action=action)
        return {"moved": True, "from": current, "to": ref.version, "reason": reason}

    def rollback(self, *, reason: str, by: str) -> dict:
        """Move production back to the version it named before the last promotion."""
        with self._locked():
            stack = self._production_stack()
            if len(stack) < 2:
                raise ModelError(f"nothing to roll back to: production ({stack[-1]}) has no earlier version in its "
                                 "history (see `digitq models history`); promote one with `digitq models promote V`")
            current, target = stack[-1], stack[-2]
            _check_intact(self.resolve(target))
            self._move(current, target, reason=reason, by=by, action="rollback")
        return {"moved": True, "from": current, "to": target, "reason": reason}

    def _production_stack(self) -> list[str]:
        # Promotions push, rollbacks pop: two rollbacks in a row walk two steps back.
        history = self.history()
        stack = [history[0]["from"] if history else self.bundled().version]
        for entry in history:
            if entry.get("action") == "rollback" and len(stack) > 1:
                stack.pop()
            else:
                stack.append(entry["to"])
        return stack

    def _move(self, current: str, target: str, *, reason: str, by: str, action: str) -> None:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "time": time.time(), "action": action,
                 "from": current, "to": target, "reason": reason, "by": by}
        with open(self.models_dir / "history.jsonl", "ab+") as f:
            torn = f.tell() > 0 and os.pread(f.fileno(), 1, f.tell() - 1) != b"\n"
            f.write((b"\n" if torn else b"") + json.dumps(entry).encode() + b"\n")  # never glued to a torn line
            f.flush()
            os.fsync(f.fileno())
        atomic_write_json(self.models_dir / PRODUCTION, {"version": target, "since": entry["at"]})
