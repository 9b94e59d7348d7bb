"""Who holds a piece of work, and whether that holder still lives: Redis leases with a liveness check.

A holder is named by its host, its pid namespace, its pid and the start time of that
process, so that a pid the kernel reused is not taken for the process that died. On
the holder's own host (same host name and pid namespace) a holder is alive exactly while
that process runs: a SIGKILLed holder is known dead at once, with no lease to wait out.
Elsewhere, only time can tell: a holder is alive while its lease, refreshed as it works,
has not run out.

Used by the training claim (:mod:`digitq.trainings`) and the quarantine's markers
(:mod:`digitq.quarantine`). Needs only Redis, not a shared file system.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass

#: Replace the holder only if it is still the one we judged dead (atomic compare-and-set).
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
#: Extend the lease only while we still hold it.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
#: Give the lease up only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of a process from ``/proc``, or None where there is none (or no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0].decode(), fields[19].decode()  # field 3 (state) and field 22 (starttime, clock ticks)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class Holder:
    """One process, named so that another process can tell whether it still runs."""

    host: str
    ns: str
    pid: int
    start: str

    @classmethod
    def me(cls) -> Holder:
        stat = _proc_stat(os.getpid())
        return cls(socket.gethostname(), _pid_namespace(), os.getpid(), stat[1] if stat else "")

    def token(self) -> str:
        """A compact, unique name (also used as a Redis hash field)."""
        return f"{self.host}|{self.ns}|{self.pid}|{self.start}"

    @classmethod
    def from_token(cls, token: str) -> Holder | None:
        try:
            host, ns, pid, start = token.rsplit("|", 3)
            return cls(host, ns, int(pid), start)
        except ValueError:
            return None

    def local(self) -> bool:
        """Whether its process can be looked up from here (same host, same pid namespace)."""
        return self.host == socket.gethostname() and self.ns == _pid_namespace()

    def running(self) -> bool:
        """For a local holder: whether its process still runs (not a zombie, not a reused pid)."""
        stat = _proc_stat(self.pid)
        if stat is None:
            if os.path.isdir("/proc/self"):
                return False  # /proc works here: no such process
            try:  # no /proc (macOS): the pid alone
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        state, start = stat
        return state not in ("Z", "X") and (not self.start or start == self.start)

    def describe(self) -> str:
        return f"{self.host} (pid {self.pid})"


class Lease:
    """An exclusive claim on ``key`` in Redis (``SET NX PX``), refreshed while its holder works.

    A claim held by a local process that no longer runs is taken over at once; one held
    from another host lapses when its holder stops refreshing it (``ttl_s``)."""

    def __init__(self, client, key: str, ttl_s: float, holder: Holder | None = None):
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.holder = holder or Holder.me()
        self.value = json.dumps({**asdict(self.holder), "since": time.time()})

    def acquire(self) -> Holder | None:
        """Take the claim. None when it is ours now; else the live holder that has it.

        Raises :class:`redis.exceptions.RedisError` when Redis cannot answer."""
        for _ in range(3):
            if self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
                return None
            raw = self.client.get(self.key)
            if raw is None:
                continue  # it lapsed between the two commands: try again
            other = _holder_of(raw)
            if other is not None and other != self.holder and not (other.local() and not other.running()):
                return other
            # Its holder died (a SIGKILLed process on this host), is this very process (a release that
            # did not reach Redis), or the record is unreadable: replace exactly that record, so that two
            # contenders cannot both take it over.
            if self.client.eval(_TAKE_OVER, 1, self.key, raw, self.value, self.ttl_ms):
                return None
        # Three contenders in a row took it first: someone holds it, even if we cannot say who.
        return _holder_of(self.client.get(self.key) or b"") or Holder("?", "", 0, "")

    def refresh(self) -> bool:
        """Extend the lease; False when it is no longer ours (it lapsed, and maybe another took it)."""
        return bool(self.client.eval(_REFRESH, 1, self.key, self.value, self.ttl_ms))

    def keep(self) -> Holder | None:
        """Extend the lease, or take it again if it lapsed (Redis restarted, a long pause): None while it
        is ours, else the holder that took it meanwhile."""
        return None if self.refresh() else self.acquire()

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.value)


def _holder_of(raw: bytes | str) -> Holder | None:
    try:
        record = json.loads(raw)
        return Holder(str(record["host"]), str(record["ns"]), int(record["pid"]), str(record["start"]))
    except (ValueError, KeyError, TypeError):
        return None
