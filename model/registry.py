"""Model versions: where each lives, its checksum, and which one is ``production``.

Layout under ``DIGITQ_DATA_DIR/models/``: ``<N>/model.keras`` + ``<N>/model.json``
(numbered, immutable) and ``production`` (a JSON alias naming a version). The
model shipped inside the package is the version named in
``model/bundled/model.json``; it serves until anything else is published.
No TensorFlow here: the producer resolves versions without it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from digitq.errors import ModelError

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
PRODUCTION = "production"
BUNDLED = "bundled"
_VERSION_RE = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class ModelRef:
    """One model version: its name, file, expected sha256 and metadata."""

    version: str
    path: Path
    sha256: str
    meta: dict = field(default_factory=dict, compare=False, repr=False)


def _read_meta(directory: Path, version: str) -> ModelRef:
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
    return ModelRef(version=str(meta.get("version", version)), path=directory / "model.keras", sha256=sha, meta=meta)


class Registry:
    """Resolves version names (``production``, ``bundled``, ``bundled-1``, ``3``) to files."""

    def __init__(self, models_dir: str | Path):
        self.models_dir = Path(models_dir)

    def bundled(self) -> ModelRef:
        """The model that ships with digitq."""
        return _read_meta(BUNDLED_DIR, BUNDLED)

    def production_version(self) -> str | None:
        """The version the ``production`` alias names, or None when nothing was published."""
        alias = self.models_dir / PRODUCTION
        try:
            return str(json.loads(alias.read_text())["version"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"the production alias {alias} is unreadable ({e}); fix or delete it") from e

    def resolve(self, spec: str | None = None) -> ModelRef:
        """The model a version spec names; None means ``production``."""
        spec = (spec or PRODUCTION).strip()
        if spec == PRODUCTION:
            current = self.production_version()
            return self.bundled() if current is None else self.resolve(current)
        bundled = self.bundled()
        if spec in (BUNDLED, bundled.version):
            return bundled
        if not _VERSION_RE.match(spec):
            raise ModelError(
                f"unknown model version {spec!r}; use 'production', 'bundled', "
                f"'{bundled.version}' or a published version number"
            )
        directory = self.models_dir / spec
        if not directory.is_dir():
            raise ModelError(f"model version {spec} is not published under {self.models_dir}")
        return _read_meta(directory, spec)
