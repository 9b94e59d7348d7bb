"""File-name escaping and the CSV format (RFC 4180, no formula injection)."""

import csv
import io

import pytest

from digitq.disk import csvfile
from digitq.disk.paths import escape_path, unescape_path


@pytest.mark.parametrize(
    "raw",
    [b"plain/3.png", "caf\u00e9/7.png".encode(), b"bad\xe9name.png", b"back\\slash.png", b"\\xe9.png",
     b"a\xff\xfe\\x00.png", b"new\nline, \"quoted\".png"],
)
def test_escape_round_trips(raw):
    text = escape_path(raw)
    text.encode("utf-8")  # always valid UTF-8
    assert unescape_path(text) == raw


def test_escape_keeps_names_apart():
    names = [b"\xe9.png", b"\\xe9.png", "\u00e9.png".encode(), b"\\\\xe9.png"]
    assert len({escape_path(n) for n in names}) == len(names)


def test_valid_utf8_names_are_shown_as_is():
    assert escape_path("d\u00e9j\u00e0/1.png".encode()) == "d\u00e9j\u00e0/1.png"


@pytest.mark.parametrize("cell", ["=SUM(A1)", "+1", "-1", "@cmd", "\tx", "\rx"])
def test_formula_cells_are_neutralized(cell):
    assert csvfile.neutralize(cell) == "'" + cell


def test_render_quotes_and_neutralizes():
    rows = [
        {"path": 'dir/a,b "c"\nd.png', "prediction": 3, "confidence": 0.5, "model_version": "1", "error": None},
        {"path": "=HYPERLINK()", "prediction": None, "confidence": None, "model_version": "1",
         "error": "-bad image"},
    ]
    text = csvfile.render(rows)
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[0] == list(csvfile.COLUMNS)
    assert parsed[1] == ['dir/a,b "c"\nd.png', "3", "0.500000", "1", ""]
    assert parsed[2] == ["'=HYPERLINK()", "", "", "1", "'-bad image"]
    assert text.endswith("\r\n")
