"""Walking folders and planning batches (no Redis needed)."""

import os

import pytest

from digitq.settings import Settings
from producer.dispatch import plan_batches
from producer.scan import Found, find_images


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    for rel in ["a.png", "B.JPG", "b/c.jpeg", "b/deep/d.TIFF", "b/e.webp", "b/f.gif", "b/g.bmp", "b/h.tif",
                ".hidden_dir/x.png"]:
        (root / rel).write_bytes(b"x" * 10)
    (root / "notes.txt").write_text("no")
    (root / ".secret.png").write_bytes(b"x")
    (root / "b" / "loop").symlink_to(root)  # a loop back to the top
    (root / "b" / "link.png").symlink_to(root / "a.png")
    (root / "b" / "dangling.png").symlink_to(root / "missing.png")
    return root


def test_walk_finds_images_sorted_and_counts_skips(tree):
    result = find_images([str(tree)])
    rels = [os.path.relpath(f.path, str(tree)) for f in result.files]
    assert rels == sorted(rels)
    assert rels == ["B.JPG", "a.png", "b/c.jpeg", "b/deep/d.TIFF", "b/e.webp", "b/f.gif", "b/g.bmp", "b/h.tif",
                    "b/link.png"]
    # notes.txt, .secret.png, .hidden_dir, the loop link, the dangling link
    assert result.skipped == 5
    assert all(f.path.startswith(str(tree)) for f in result.files)


def test_single_file_and_duplicates(tree):
    result = find_images([str(tree / "a.png"), str(tree / "a.png"), str(tree / "notes.txt")])
    assert [f.path for f in result.files] == [str(tree / "a.png"), str(tree / "notes.txt")]


def test_non_utf8_names_are_escaped(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write(b"img")
    result = find_images([str(tmp_path)])
    assert [f.path for f in result.files] == [str(tmp_path) + "/caf\\xe9.png"]


def test_plan_batches_by_count_and_bytes():
    settings = Settings(max_batch_bytes=50 * 1024, max_file_bytes=60_000)  # 50 KiB of image data a batch
    files = [Found(f"f{i:02d}.png", 1000) for i in range(10)] + [Found("g-big.png", 55_000),
                                                                 Found("h-huge.png", 70_000),
                                                                 Found("i.png", 1000)]
    stream, sizes = plan_batches(files, settings, batch_size=4, by_path=False)
    assert sizes == []  # filled in as the entries stream out
    entries = list(stream)
    assert sum(sizes) == len(files) == len(entries)
    assert sizes == [4, 4, 2, 1, 2]  # g-big is over the budget by itself: it travels alone
    huge = next(e for e in entries if e.path == "h-huge.png")
    assert huge.error and "limit" in huge.error
    # by path the bytes bound a batch's work all the same (photos spread over processes)
    stream, sizes = plan_batches(files, settings, batch_size=4, by_path=True)
    list(stream)
    assert sizes == [4, 4, 2, 1, 2]
    stream, sizes = plan_batches([Found(f"{i}.jpg", 3_000_000) for i in range(20)], Settings(), batch_size=512,
                                 by_path=True)
    list(stream)
    assert sizes == [5, 5, 5, 5]  # 16 MiB of photos a batch, not all 20 in one
    # small files travel inline, base64 in the message: a message stays near 8 MiB
    stream, sizes = plan_batches([Found(f"{i}.png", 16 * 1024) for i in range(1000)], Settings(), batch_size=1000,
                                 by_path=False)
    list(stream)
    assert sum(sizes) == 1000 and 300 < sizes[0] < 8 * 1024 * 1024 / (16 * 1024 * 4 / 3) + 1
