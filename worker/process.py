"""Start a ``celery -A worker worker`` subprocess and wait until it is ready (demo, tests, benchmark)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from digitq.errors import DigitqError


class WorkerProcess:
    """A real Celery worker in its own process group, logging to ``logfile``."""

    def __init__(self, env: Mapping[str, str], logfile: str | Path, *, concurrency: int = 1,
                 queues: str = "predict", name: str = "digitq", cwd: str | Path | None = None,
                 app: str = "worker"):
        self.logfile = Path(logfile)
        # Not the checkout: the installed package must be found from anywhere.
        self.cwd = Path(cwd) if cwd else self.logfile.parent
        self.env = {**os.environ, **env}
        self.args = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues,
                     "-c", str(concurrency), "-P", "prefork", "-l", "info", "-n", f"{name}-{os.getpid()}@%h",
                     "--without-gossip", "--without-mingle", "--without-heartbeat", "-f", str(self.logfile)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        with open(self.logfile.with_suffix(".stderr"), "ab") as stderr:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DigitqError(f"celery worker exited with {self.proc.returncode}; see {self.logfile}")
            if self.logfile.exists():
                with open(self.logfile, "rb") as f:
                    f.seek(offset)
                    if b" ready." in f.read():
                        return self
            time.sleep(0.1)
        self.stop()
        raise DigitqError(f"celery worker not ready after {timeout:.0f}s; see {self.logfile}")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def child_pids(self) -> list[int]:
        """Pids of the pool's child processes (the ones that run tasks)."""
        if not self.proc:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(entry))
        return pids

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL the whole group if it lingers."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
