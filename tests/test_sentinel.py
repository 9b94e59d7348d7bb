"""Redis behind Sentinel: the URL form, every role through it, and a job that survives the
SIGKILL of its master mid-job with no human command: one master, one replica, three sentinels, two
workers (one sees the data dir, one serves statelessly from a private empty one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from digitq.batch import outbox, stalls
from digitq.bus import keys
from digitq.bus.broker import redis_client
from digitq.bus.replication import confirm_replicated
from digitq.bus.server import SentinelTopology, find_redis_server
from digitq.bus.urls import normalise, parse_sentinel, redact
from digitq.disk import csvfile
from digitq.disk.jobs import Job
from digitq.disk.storage import data_dir_id
from digitq.errors import ConfigError
from digitq.settings import Settings
from model.dataset import write_image_folder
from producer.cli import main
from worker.process import WorkerProcess

from .pipeline_helpers import wait_until

PASSWORD = "m4ster-pw"
SENTINEL_PASSWORD = "s3ntinel-pw"
#: A common production setting (Redis's default is 30,000): the master is silent this long before the sentinels
#: fail it over, and every role must ride through it (DIGITQ_FAILOVER_S).
DOWN_AFTER_MS = 5000


# -- the URL ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "canonical"), [
    ("sentinel://:pw@h1:26379;sentinel://h2:26380;sentinel://h3",
     "sentinel://:pw@h1:26379/0;sentinel://:pw@h2:26380/0;sentinel://:pw@h3:26379/0"),
    ("sentinel://h1:1/2;sentinel://:p%40w@h2:2", "sentinel://:p%40w@h1:1/2;sentinel://:p%40w@h2:2/2"),
    ("sentinel://h1:1?password=pw; sentinel://:pw@h2:2", "sentinel://:pw@h1:1/0;sentinel://:pw@h2:2/0"),
    ("sentinels://user:pw@h1:1;sentinels://h2:2", "sentinels://user:pw@h1:1/0;sentinels://user:pw@h2:2/0"),
    ("sentinel://h1", "sentinel://h1:26379/0"),
])
def test_a_sentinel_url_carries_the_password_and_database_in_every_part(given, canonical):
    # kombu reads them from the part it is on, and moves to the next part on a connection error.
    assert normalise(given) == canonical
    parsed = parse_sentinel(canonical)
    assert parsed.kombu_url.startswith("sentinel://") and parsed.kombu_url.count("sentinel://") == len(parsed.sentinels)
    assert "pw" not in redact(canonical) and redact(canonical).count("***") == (canonical.count("@"))


@pytest.mark.parametrize(("bad", "says"), [
    ("sentinel://:a@h1:1;sentinel://:b@h2:2", "different passwords"),
    ("sentinel://h1:1/0;sentinel://h2:2/3", "different databases"),
    ("sentinel://h1:1;redis://h2:2", "every ';'-separated part"),
    ("sentinel://h1:1;sentinels://h2:2", "every ';'-separated part"),
    ("sentinel://h1:1?ssl_cert_reqs=none", "no query options"),
    ("sentinel://h1:1/zero", "must be a number"),
    ("sentinel://:pw@h1:port", "not a valid URL"),
])
def test_a_bad_sentinel_url_says_what_to_fix_and_never_shows_the_password(bad, says):
    with pytest.raises(ConfigError) as e:
        normalise(bad)
    assert says in str(e.value) and ":a@" not in str(e.value) and ":pw@" not in str(e.value)


def test_celery_gets_kombus_sentinel_transport_and_the_sentinels_password(monkeypatch):
    from digitq.bus.broker import celery_config

    url = "sentinels://:pw@h1:1;sentinels://h2:2"
    monkeypatch.setenv("DIGITQ_REDIS_CA", "/ca.pem")
    settings = Settings.from_env(redis_url=url, redis_master="cache", sentinel_password="spw")
    config = celery_config(settings)
    assert config["broker_url"] == "sentinel://:pw@h1:1/0;sentinel://:pw@h2:2/0"
    options = config["broker_transport_options"]
    assert options["master_name"] == "cache" and options["sentinel_kwargs"]["password"] == "spw"
    assert options["sentinel_kwargs"]["ssl"] and options["sentinel_kwargs"]["ssl_ca_certs"] == "/ca.pem"
    assert config["broker_use_ssl"]["ssl_ca_certs"] == "/ca.pem"  # the master's connections (kombu's)
    assert config["task_publish_retry_policy"]["max_retries"] >= 10  # a publish outlasts a failover


# -- the stack through Sentinel ---------------------------------------------------------------------------------

def _sentinel_available() -> None:
    try:
        find_redis_server()
    except Exception as e:  # noqa: BLE001
        if os.environ.get("CI"):
            pytest.fail(f"no redis-server for the Sentinel tests ({e}): scripts/test.sh installs Debian's")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A Sentinel topology and two workers through it: one that sees the data dir, one stateless."""
    _sentinel_available()
    tmp = tmp_path_factory.mktemp("sentinel")
    topology = SentinelTopology(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD,
                                down_after_ms=DOWN_AFTER_MS).start()
    data = tmp / "data"
    data_dir_id(data)  # as `digitq init` does: the data dir and its id, seen at start by the worker that collects
    env = {**topology.env(), "DIGITQ_DATA_DIR": str(data), "DIGITQ_STALL_AFTER": "5"}
    private = tmp / "private"
    private.mkdir()
    workers = []
    try:
        workers.append(WorkerProcess(env, tmp / "shared.log", name="shared").start())
        workers.append(WorkerProcess({**env, "DIGITQ_DATA_DIR": str(private)}, tmp / "stateless.log",
                                     name="stateless").start())
        yield {"topology": topology, "env": env, "tmp": tmp, "workers": workers,
               "settings": Settings.from_env(redis_url=topology.url, data_dir=str(data),
                                             sentinel_password=SENTINEL_PASSWORD)}
    finally:
        for w in workers:
            w.stop()
        topology.stop()


