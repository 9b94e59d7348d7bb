"""``digitq workers``: the live workers, what they serve, whether they see the producer's data dir (or serve
its jobs statelessly), and the queue depths. Celery's remote control answers, so it works from any host that
reaches Redis."""

from __future__ import annotations

import json

import click

from digitq.bus import keys
from digitq.bus.broker import PREDICT_TASK, TRAIN_TASK, client_app, eviction_policy, ping, redact, redis_client
from digitq.disk.storage import data_dir_id
from digitq.errors import BrokerError
from digitq.settings import Settings
from producer.console import emit_json, settings_for


def fleet(settings: Settings, timeout: float = 1.5) -> dict:
    """Workers (one dict each), queue depths, the producer's data-dir id, and warnings.

    A :class:`BrokerError` with advice when Redis cannot be reached or asked."""
    from kombu.exceptions import KombuError
    from redis.exceptions import RedisError

    ping(settings)  # an unreachable Redis: one line with advice, before Celery retries and raises its own
    try:
        return _fleet(settings, timeout)
    except (KombuError, RedisError, OSError) as e:
        raise BrokerError(f"cannot ask Redis at {redact(settings.redis_url)} which workers run ({e}); "
                          "check that it is up and DIGITQ_REDIS_URL / --redis-url") from e


def _fleet(settings: Settings, timeout: float) -> dict:
    app = client_app(settings)
    try:
        inspect = app.control.inspect(timeout=timeout)
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
        info = {}
        for reply in app.control.broadcast("digitq_info", reply=True, timeout=timeout) or []:
            info.update(reply)
    finally:
        app.close()
    client = redis_client(settings)
    ours = data_dir_id(settings.data_dir, create=False)
    workers = []
    for name in sorted(set(stats) | set(queues)):
        st, extra = stats.get(name, {}), info.get(name, {})
        served = client.hgetall(keys.served_models(name))
        totals = st.get("total", {})
        worker = {
            "name": name,
            "host": name.split("@", 1)[-1],
            "pid": st.get("pid"),
            "queues": sorted(q.get("name") for q in queues.get(name, [])),
            "concurrency": (st.get("pool") or {}).get("max-concurrency"),
            "threads": extra.get("threads"),
            "models": sorted(v.decode() for v in served),
            "batches_done": totals.get(PREDICT_TASK, 0),
            "trainings_done": totals.get(TRAIN_TASK, 0),
            "data_dir": extra.get("data_dir"),
            "data_dir_id": extra.get("data_dir_id"),
            # The queue of results it commits for stateless workers (None: it commits none).
            "collects": extra.get("collects"),
        }
        # Not this data dir: it predicts this producer's batches statelessly (results back through Redis).
        worker["stateless"] = worker["data_dir_id"] != ours
        workers.append(worker)
    collect = settings.collect_route(ours) if ours else None
    depths = {q: client.llen(q) for q in (settings.predict_queue, settings.train_queue, collect) if q}
    policy, eviction = eviction_policy(settings)
    warnings = [eviction] if eviction else []
    if ours is None:
        warnings.append(f"the data dir {settings.data_dir.resolve()} has no id yet, so no worker can be said to see "
                        "it: `digitq init` (or the first scan) gives it one, and workers that see it pick it up "
                        "within 2 s")
    predicting = [w for w in workers if settings.predict_queue in w["queues"]]
    if predicting and collect and not any(collect in w["queues"] for w in workers):
        warnings.append(f"no live worker sees this data dir {settings.data_dir.resolve()} (id {ours}): results of "
                        f"stateless workers wait in Redis ({collect}) until a worker with this DIGITQ_DATA_DIR runs, "
                        "or `digitq wait JOB` on this host commits them")
    return {"workers": workers, "queues": depths, "data_dir": str(settings.data_dir.resolve()),
            "data_dir_id": ours, "redis_maxmemory_policy": policy, "warnings": warnings}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def workers(ctx, as_json):
    """The live workers (queues, processes, models served, batches done, data dir) and queue depths."""
    report = fleet(settings_for(ctx))
    if as_json:
        emit_json(report)
        return
    if not report["workers"]:
        click.echo("no live worker answered; start one with `celery -A worker worker` "
                   "(and `celery -A worker worker -Q train -c 1` for training)")
    for w in report["workers"]:
        flag = "  stateless" if w["stateless"] else "  sees the data dir"
        click.echo(f"{w['name']}  pid {w['pid']}  queues {','.join(w['queues']) or '-'}  x{w['concurrency']}  "
                   f"batches {w['batches_done']}  models {','.join(w['models']) or '-'}{flag}")
    click.echo("queues    " + json.dumps(report["queues"]))
    for warning in report["warnings"]:
        click.secho(f"warning: {warning}", err=True, fg="yellow")
