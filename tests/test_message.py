"""The batch message reads the wire as producers and workers send it, and writes it back the same."""

from __future__ import annotations

import json

import pytest

from digitq.batch.message import (
    FORMAT,
    BatchMessage,
    DuplicateNotice,
    Entry,
    FailureNotice,
    JobContext,
    Kind,
    Outcome,
    collect_args,
    collect_payload,
)
from digitq.disk.jobs import Row
from digitq.errors import JobError

#: A predict message's arguments in the first format (no ``v``): one entry of each kind, and one with no source.
FIRST_FORMAT = [
    "20261202-000000-abcdef", 3,
    [{"path": "a.png", "data": "iVBORw0KGgo="},
     {"path": "b.png", "digest": "d1", "scored": [7, 0.99, None]},
     {"path": "c.png", "error": "file is over the limit"},
     {"path": "d.png", "blob": "digitq:blob:20261202-000000-abcdef:3:3"},
     {"path": "e.png", "ref": "/data/e.png"},
     {"path": "f.png"}],
    {"data_dir": "dir-1", "model": {"version": "bundled-3", "sha256": "s", "meta": "m"}, "collect": "collect.dir-1"},
]


def test_the_first_format_reads_with_every_kind_explicit():
    message = BatchMessage.from_wire(json.loads(json.dumps(FIRST_FORMAT)))
    assert [e.kind for e in message.entries] == [Kind.DATA, Kind.SCORED, Kind.ERROR, Kind.BLOB, Kind.REF, Kind.ERROR]
    assert message.entries[1].value == (7, 0.99, None) and message.entries[1].digest == "d1"
    assert message.entries[5].error == "message entry has neither data nor a path"
    assert message.blob_keys == ["digitq:blob:20261202-000000-abcdef:3:3"]
    assert message.context == JobContext("dir-1", {"version": "bundled-3", "sha256": "s", "meta": "m"}, "collect.dir-1")


def test_a_message_writes_back_what_it_read_and_says_its_format():
    wire = BatchMessage.from_wire(FIRST_FORMAT).to_wire()
    assert wire[:2] == FIRST_FORMAT[:2] and wire[2][:5] == FIRST_FORMAT[2][:5]
    assert wire[3] == {**FIRST_FORMAT[3], "v": FORMAT}
    assert BatchMessage.from_wire(wire) == BatchMessage.from_wire(FIRST_FORMAT)


def test_a_message_without_context_stays_three_arguments():
    message = BatchMessage("job", 0, [Entry(Kind.REF, "x.png", "/x.png")])
    assert message.to_wire() == ["job", 0, [{"path": "x.png", "ref": "/x.png"}]]
    assert BatchMessage.from_wire(message.to_wire()).context is None


def test_a_malformed_entry_is_a_job_error():
    with pytest.raises(JobError, match="malformed batch message"):
        BatchMessage.from_wire(["job", 0, ["not an entry"], None])


def test_collect_payloads_read_in_both_formats():
    outcome = Outcome("job", 2, [Row("a.png", 7, 0.99, digest="d1")], "bundled-3", 1.5, blobs=["k"])
    first = {k: v for k, v in outcome.to_wire().items() if k != "v"}
    assert collect_payload("job", 2, first) == collect_payload("job", 2, outcome.to_wire()) == outcome
    assert collect_args("job", 2, outcome)[:2] == ["job", 2]
    duplicate = collect_payload("job", 2, {"duplicate": True, "host": "h", "pid": 5, "at": 1.0})
    assert duplicate == DuplicateNotice("h", 5, 1.0)
    assert collect_payload("job", 2, FailureNotice("boom", 2.0).to_wire()) == FailureNotice("boom", 2.0)
