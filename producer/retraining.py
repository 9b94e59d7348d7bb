"""``digitq train``, ``digitq trainings``, ``digitq training``: request retraining on the queue and follow it.

The producer writes the request under the data dir and sends the task by name;
it never imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

import click

from digitq.batch import stalls
from digitq.disk.training_requests import Training, create_training, list_trainings, send_training
from digitq.errors import BrokerError, ConfigError, DataError, TrainingError, WaitTimeout
from digitq.settings import PROMOTE_CHOICES, Settings
from producer.console import emit_json, settings_for, when

#: How long a request may sit untaken before ``--wait`` says a training worker may be missing.
QUEUED_HINT_S = 15.0
TRAIN_WORKER = "celery -A worker worker -Q train -c 1"


def parse_eta(text: str) -> float:
    """An ISO 8601 time as a Unix timestamp; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(f"--eta {text!r} is not an ISO 8601 time, e.g. 2026-12-01T03:00:00Z") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def request_training(settings: Settings, *, sources: list[str], epochs: int, from_version: str | None,
                     holdout: float, seed: int, promote: str, eta: float | None = None, by: str = "digitq train",
                     ) -> Training:
    """Validate, write the request, send it. Paths are made absolute: workers run elsewhere."""
    from digitq.bus.broker import ping
    from model.registry import Registry

    if not sources:
        raise ConfigError("no training data: give --data (an MNIST folder or DIR/<digit>/ images) or set DIGITQ_MNIST")
    resolved = []
    for source in sources:
        path = os.path.abspath(os.path.expanduser(source))
        if not os.path.exists(path):
            raise DataError(f"training source {source} does not exist")
        resolved.append(path)
    if from_version:  # pin now, like a job pins its model: `production` means the one of this moment
        from_version = Registry(settings.models_dir).resolve(from_version).version
    if promote not in PROMOTE_CHOICES:
        raise ConfigError(f"--promote must be one of {', '.join(PROMOTE_CHOICES)}")
    ping(settings)
    settings.trainings_dir.mkdir(parents=True, exist_ok=True)
    training = create_training(settings.trainings_dir, sources=resolved, epochs=epochs, from_version=from_version,
                               holdout=holdout, seed=seed, promote=promote, by=by, eta=eta)
    send_training(settings, training, eta=eta)
    return training


def _consumers(settings: Settings) -> list[str]:
    from digitq.bus.broker import live_consumers

    try:
        return live_consumers(settings, settings.train_queue)
    except BrokerError:
        return []  # cannot tell: say how to start one anyway


def live_training_status(settings: Settings | None, training: Training) -> dict:
    """The training's status from its files, ``stalled`` (with the cause) while it is queued and a
    train worker reports that it cannot see it (a wrong DIGITQ_DATA_DIR; see :mod:`digitq.batch.stalls`)."""
    status = training.status()
    if settings is None or status["state"] != "queued":
        return status
    from redis.exceptions import RedisError  # 0.14 s to import: not at the CLI's start, which scans wait on

    try:
        record = stalls.read(settings, training.id)
    except RedisError:
        return status
    if record:
        status.update(state="stalled", stalled={**record, "cause": stalls.describe(record, "training")})
    return status


def follow_training(training: Training, timeout: float | None, poll: float = 0.5, quiet: bool = False,
                    settings: Settings | None = None) -> dict:
    """Poll a training with a progress bar (epoch k/N, loss, accuracy) until it ends."""
    from producer.progress import Progress

    deadline = None if timeout is None else time.monotonic() + timeout
    since = time.monotonic()
    hinted = set()
    status = training.status()
    with Progress(int(status["epochs"] or 1), "train", unit="epoch", show_rate=False,
                  enabled=None if not quiet else False) as bar:
        while True:
            status = live_training_status(settings, training)
            if status["loss"] is not None:
                bar.detail = f"loss {status['loss']:.4f} accuracy {status['train_accuracy'] or 0:.2%}"
            bar.update(int(status["epoch"]))
            state = status["state"]
            if state in ("done", "failed"):
                return status
            waited = time.monotonic() - since
            if state == "queued" and waited > QUEUED_HINT_S and "queued" not in hinted:
                hinted.add("queued")
                if settings is None or not _consumers(settings):
                    click.secho(f"\ntraining {training.id} is still queued and no worker consumes the "
                                f"`train` queue: start one with `{TRAIN_WORKER}`", err=True, fg="yellow")
            if state == "stalled" and "stalled" not in hinted:
                hinted.add("stalled")
                click.secho(f"\ntraining {training.id} is stalled: {status['stalled']['cause']}", err=True,
                            fg="yellow")
            if state == "interrupted" and "interrupted" not in hinted:
                hinted.add("interrupted")
                click.secho(f"\ntraining {training.id} was interrupted (its worker died); it runs again when "
                            f"redelivered, or now with `digitq train --retry {training.id}`", err=True, fg="yellow")
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"training {training.id} not finished after {timeout:g}s ({state}, epoch "
                                  f"{status['epoch']}/{status['epochs']}); follow it with "
                                  f"`digitq training {training.id}`")
            time.sleep(poll)


def _summary(status: dict) -> str:
    if status["state"] == "failed":
        return f"training {status['training_id']} failed: {status['reason']}"
    if status["state"] != "done":
        return f"training {status['training_id']}: {status['state']}"
    verdict = "promoted to production" if status["promoted"] else "published as a candidate"
    return (f"training {status['training_id']}: version {status['version']} {verdict}; "
            f"accuracy {status['accuracy']:.2%} vs {status['baseline_accuracy']:.2%} for "
            f"{status['baseline_version']}\n  {status['reason']}")


