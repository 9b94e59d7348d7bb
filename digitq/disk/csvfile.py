"""The predictions CSV: RFC 4180 quoting, and no formula injection (OWASP)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import TextIO

COLUMNS = ("path", "prediction", "confidence", "model_version", "error")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralize(value: object) -> str:
    """A CSV cell that spreadsheets will not run: risky leading characters get a ``'``."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def format_row(row: Mapping[str, object]) -> list[str]:
    """One result row as CSV cells, in :data:`COLUMNS` order."""
    confidence = row.get("confidence")
    return [
        neutralize(row.get("path")),
        "" if row.get("prediction") is None else str(int(row["prediction"])),
        "" if confidence is None else f"{float(confidence):.6f}",
        neutralize(row.get("model_version")),
        neutralize(row.get("error")),
    ]


def write(stream: TextIO, rows: Iterable[Mapping[str, object]], header: bool = True) -> None:
    """Write the header (unless ``header`` is False), then every row, to a text stream opened with ``newline=""``."""
    writer = csv.writer(stream, lineterminator="\r\n")
    if header:
        writer.writerow(COLUMNS)
    writer.writerows(format_row(r) for r in rows)


def render(rows: Iterable[Mapping[str, object]], header: bool = True) -> str:
    """The CSV text of ``rows``, header first unless ``header`` is False."""
    buf = io.StringIO()
    write(buf, rows, header)
    return buf.getvalue()


def header_line() -> bytes:
    """The header row, as bytes, ready to go in front of rendered rows."""
    return render([]).encode("utf-8")


def read(path) -> list[dict[str, str]]:
    """Read a predictions CSV back into dicts (cells as written)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
