"""The scan's forked helpers: the walk in a child process, and several sender processes.

Each case runs in a fresh Python process: forking is refused where other threads run, and
pytest's process may have some."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from model.dataset import write_image_folder

from .conftest import ROOT
from .pipeline_helpers import db_url, wait_until


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


def _scan(url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in its own process: `digitq scan ARGS --json`."""
    return subprocess.run([sys.executable, "-m", "producer.cli", "--redis-url", url, "--data-dir", str(data_dir),
                           "scan", *args, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=180)


def _tree(root: Path) -> Path:
    """Names a walk must get right: bad UTF-8, a newline, a carriage return, a backslash, hidden, not an image, a
    loop."""
    (root / "a" / "deep").mkdir(parents=True)
    for name in (b"plain.png", b"bad-\xff.png", b"new\nline.png", b"carriage\rreturn.png", b"back\\slash.jpg",
                 b".hidden.png", b"notes.txt"):
        (Path(os.fsdecode(bytes(root / "a"))) / os.fsdecode(name)).write_bytes(b"x" * len(name))
    (root / "a" / "deep" / "d.webp").write_bytes(b"y")
    (root / "a" / "deep" / "loop").symlink_to(root / "a")
    return root / "a"


def test_forked_walk_finds_exactly_what_the_walk_here_finds(tmp_path):
    folder = _tree(tmp_path)
    out = _python(f"""
        import json, threading
        from producer.scan import ForkedWalk, find_images
        assert threading.active_count() == 1
        walk = ForkedWalk([{str(folder)!r}, {str(folder / "plain.png")!r}])
        forked = walk.pid is not None
        counts = []
        found = walk.result(on_file=counts.append)
        here = find_images([{str(folder)!r}, {str(folder / "plain.png")!r}])
        print(json.dumps({{"forked": forked, "same": found == here, "files": found.files, "skipped": found.skipped,
                          "counts": counts}}))
    """)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["forked"] and result["same"]
    assert len(result["files"]) == 6 and result["skipped"] == 3  # .hidden, notes.txt, the loop
    assert any("\\xff" in path for path, _ in result["files"]) and result["counts"][-1] == 6
    assert any("\r" in path for path, _ in result["files"]) and any("\n" in path for path, _ in result["files"])


def test_the_forked_walk_reads_its_list_across_any_chunk_boundary(tmp_path):
    """The list of files crosses the pipe in chunks: a chunk may end inside a path, a size or a separator."""
    folder = _tree(tmp_path)
    out = _python(f"""
        import producer.scan as scan
        here = scan.find_images([{str(folder)!r}])
        for chunk, per_write in ((1, 1), (3, 2), (7, 3), (64, 5)):
            scan._CHUNK, scan._FILES_PER_WRITE = chunk, per_write
            assert scan.ForkedWalk([{str(folder)!r}]).result() == here, (chunk, per_write)
        print(len(here.files))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"


def test_a_list_of_files_cut_short_is_an_error(tmp_path):
    out = _python(f"""
        import producer.scan as scan
        from digitq.errors import DataError

        class Unwritable(int):
            def __format__(self, spec):
                raise OSError("the pipe broke")

        found = scan.ScanResult([scan.Found("a.png", 1), scan.Found("b.png", Unwritable(2))])
        scan.find_images = lambda paths, on_file=None: found
        scan._FILES_PER_WRITE = 1
        try:
            scan.ForkedWalk([{str(tmp_path)!r}]).result()
        except DataError as e:
            print("error:", e)
    """)
    assert out.returncode == 0, out.stderr
    assert "error: walking" in out.stdout and "cut short" in out.stdout


def test_a_walk_that_dies_is_an_error_and_cancel_reaps_it(tmp_path):
    out = _python(f"""
        import os, signal, time
        import producer.scan as scan
        from digitq.errors import DataError
        scan.find_images = lambda paths, on_file=None: time.sleep(60)  # a walk that takes long
        walk = scan.ForkedWalk([{str(tmp_path)!r}])
        os.kill(walk.pid, signal.SIGKILL)
        try:
            walk.result()
        except DataError as e:
            print("error:", e)
        walk = scan.ForkedWalk([{str(tmp_path)!r}])
        pid = walk.pid
        started = time.monotonic()
        walk.cancel()
        gone = not os.path.exists(f"/proc/{{pid}}")
        print("cancelled in", round(time.monotonic() - started, 1), "s;", "gone" if gone else "left")
    """)
    assert out.returncode == 0, out.stderr
    assert "error: walking" in out.stdout and "killed by signal 9" in out.stdout
    assert "gone" in out.stdout and "cancelled in 0.0 s" in out.stdout


def _pngs(folder: Path, mnist, count: int) -> Path:
    write_image_folder(folder, mnist.x_test[:count], mnist.y_test[:count])
    return folder


def test_two_senders_send_every_batch_once(settings, mnist, tmp_path):
    """Into a queue no worker reads: every batch exactly once, from two processes."""
    import redis

    folder = _pngs(tmp_path / "in", mnist, 120)
    url = db_url(settings.redis_url, 3)
    out = _scan(url, tmp_path / "data", str(folder), "--batch-size", "10", "--senders", "2")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["batches"] == 12 and summary["sent"] == 120
    client = redis.Redis.from_url(url)
    messages = [json.loads(m) for m in client.lrange("predict", 0, -1)]
    batches = sorted(json.loads(m["body"])[0][1] for m in messages)
    origins = {m["headers"]["origin"] for m in messages}
    client.flushdb()
    assert batches == list(range(12))
    assert len(origins) == 2  # sent by two processes


def test_two_senders_end_to_end_one_row_per_file(worker, settings, mnist, tmp_path):
    folder = _pngs(tmp_path / "in", mnist, 200)
    out = _scan(settings.redis_url, settings.data_dir, str(folder), "--batch-size", "8", "--senders", "2",
                "--wait", "--timeout", "120")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["state"] == "done" and summary["done"] == 200 and summary["batches"] == 25
    rows = Path(summary["output"]).read_text().splitlines()[1:]
    paths = [row.split(",")[0] for row in rows]
    assert len(paths) == 200 and len(set(paths)) == 200


def test_a_sender_that_dies_is_reported_with_advice(settings, mnist, tmp_path):
    folder = _pngs(tmp_path / "in", mnist, 40)
    url = db_url(settings.redis_url, 4)
    out = _python(f"""
        import os
        import producer.senders as senders
        from digitq.errors import BrokerError
        from digitq.settings import Settings
        from producer.dispatch import new_job
        from producer.scan import find_images

        real = senders.enqueue
        def dying(settings, job, batches=None, progress=None, **options):
            if batches is not None and batches.start == 1:
                os._exit(3)  # the forked sender, before it sends anything
            return real(settings, job, batches, progress, **options)
        senders.enqueue = dying
        settings = Settings.from_env(redis_url={url!r}, data_dir={str(tmp_path / "data")!r}, senders=2)
        job = new_job(settings, find_images([{str(folder)!r}]).files, sources=["x"], batch_size=4)
        try:
            senders.enqueue_parallel(settings, job)
        except BrokerError as e:
            print("error:", e)
    """)
    assert out.returncode == 0, out.stderr
    assert "died (exit status 3)" in out.stdout and "digitq resume" in out.stdout
    import redis

    client = redis.Redis.from_url(url)
    wait_until(lambda: client.llen("predict") == 5, timeout=5, what="the parent's five batches")
    client.flushdb()


def test_threaded_callers_send_from_one_process(settings, tmp_path):
    """No fork where another thread runs (it could hold a lock the child would inherit held)."""
    import threading

    import redis

    from producer import senders
    from producer.dispatch import new_job
    from producer.scan import find_images

    folder = tmp_path / "in"
    write_image_folder(folder, np.zeros((12, 28, 28), np.uint8), np.zeros(12, np.uint8))
    url = db_url(settings.redis_url, 5)
    local = settings.__class__.from_env(redis_url=url, data_dir=str(tmp_path / "data"), senders=2)
    job = new_job(local, find_images([str(folder)]).files, sources=["x"], batch_size=1)  # 12 batches: enough for 2
    blocker = threading.Event()
    other = threading.Thread(target=blocker.wait)
    other.start()
    forks, real_fork = [], os.fork
    try:
        os.fork = lambda: forks.append(1) or real_fork()
        result = senders.enqueue_parallel(local, job)
    finally:
        os.fork = real_fork
        blocker.set()
        other.join()
    assert result.sent == 12 and forks == []
    assert redis.Redis.from_url(url).llen("predict") == 12
    redis.Redis.from_url(url).flushdb()