@click.command()
@click.option("--data", "-d", "sources", multiple=True, metavar="SRC",
              help="Training data, repeatable: an MNIST folder (IDX files) or mnist.npz, or a labelled folder "
                   "DIR/<digit>/<image>. [default: $DIGITQ_MNIST]")
@click.option("--epochs", "-e", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--from-version", metavar="V", help="Fine-tune from this version (e.g. production) instead of "
                                                  "training from scratch.")
@click.option("--holdout", default=0.2, show_default=True, type=click.FloatRange(0, min_open=False),
              help="Share (< 1) or count (>= 1) of each labelled folder held out for evaluation; MNIST is "
                   "evaluated on its test split.")
@click.option("--seed", default=0, show_default=True, help="Seeds the hold-out split and the training.")
@click.option("--promote", type=click.Choice(PROMOTE_CHOICES), default="auto", show_default=True,
              help="auto: production only if not worse than it on the same evaluation set (within "
                   "DIGITQ_PROMOTE_TOLERANCE points); always; never (a candidate).")
@click.option("--countdown", type=click.FloatRange(0), metavar="S", help="Start no sooner than S seconds from now.")
@click.option("--eta", metavar="ISO8601", help="Start no sooner than this time (UTC without an offset).")
@click.option("--retry", metavar="ID", help="Re-send training ID (queued, interrupted or failed) instead of a new one.")
@click.option("--wait", "-w", "wait_", is_flag=True, help="Follow the training with a progress bar until it ends.")
@click.option("--timeout", type=float, metavar="S", help="With --wait: give up after S seconds (exit 3).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last stdout line.")
@click.pass_context
def train(ctx, sources, epochs, from_version, holdout, seed, promote, countdown, eta, retry, wait_, timeout, as_json):
    """Retrain the model on the `train` queue and publish a new version.

    A training worker (`celery -A worker worker -Q train -c 1`) trains the seed CNN
    with the bundled recipe, scores it and production on the same evaluation set,
    publishes it as the next version, and promotes it when the gate allows.
    Prints the training id at once; --wait follows it.
    """
    from digitq.bus.broker import ping

    settings = settings_for(ctx)
    if countdown is not None and eta:
        raise ConfigError("give --countdown or --eta, not both")
    if retry and (sources or from_version or countdown is not None or eta):
        raise ConfigError("--retry re-sends a training as it was requested; it takes no --data, --from-version, "
                          "--countdown or --eta")
    if retry:
        training = Training.load(settings.trainings_dir, retry)
        training.reopen()
        ping(settings)
        send_training(settings, training)
    else:
        when_ = parse_eta(eta) if eta else (time.time() + countdown if countdown else None)
        training = request_training(settings, sources=list(sources) or ([settings.mnist] if settings.mnist else []),
                                    epochs=epochs, from_version=from_version, holdout=holdout, seed=seed,
                                    promote=promote, eta=when_)
    status = training.status()
    if not as_json:
        click.echo(training.id)
        click.echo(f"training {training.id}: {status['state']}, {status['epochs']} epoch(s) on "
                   f"{', '.join(status['sources'])}; follow with `digitq training {training.id}`", err=True)
    if wait_:
        status = follow_training(training, timeout, quiet=as_json, settings=settings)
        if not as_json:
            click.echo(_summary(status))
    if as_json:
        emit_json(status)
    if status["state"] == "failed":
        if not as_json:
            click.secho(f"Fix the cause, then `digitq train --retry {training.id}`", err=True, fg="red")
        sys.exit(TrainingError.exit_code)


@click.command()
@click.option("--limit", "-n", default=20, show_default=True, help="How many recent trainings.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@click.pass_context
def trainings(ctx, limit, as_json):
    """List recent trainings, newest first."""
    settings = settings_for(ctx)
    rows = [Training.load(settings.trainings_dir, t).status() for t in list_trainings(settings.trainings_dir)[:limit]]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no trainings under {settings.trainings_dir}")
        return
    click.echo(f"{'TRAINING':<24} {'STATE':<11} {'EPOCH':>7} {'VERSION':>7} {'ACCURACY':>9}  {'CREATED':<16}  BY")
    for r in rows:
        version = (r["version"] or "-") + ("*" if r["promoted"] else "")
        accuracy = f"{r['accuracy']:.2%}" if r["accuracy"] is not None else "-"
        click.echo(f"{r['training_id']:<24} {r['state']:<11} {str(r['epoch']) + '/' + str(r['epochs']):>7} "
                   f"{version:>7} {accuracy:>9}  {when(r['created']):<16}  {r['by']}")
    click.echo("* promoted to production")


@click.command()
@click.argument("training_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def training(ctx, training_id, as_json):
    """Show one training: state, progress, outcome, where its log is."""
    settings = settings_for(ctx)
    t = Training.load(settings.trainings_dir, training_id)
    st = live_training_status(settings, t)
    if as_json:
        emit_json({**st, "progress": t.progress()})
        return
    click.echo(f"training  {st['training_id']}\nstate     {st['state']}\n"
               f"epoch     {st['epoch']}/{st['epochs']}" +
               (f" (loss {st['loss']:.4f}, accuracy {st['train_accuracy']:.2%})" if st["loss"] is not None else ""))
    click.echo(f"data      {', '.join(st['sources'])}")
    if st["from_version"]:
        click.echo(f"from      version {st['from_version']}")
    click.echo(f"requested {when(st['created'])} by {st['by']}, promote {st['promote']}")
    if st["state"] in ("done", "failed"):
        click.echo(_summary(st))
    if st.get("stalled"):
        click.echo(f"stalled   {st['stalled']['cause']}")
    click.echo(f"log       {st['log']}")
