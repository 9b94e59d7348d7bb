"""Reading a scanned file: whole, bounded, and never from anything but a regular file."""

from __future__ import annotations

import os

import pytest

from digitq.disk.files import NotRegularFile, read_file


@pytest.mark.parametrize("expected", [0, 5, 300, 301, 4096])
def test_a_file_is_read_whole_whatever_size_the_walk_saw(tmp_path, expected):
    path = tmp_path / "a.png"
    path.write_bytes(bytes(range(256)) + b"x" * 44)  # 300 bytes
    assert read_file(str(path), 1 << 20, expected) == path.read_bytes()


def test_a_file_grown_since_the_walk_is_read_to_its_end(tmp_path):
    path = tmp_path / "grown.png"
    path.write_bytes(b"a" * (3 << 20))
    assert read_file(str(path), 8 << 20, 100) == b"a" * (3 << 20)


@pytest.mark.parametrize("expected", [0, 10, 300])
def test_no_more_than_the_limit_is_read(tmp_path, expected):
    path = tmp_path / "big.png"
    path.write_bytes(b"b" * 300)
    assert read_file(str(path), 11, expected) == b"b" * 11


def test_an_empty_file_reads_as_no_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert read_file(str(path), 100, 0) == b""


def test_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="FIFO"):
        read_file(str(fifo), 100)
    with pytest.raises(NotRegularFile, match="directory"):
        read_file(str(tmp_path), 100)
