"""Who holds a piece of work, and whether that holder still lives: Redis leases with a liveness check.

A holder is named by its host, its pid namespace, the boot it runs in, its pid and the
start time of that process, so that a pid the kernel reused is not taken for the process
that died. On the holder's own host (same host name, same pid namespace and same boot id:
the init pid namespace has the same inode on every Linux host, and containers often share
a fixed host name, so the name and namespace alone do not tell two hosts apart) a holder is
alive exactly while that process runs: a SIGKILLed holder is known dead at once, with no
lease to wait out. Elsewhere, only Redis can tell: a holder is alive while its key,
refreshed as it works, has not expired (Redis's own expiry: no two clocks are compared).

Used by the training claim (:mod:`digitq.disk.training_requests`) and the quarantine's markers
(:mod:`digitq.batch.quarantine`). Needs only Redis, not a shared file system.
"""

from __future__ import annotations

import json
import os
import socket
import threading
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


_BOOT: list[str] = []


def boot_id() -> str:
    """This boot's random id (``/proc/sys/kernel/random/boot_id``: one per host and boot, shared by its
    containers), or "" where there is none (no ``/proc``)."""
    if not _BOOT:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT.append(f.read().strip())
        except OSError:
            _BOOT.append("")
    return _BOOT[0]


@dataclass(frozen=True)
class Holder:
    """One process, named so that another process can tell whether it still runs."""

    host: str
    ns: str
    pid: int
    start: str
    boot: str = ""

    @classmethod
    def me(cls) -> Holder:
        stat = _proc_stat(os.getpid())
        return cls(socket.gethostname(), _pid_namespace(), os.getpid(), stat[1] if stat else "", boot_id())

    def token(self) -> str:
        """A compact, unique name (also used as a Redis hash field and key suffix)."""
        return f"{self.host}|{self.ns}|{self.pid}|{self.start}|{self.boot}"

    @classmethod
    def from_token(cls, token: str) -> Holder | None:
        try:
            host, ns, pid, start, boot = token.rsplit("|", 4)
            return cls(host, ns, int(pid), start, boot)
        except ValueError:
            pass
        try:  # a name without a boot id: never taken for a local holder
            host, ns, pid, start = token.rsplit("|", 3)
            return cls(host, ns, int(pid), start)
        except ValueError:
            return None

    def local(self) -> bool:
        """Whether its process can be looked up from here: same host name, same pid namespace and same
        boot. A holder named without a boot id is local only where there is none either (no ``/proc``)."""
        return self.host == socket.gethostname() and self.ns == _pid_namespace() and self.boot == boot_id()

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
        if self.host == "?":
            return "no known holder (the claim lapsed, or Redis could not say)"
        return f"{self.host} (pid {self.pid})"


#: Stands for a holder that cannot be named: the lease lapsed, or its record is unreadable.
UNKNOWN = Holder("?", "", 0, "")


class Lease:
    """An exclusive claim on ``key`` in Redis (``SET NX PX``), refreshed while its holder works.

    A claim held by a local process that no longer runs is taken over at once; one held
    from another host lapses when its holder stops refreshing it (``ttl_s``).

    Once the holder finds the claim no longer its own, it has *lost* it for good (:attr:`lost`):
    it never takes it again, since another holder may have taken it, finished and let it go
    meanwhile. The one exception is a key that vanished sooner than it could have lapsed
    (Redis restarted without persistence, or was flushed): see :meth:`keep`."""

    def __init__(self, client, key: str, ttl_s: float, holder: Holder | None = None):
        self.client = client
        self.key = key
        self.ttl_s = ttl_s
        self.ttl_ms = int(ttl_s * 1000)
        self.holder = holder or Holder.me()
        self.value = json.dumps({**asdict(self.holder), "since": time.time()})
        #: Set once the claim is known to be someone else's, or may have been: check it before acting.
        self.lost = threading.Event()
        #: Who has it since (:data:`UNKNOWN` when it lapsed with no one in it, or Redis stayed silent).
        self.taker: Holder | None = None
        # When (this process's monotonic clock) the last request that confirmed the claim was *sent*: its
        # key cannot lapse before this plus the TTL, whatever Redis's own clock says.
        self._held_at: float | None = None

    def acquire(self) -> Holder | None:
        """Take the claim. None when it is ours now; else the live holder that has it.

        Raises :class:`redis.exceptions.RedisError` when Redis cannot answer."""
        asked = time.monotonic()
        for _ in range(3):
            if self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
                self._held_at = asked
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
                self._held_at = asked
                return None
        # Three contenders in a row took it first: someone holds it, even if we cannot say who.
        return _holder_of(self.client.get(self.key) or b"") or UNKNOWN

    def refresh(self) -> bool:
        """Extend the lease; False when it is no longer ours (it lapsed, and maybe another took it)."""
        asked = time.monotonic()
        if self.client.eval(_REFRESH, 1, self.key, self.value, self.ttl_ms):
            self._held_at = asked
            return True
        return False

    def keep(self, may_retake=None) -> Holder | None:
        """Extend the lease: None while it is ours. Otherwise the claim is lost, for good: :attr:`lost` is
        set and the holder that has it (or :data:`UNKNOWN`) returned, now and on every later call.

        Never takes the claim again once another holder was seen in it, or once it could have lapsed
        (the TTL has passed since a refresh last confirmed it): another holder may have taken it,
        finished and released it meanwhile. A key that vanished sooner (Redis restarted without
        persistence, or was flushed) is taken again when ``may_retake()`` (default: always) agrees.

        Raises :class:`redis.exceptions.RedisError` while Redis cannot answer and the claim may still be
        ours; once it cannot be (the TTL has passed), the claim is lost instead."""
        if self.lost.is_set():
            return self.taker
        try:
            if self.refresh():
                return None
            raw = self.client.get(self.key)
            if raw is not None:
                holder = _holder_of(raw) or UNKNOWN  # someone else's now
            elif self._could_have_lapsed() or (may_retake is not None and not may_retake()):
                holder = UNKNOWN
            else:
                holder = self.acquire()
                if holder is None:
                    return None
        except Exception as e:
            # Imported here, not with this module: the CLI loads this module (through training requests), and
            # `import redis` (0.07 s) would then delay the fork of a scan's walk.
            from redis.exceptions import RedisError

            if not isinstance(e, RedisError) or not self._could_have_lapsed():
                raise
            holder = UNKNOWN
        self.taker = holder
        self.lost.set()
        return holder

    def _could_have_lapsed(self) -> bool:
        return self._held_at is None or time.monotonic() - self._held_at >= self.ttl_s

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.value)


def _holder_of(raw: bytes | str) -> Holder | None:
    try:
        record = json.loads(raw)
        return Holder(str(record["host"]), str(record["ns"]), int(record["pid"]), str(record["start"]),
                      str(record.get("boot", "")))
    except (ValueError, KeyError, TypeError):
        return None