def _cli(env: dict[str, str], *args: str):
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def _workers(env: dict[str, str]) -> list[dict]:
    result = _cli(env, "workers", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])["workers"]


def test_workers_and_a_scan_through_sentinel(stack, tmp_path, mnist):
    env = stack["env"]
    listed = _workers(env)
    assert sorted(w["name"].split("-")[0] for w in listed) == ["shared", "stateless"]
    assert [w["stateless"] for w in sorted(listed, key=lambda w: w["name"])] == [False, True]
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:40], mnist.y_test[:40])
    result = _cli(env, "scan", str(folder), "--batch-size", "4", "--wait", "--timeout", "60", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    rows = csvfile.read(summary["output"])
    assert summary["state"] == "done" and len(rows) == 40 and len({r["path"] for r in rows}) == 40
    assert sum(r["prediction"] == r["path"].split("/")[-2] for r in rows) >= 39
    for w in stack["workers"]:
        assert PASSWORD not in w.log() and SENTINEL_PASSWORD not in w.log()
    assert confirm_replicated(stack["settings"]) == 1  # WAIT: the replica has everything written so far


def test_confirm_replicated_costs_nothing_without_a_replica(redis_server, settings):
    import redis

    from digitq.bus import replication

    replication._replicas.clear()
    assert confirm_replicated(settings) is None  # one INFO: no replica
    stats = redis.Redis.from_url(settings.redis_url)
    before = stats.info("stats")["total_commands_processed"]
    assert [confirm_replicated(settings) for _ in range(5)] == [None] * 5
    assert stats.info("stats")["total_commands_processed"] == before + 1  # only this INFO: none until REFRESH_S


#: How long the replica is stopped (SIGSTOP) at the kill in the "slow" failover: the sentinels find no replica to
#: promote, abort, and try again only after twice their failover-timeout (10 s), as a loaded or partitioned replica
#: would make a real failover last: about 15 to 25 s without a master, longer than any one client's own retries.
SLOW_REPLICA_S = 12.0


@pytest.mark.parametrize("failover", ["prompt", "slow"])
def test_a_job_survives_the_sigkill_of_its_master(stack, mnist, failover):
    """5,000 digits in batches of 25; the master SIGKILLed once some are committed, while the producer is still
    sending; Sentinel notices after ``down-after-milliseconds`` (5 s) and promotes the replica (at once, or, "slow",
    after a first attempt found the replica stopped); the scan returns with exit code 0 (the slow one with
    ``--wait``, once the job is done) and the job completes with one row per file, with no `digitq resume`."""
    topology, env, tmp, settings = stack["topology"], stack["env"], stack["tmp"], stack["settings"]
    dead = [s for s in topology.servers if s.proc is None or s.proc.poll() is not None]
    for server in dead:  # killed by the previous run: back as the replica, so that there is one to promote
        topology.revive(server)
    folder = tmp / "digits"
    n = 5000
    write_image_folder(folder, mnist.x_test[:n], mnist.y_test[:n])
    before = set(os.listdir(settings.jobs_dir)) if settings.jobs_dir.is_dir() else set()
    # A real producer process, still sending when the master dies (at most 40 batches in flight); it returns once
    # everything is sent. Nothing else follows the job but the workers themselves (their sweeper re-sends what a
    # failover lost, worker/sweeper.py): no `digitq wait`, no `resume`. The slow failover's scan also follows the
    # job to its end (`--wait`), through the failover.
    follow = ["--wait", "--timeout", "300"] if failover == "slow" else []
    scan = subprocess.Popen([sys.executable, "-m", "producer.cli", "scan", str(folder), "--batch-size", "25",
                             "--max-in-flight", "1000", "--json", *follow],
                            env={**os.environ, **env}, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        job = wait_until(lambda: _new_job(settings, before), timeout=60, what="the job's manifest")
        wait_until(lambda: len(job.committed()) >= 10, timeout=60, what="10 committed batches")
        committed_at_kill = len(job.committed())
        # At most 40 batches are sent and not committed: the producer has more to send, and sends them through
        # the failover.
        assert scan.poll() is None and committed_at_kill + 40 < job.n_batches, "the producer must still be sending"
        old = topology.kill_master()
        killed = time.time()
        if failover == "slow":
            replica = next(s for s in topology.servers if s is not old)
            os.kill(replica.proc.pid, signal.SIGSTOP)
            resume = threading.Timer(SLOW_REPLICA_S, os.kill, (replica.proc.pid, signal.SIGCONT))
            resume.start()
        try:
            promoted = topology.wait_promoted(old, timeout=90)
        finally:
            if failover == "slow":
                resume.join()
        promoted_s = time.time() - killed
        try:
            out, err = scan.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the scan did not return: {json.dumps(_lost(stack, job, killed))}") from None
        if scan.returncode != 0:
            raise AssertionError(f"the scan failed: {err[-2000:]}; {json.dumps(_lost(stack, job, killed))}")
        try:
            wait_until(job.is_done, timeout=120, poll=0.1, what="the job to complete")
        except AssertionError:
            raise AssertionError(f"the job did not complete: {json.dumps(_lost(stack, job, killed))}") from None
    finally:
        if scan.poll() is None:
            scan.kill()
    summary = json.loads(out.strip().splitlines()[-1])
    assert job.is_done() and summary["job_id"] == job.id
    if follow:
        assert summary["state"] == "done" and summary["done"] == n
    last_row = max(p.stat().st_mtime for p in [job.csv_path, *(job.dir / "results").iterdir()])
    rows = csvfile.read(job.csv_path)
    paths = [r["path"] for r in rows]
    assert len(rows) == n and len(set(paths)) == n, "exactly one row per file"
    assert sum(r["prediction"] == r["path"].split("/")[-2] for r in rows if not r["error"]) >= 0.98 * n
    assert not [r for r in rows if r["error"]]
    logs = {w.logfile.name: w.log() for w in stack["workers"]}
    stateless_pids = set(stack["workers"][1].child_pids())
    commits = sorted(p.stat().st_mtime for p in (job.dir / "results").iterdir())
    after = [t for t in commits if t > killed]
    runs = sum(1 for log in logs.values() for line in log.splitlines()  # predictions that ran to the end
               if "digitq.predict_batch[" in line and " succeeded " in line and job.id in line)
    client = redis_client(settings)
    report = {"failover": failover, "down_after_ms": DOWN_AFTER_MS, "files": n, "batches": job.n_batches,
              "committed_at_kill": committed_at_kill,
              "promoted_after_s": round(promoted_s, 2), "kill_to_last_row_s": round(last_row - killed, 2),
              "kill_to_first_commit_s": round(after[0] - killed, 2) if after else None,
              "resent_by_stall_handling": [ln.strip() for log in logs.values() for ln in log.splitlines()
                                           if job.id in ln and ("sent them again" in ln or "not merged" in ln)],
              "predictions": runs, "unacked_left": [_describe(raw) for raw in client.hvals("unacked")],
              "queued_left": client.llen(settings.predict_queue),
              "old_master_port": old.port, "new_master_port": promoted.port,
              "worker_reconnects": {k: v.count("Connection to broker lost") for k, v in logs.items()},
              "batches_by_stateless": sum(1 for b in range(job.n_batches)
                                          if (job.result_header(b) or {}).get("pid") in stateless_pids)}
    (tmp / f"failover-{failover}.json").write_text(json.dumps(report, indent=1))
    print("failover:", json.dumps(report))
    # The workers follow the failover: they answer remote control on the new master (asked by fresh commands,
    # as a person would; a long-lived process's first question may meet kombu's stale pooled connection).
    def digitq(*args: str) -> dict | list:
        done = subprocess.run([sys.executable, "-m", "producer.cli", *args, "--json"], env={**os.environ, **env},
                              cwd=tmp, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert sorted(w["name"].split("-")[0] for w in digitq("workers")["workers"]) == ["shared", "stateless"]
    assert digitq("status", job.id)["state"] == "done"
    from digitq.bus.broker import live_consumers

    assert len(live_consumers(settings, "predict")) == 2  # this process: asks again after the stale connection


def _lost(stack: dict, job: Job, killed: float) -> dict:
    """What a job that did not complete misses, and what the workers and Redis say of it (the report)."""
    client = redis_client(stack["settings"])
    missing = sorted(set(range(job.n_batches)) - job.committed())
    said = {}
    for w in stack["workers"]:
        for line in w.log().splitlines():
            if job.id in line and any(f"'batch': {b}," in line or f", {b}, " in line or f"batch {b}:" in line
                                      or f"batch {b} " in line for b in missing):
                said.setdefault(w.logfile.name, []).append(line[:300])
    settings = stack["settings"]
    report = {"missing": missing, "killed": killed, "now": time.time(),
              "outbox": sorted(outbox.pending(settings, job.id, missing)),
              "outbox_jobs": outbox.jobs(settings), "idle_s": round(stalls.idle_s(job), 1),
              "unclaimed": stalls.unclaimed(settings, job.id, set(missing)),
              "unacked": [_describe(r) for r in client.hvals("unacked")],
              "queued": client.llen("predict"), "said": said,
              "ledger": sorted(int(b) for b in client.smembers(keys.committed(job.id))),
              "warnings": [ln[:300] for w in stack["workers"] for ln in w.log().splitlines()
                           if "WARNING" in ln or "ERROR" in ln][:40]}
    (stack["tmp"] / "failover-lost.json").write_text(json.dumps(report, indent=1))
    return report


def _describe(raw: bytes) -> str:
    """An unacked message, in a few words: its task, its job and batch."""
    message = json.loads(raw)[0]
    headers = message.get("headers", {})
    return f"{headers.get('task')} {headers.get('argsrepr', '')[:40]}"


def _new_job(settings: Settings, before: set[str]) -> Job | None:
    if not settings.jobs_dir.is_dir():
        return None
    new = [p for p in settings.jobs_dir.iterdir() if p.name not in before and (p / "job.json").exists()]
    return Job.load(settings.jobs_dir, new[0].name) if new else None
