"""The one rule every role rides a Redis failover with (digitq/bus/failover.py), without Redis: a fake clock.

The real thing (a Sentinel topology, its master SIGKILLed while the producer sends, 5 s down-after) is
tests/test_sentinel.py."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.sentinel import MasterNotFoundError

from digitq.bus import failover, replication
from digitq.settings import Settings

SENTINEL = "sentinel://:pw@127.0.0.1:26379/0"


class Clock:
    """A monotonic clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


def _failing(errors: list[BaseException], result: str = "ok"):
    calls = []

    def operation() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return operation, calls


def test_a_failover_is_ridden_through_until_the_new_master_answers():
    settings = Settings.from_env(redis_url=SENTINEL, failover_s=60)
    clock = Clock()
    errors = [RedisConnectionError("Connection refused")] * 3
    errors += [MasterNotFoundError("No master found for 'mymaster'")] * 10
    errors += [OperationalError("kombu gave up")]
    operation, calls = _failing(list(errors))
    assert failover.ride(settings, operation, sleep=clock.sleep, clock=clock) == "ok"
    assert len(calls) == len(errors) + 1
    assert 0 < sum(clock.slept) < 60 and max(clock.slept) <= failover.BACKOFF[1]


def test_past_digitq_failover_s_the_last_error_is_raised_with_advice():
    settings = Settings.from_env(redis_url=SENTINEL, failover_s=30)
    clock = Clock()
    operation, calls = _failing([MasterNotFoundError("No master found for 'mymaster'")] * 1000)
    with pytest.raises(MasterNotFoundError) as e:
        failover.ride(settings, operation, sleep=clock.sleep, clock=clock)
    assert sum(clock.slept) == pytest.approx(30) and len(calls) > 10
    assert "DIGITQ_FAILOVER_S=30" in failover.explain(settings, e.value)


def test_a_plain_redis_has_no_failover_to_wait_for_and_a_refusal_is_no_failover():
    clock = Clock()
    plain = Settings.from_env(redis_url="redis://127.0.0.1:6390/0", failover_s=60)
    operation, calls = _failing([RedisConnectionError("Connection refused")])
    with pytest.raises(RedisConnectionError):
        failover.ride(plain, operation, sleep=clock.sleep, clock=clock)
    assert calls == [1] and clock.slept == [] and failover.explain(plain, RedisConnectionError()) == ""
    behind_sentinel = Settings.from_env(redis_url=SENTINEL)
    operation, calls = _failing([ResponseError("WRONGTYPE")])
    with pytest.raises(ResponseError):
        failover.ride(behind_sentinel, operation, sleep=clock.sleep, clock=clock)
    assert calls == [1] and failover.explain(behind_sentinel, ResponseError()) == ""


def test_durably_writes_again_through_a_failover(monkeypatch):
    """A write whose master is lost (before it, or before a replica confirmed it) is written again on the new
    master, for as long as the failover takes (here 20 s of fake time), not a fixed count of tries."""
    settings = Settings.from_env(redis_url=SENTINEL, failover_s=60)
    clock = Clock()
    monkeypatch.setattr(failover.time, "sleep", clock.sleep)
    monkeypatch.setattr(failover.time, "monotonic", clock)
    confirms = [RedisConnectionError("lost before the replica confirmed")]

    def confirm(_settings: Settings) -> int:
        if confirms:
            raise confirms.pop(0)
        return 1

    monkeypatch.setattr(replication, "confirm_replicated", confirm)
    writes = []

    def write() -> int:
        writes.append(clock.now)
        if clock.now < 1020:
            raise MasterNotFoundError("No master found for 'mymaster'")
        return len(writes)

    assert replication.durably(settings, write) == len(writes) and len(writes) > 2
    assert clock.now >= 1020 and not confirms and writes[-2] >= 1020  # written again after the lost confirmation


def test_digitq_failover_s_is_a_setting_and_a_cli_option(monkeypatch):
    from producer.cli import main

    monkeypatch.setenv("DIGITQ_FAILOVER_S", "90")
    assert Settings.from_env().failover_s == 90 and Settings().failover_s == 60
    assert Settings.from_env(failover_s=5).failover_s == 5
    monkeypatch.setenv("DIGITQ_FAILOVER_S", "soon")
    from digitq.errors import ConfigError

    with pytest.raises(ConfigError, match="DIGITQ_FAILOVER_S"):
        Settings.from_env()
    monkeypatch.delenv("DIGITQ_FAILOVER_S")
    result = CliRunner().invoke(main, ["--help"])
    assert "--failover-s" in result.output and "DIGITQ_FAILOVER_S" in result.output
