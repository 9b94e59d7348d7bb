"""``digitq``: scan folders into prediction jobs, follow them, evaluate models.

Heavy modules (Celery, Pillow, TensorFlow) are imported inside the commands
that need them, so ``digitq --help`` answers at once.
"""

from __future__ import annotations

import sys

import click

from digitq import __version__
from digitq.settings import Settings
from producer.catalog import models
from producer.console import Group, Probability, emit_json, settings_for
from producer.fleet import workers
from producer.retraining import train, training, trainings


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--redis-url", envvar="DIGITQ_REDIS_URL", metavar="URL",
              help="Broker, e.g. redis://:PASSWORD@host:6379/0 or rediss://... for TLS; behind Sentinel "
                   "sentinel://:PASSWORD@host1:26379/0;sentinel://host2:26379;... (sentinels:// for TLS). "
                   "[env DIGITQ_REDIS_URL; default redis://localhost:6379/0]")
@click.option("--redis-master", envvar="DIGITQ_REDIS_MASTER", metavar="NAME",
              help="The master's name the sentinels know, for a sentinel:// URL. "
                   "[env DIGITQ_REDIS_MASTER; default mymaster]")
@click.option("--failover-s", envvar="DIGITQ_FAILOVER_S", type=click.FloatRange(0), metavar="S",
              help="Behind Sentinel, how long a command keeps trying through a failover before it fails with "
                   "the `resume` advice. [env DIGITQ_FAILOVER_S; default 60]")
@click.option("--data-dir", envvar="DIGITQ_DATA_DIR", metavar="DIR",
              help="Where jobs, models and outputs live; shared storage when workers run on several "
                   "hosts. [env DIGITQ_DATA_DIR; default ./digitq-data]")
@click.version_option(__version__, prog_name="digitq")
@click.pass_context
def main(ctx: click.Context, redis_url: str | None, redis_master: str | None, failover_s: float | None,
         data_dir: str | None) -> None:
    """Classify handwritten-digit images in bulk on a Redis + Celery task queue.

    \b
    Typical use:
      celery -A worker worker          # start workers (any number, any host)
      digitq scan ./images --wait --out predictions.csv
      digitq status JOB | digitq wait JOB | digitq resume JOB | digitq jobs
      celery -A worker worker -Q train -c 1   # a training worker
      digitq train --data ../shared/mnist --wait
      digitq models list | digitq models promote V | digitq models rollback
    """
    ctx.obj = {"redis_url": redis_url, "redis_master": redis_master, "failover_s": failover_s, "data_dir": data_dir}
    Settings.from_env(**ctx.obj)  # fail early on a bad DIGITQ_* value


# -- scan -------------------------------------------------------------------

@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "-o", metavar="FILE", type=click.Path(dir_okay=False),
              help="Copy of the final CSV (placed by --wait or `digitq wait`).")
@click.option("--batch-size", "-b", type=click.IntRange(1, 100_000), envvar="DIGITQ_BATCH_SIZE",
              help="Images per task. [env DIGITQ_BATCH_SIZE; default 512]")
@click.option("--model-version", "-m", metavar="V", help="Pin this model version (default: production).")
@click.option("--by-path", is_flag=True,
              help="Send file paths instead of bytes (workers must see the same files at the same paths).")
@click.option("--max-in-flight", type=click.IntRange(1), envvar="DIGITQ_MAX_IN_FLIGHT",
              help="Most images sent but not yet committed. [env DIGITQ_MAX_IN_FLIGHT; default 50000]")
@click.option("--senders", type=click.IntRange(1, 16), envvar="DIGITQ_SENDERS",
              help="Processes that send the batches (forked; each sends every Nth batch). "
                   "[env DIGITQ_SENDERS; default 2 where there are two cores]")
@click.option("--incremental", is_flag=True,
              help="Predict only files whose bytes the pinned model version has not scored in an earlier "
                   "--incremental scan; fill in the rest from the content-hash index under the data dir.")
@click.option("--wait", "-w", "wait_", is_flag=True, help="Follow the job to the end and place --out.")
@click.option("--timeout", type=float, metavar="S", help="With --wait: give up after S seconds (exit 3).")
@click.option("--resume-stalled", is_flag=True,
              help="With --wait: re-send batches a dead worker host took with it (see `digitq wait --help`).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last stdout line.")
@click.pass_context
def scan(ctx, paths, out, batch_size, model_version, by_path, max_in_flight, senders, incremental, wait_, timeout,
         resume_stalled, as_json):
    """Find the images under PATHS and enqueue them as one prediction job.

    Each PATH is a folder (walked recursively; hidden and non-image files are
    skipped) or an image file. Prints the job id; the CSV appears under the
    data dir as jobs/JOB/predictions.csv, one row per image, sorted by path.
    """
    from producer.progress import Progress
    from producer.scan import ForkedWalk

    settings = settings_for(ctx, max_in_flight=max_in_flight, senders=senders)
    # The walk runs in a child process while this one imports Redis, kombu and Celery (0.3-0.4 s)
    # and pings Redis: on two cores, neither waits for the other.
    walk = ForkedWalk(paths)
    try:
        _import_sender(settings)
    except BaseException:
        walk.cancel()
        raise
    with Progress(0, "scanning", unit="files") as bar:
        found = walk.result(on_file=bar.update)
    for warning in found.warnings:
        click.secho(f"warning: {warning}", err=True, fg="yellow")
    from producer.dispatch import new_job
    from producer.senders import enqueue_parallel

    job = new_job(settings, found.files, sources=list(paths), skipped=found.skipped, batch_size=batch_size,
                  model_version=model_version, by_path=by_path, out=out, incremental=incremental)
    found.files.clear()  # the manifest on disk has them now; a million paths need not stay in memory
    try:
        with Progress(job.total, "enqueue") as bar:
            enqueued = enqueue_parallel(settings, job, progress=bar.update, collect=wait_)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: job {job.id} is saved; `digitq resume {job.id}` sends the rest", err=True)
        ctx.exit(130)
    if job.n_batches == 0:
        job.finalize()
    summary = {"job_id": job.id, "total": job.total, "skipped": found.skipped, "batches": job.n_batches,
               "model_version": job.model_version, "output": str(job.csv_path.resolve()), "out": job.header["out"],
               "sent": enqueued.sent}
    if incremental:
        summary["from_index"] = enqueued.from_index
    if not as_json:
        reused = f", {summary['from_index']} scored before by {job.model_version}" if incremental else ""
        click.echo(f"job {job.id}: {job.total} images in {job.n_batches} batches "
                   f"({found.skipped} skipped{reused}), model {job.model_version}", err=True)
    if wait_:
        status, _ = _follow(job, timeout, quiet=as_json, settings=settings, resume_stalled=resume_stalled)
        summary.update(state=status["state"], done=status["done"], errors=status["errors"])
    elif not as_json:
        click.echo(job.id)
        if out:
            click.echo(f"run `digitq wait {job.id}` to place the CSV at {out}", err=True)
    if as_json:
        emit_json(summary)


def _import_sender(settings: Settings) -> None:
    """Fail fast where Redis is unreachable, and load what sending needs."""
    from digitq.bus.broker import client_app, ping

    ping(settings)
    import kombu.transport.redis  # noqa: F401

    import producer.dispatch  # noqa: F401

    # Celery's first app costs ~80 ms of imports and set-up; the senders' own apps then cost nothing.
    app = client_app(settings)
    app.amqp  # noqa: B018 - loads Celery's messaging module
    app.close()


def _follow(job, timeout: float | None, out: str | None = None, quiet: bool = False,
            settings: Settings | None = None, resume_stalled: bool = False) -> tuple[dict, str | None]:
    """Wait for ``job`` with a progress bar, place its CSV copy, say where the CSV is."""
    from producer.dispatch import resume
    from producer.follow import place_output, wait_for
    from producer.progress import Progress

    resend = (lambda: resume(settings, job)) if resume_stalled and settings is not None else None
    try:
        with Progress(job.total, "predict") as bar:
            # On the data host: commits what stateless workers hand in while no worker that sees it does.
            status = wait_for(job, timeout, on_status=lambda s: bar.update(s["done"]), settings=settings,
                              resume_stalled=resend, collect=settings is not None)
    except KeyboardInterrupt:
        click.echo(f"\nstopped waiting; job {job.id} goes on: `digitq wait {job.id}` to follow it again", err=True)
        sys.exit(130)
    target = place_output(job, out)
    if not quiet:
        click.echo(f"done: {status['done']} rows, {status['errors']} errors -> {target or status['output']}")
    return status, target


def _load_job(settings: Settings, job_id: str):
    from digitq.disk.jobs import Job

    return Job.load(settings.jobs_dir, job_id)


# -- data dir -------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def init(ctx, as_json):
    """Create the data dir and its identity (``.digitq-id``), and print the id.

    The first scan does this too. Workers never do: one whose data dir has no id
    (a volume not mounted yet) serves statelessly until the id appears. Safe to
    run again: an existing id is kept.
    """
    from digitq.disk.storage import data_dir_id
    from digitq.errors import ConfigError

    settings = settings_for(ctx)
    try:
        had = data_dir_id(settings.data_dir, create=False) if settings.data_dir.is_dir() else None
        dir_id = had or data_dir_id(settings.data_dir, create=True)
    except OSError as e:
        raise ConfigError(f"cannot create the data dir's id in {settings.data_dir} ({e.strerror or e}); set "
                          "DIGITQ_DATA_DIR / --data-dir to a writable directory") from e
    summary = {"data_dir": str(settings.data_dir.resolve()), "data_dir_id": dir_id, "created": had is None,
               "collect_queue": settings.collect_route(dir_id)}
    if as_json:
        emit_json(summary)
    else:
        click.echo(dir_id)
        click.echo(f"data dir {summary['data_dir']} ({'new id' if had is None else 'id kept'}); workers that see it "
                   f"commit its jobs and collect {summary['collect_queue']}", err=True)


# -- job commands -------------------------------------------------------------

@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx, job_id, as_json):
    """Show a job's state (queued, running, stalled, done, failed), counts and timings."""
    from producer.follow import live_status

    settings = settings_for(ctx)
    st = live_status(settings, _load_job(settings, job_id))
    if as_json:
        emit_json(st)
        return
    click.echo(f"job       {st['job_id']}\nstate     {st['state']}\n"
               f"progress  {st['done']}/{st['total']} images, {st['errors']} errors, "
               f"{st['batches_done']}/{st['batches']} batches\nmodel     {st['model_version']}")
    if st["elapsed_s"] is not None:
        click.echo(f"elapsed   {st['elapsed_s']:.1f}s ({st['rate_per_s'] or 0:,.0f} images/s)")
    for batch, error in st["failed_batches"].items():
        click.echo(f"failed    batch {batch}: {error}")
    if st.get("duplicates"):
        click.echo(f"discarded {st['duplicates']} later outcome(s) of committed batches (duplicates; the first "
                   "commit of each batch stands)")
    if st.get("stalled"):
        click.echo(f"stalled   {st['stalled']['cause']}")
    click.echo(f"output    {st['output']}" + ("" if st["state"] == "done" else " (when done)"))


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--timeout", type=float, metavar="S", help="Give up after S seconds (exit 3).")
@click.option("--out", "-o", metavar="FILE", type=click.Path(dir_okay=False),
              help="Copy the CSV here (default: the scan's --out).")
@click.option("--resume-stalled", is_flag=True,
              help="When the job is stalled with batches nobody holds (a worker host died), re-send them "
                   "(`digitq resume`) and keep waiting.")
@click.option("--stall-after", type=click.IntRange(1), metavar="S", envvar="DIGITQ_STALL_AFTER",
              help="Seconds without a commit before the job may count as stalled. [env DIGITQ_STALL_AFTER; "
                   "default 120]")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as one JSON object.")
@click.pass_context
def wait(ctx, job_id, timeout, out, resume_stalled, stall_after, as_json):
    """Follow a job until it is done; exit 0 when its CSV is complete.

    It says so, once, when no worker consumes the queue, when a worker cannot see
    the job (wrong DIGITQ_DATA_DIR), and when the job is stalled: no commit for
    --stall-after seconds and none of its missing batches queued or held by a live
    worker, as a worker host that died leaves it (its batches would come back only
    after the visibility timeout). --resume-stalled then re-sends them itself.
    """
    settings = settings_for(ctx, stall_after=stall_after)
    st, target = _follow(_load_job(settings, job_id), timeout, out, quiet=as_json, settings=settings,
                         resume_stalled=resume_stalled)
    if as_json:
        emit_json({**st, "out": target})


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--below", "threshold", default=0.9, show_default=True, type=Probability(),
              help="Confidence under which an image counts as doubtful (a `digitq review` candidate).")
@click.option("--gallery", default=24, show_default=True, type=click.IntRange(0, 1000),
              help="How many of the lowest-confidence images to show.")
@click.option("--open", "open_", is_flag=True, help="Open the report in the default browser.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def report(ctx, job_id, threshold, gallery, open_, as_json):
    """Write JOB's report: one self-contained HTML file (jobs/JOB/report.html) that opens offline.

    Counts, errors, model version, timings; the predicted classes and the confidence
    distribution beside the model's evaluation set (a drift shows); the share below
    --below; and the lowest-confidence images, each as the original and as the 28x28
    array the model saw.
    """
    from producer.report import build_report

    settings = settings_for(ctx)
    figures = build_report(settings, _load_job(settings, job_id), threshold=threshold, gallery=gallery)
    if as_json:
        emit_json(figures)
    else:
        click.echo(figures["report"])
        for skipped in figures["not_shown_files"]:
            click.secho(f"not shown: {skipped['source']}: {skipped['reason']}", err=True, fg="yellow")
        click.echo(f"{figures['images']:,} images, {figures['errors']:,} errors, {figures['below_threshold']:,} "
                   f"below {threshold * 100:g}% confidence", err=True)
    if open_:
        click.launch(figures["report"])


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--below", default=0.9, show_default=True, type=Probability(),
              help="Export the images predicted with less confidence than this.")
@click.option("--limit", "-n", type=click.IntRange(1), help="At most this many (the least confident first).")
@click.option("--out", "-o", "out", metavar="DIR", type=click.Path(file_okay=False),
              help="A new folder to export into. [default: ./review-JOB]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def review(ctx, job_id, below, limit, out, as_json):
    """Export JOB's doubtful images into a folder for a person to label.

    Each image below --below goes to DIR/<predicted digit>/, each decodable image
    that got an error row to DIR/ itself, and DIR/review.json records where each came
    from. Move every mislabelled file into its right digit folder (or DIR/discard/),
    then `digitq train --data MNIST --data DIR --from-version production`: files left
    where they are count as confirmed, moved ones as corrections.
    """
    from pathlib import Path

    from producer.review import export_review

    settings = settings_for(ctx)
    job = _load_job(settings, job_id)
    summary = export_review(settings, job, below, limit, Path(out or f"review-{job.id}"))
    if as_json:
        emit_json(summary)
        return
    click.echo(summary["out"])
    for skipped in summary["skipped_files"]:
        click.secho(f"skipped: {skipped['source']}: {skipped['reason']}", err=True, fg="yellow")
    click.echo(f"{summary['doubtful']} image(s) below {below * 100:g}% confidence in their predicted digit's folder, "
               f"{summary['unlabelled']} unlabelled, {summary['skipped']} skipped; move the wrong ones, then train "
               f"with --data {summary['out']}", err=True)


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def resume(ctx, job_id, as_json):
    """Re-send every batch of JOB that has no committed result.

    Uses the manifest on disk, so a job finishes even after Redis lost its
    queue or every worker died. Safe to run when nothing is missing.
    """
    from producer.dispatch import resume as resume_job

    settings = settings_for(ctx)
    job = _load_job(settings, job_id)
    resent = resume_job(settings, job)
    images = sum(job.batch_sizes[i] for i in resent)
    if as_json:
        emit_json({"job_id": job.id, "resent_batches": len(resent), "resent_images": images,
                   "state": job.status()["state"]})
    elif resent:
        click.echo(f"job {job.id}: re-sent {len(resent)} batches ({images} images); follow with `digitq wait {job.id}`")
    else:
        click.echo(f"job {job.id}: nothing missing ({job.status()['state']})")


@main.command()
@click.option("--limit", "-n", default=20, show_default=True, help="How many recent jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@click.pass_context
def jobs(ctx, limit, as_json):
    """List recent jobs, newest first."""
    from digitq.disk.jobs import Job, list_jobs

    settings = settings_for(ctx)
    rows = [Job.load(settings.jobs_dir, j).status() for j in list_jobs(settings.jobs_dir)[:limit]]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no jobs under {settings.jobs_dir}")
        return
    click.echo(f"{'JOB':<24} {'STATE':<8} {'DONE':>15} {'ERRORS':>7}  MODEL")
    for r in rows:
        click.echo(f"{r['job_id']:<24} {r['state']:<8} {str(r['done']) + '/' + str(r['total']):>15} "
                   f"{r['errors']:>7}  {r['model_version']}")


# -- models -------------------------------------------------------------------

@main.command()
@click.option("--data", envvar="DIGITQ_MNIST", metavar="PATH",
              help="MNIST IDX dir, mnist.npz or DIR/<digit>/ folder. [env DIGITQ_MNIST; default: Keras download]")
@click.option("--model-version", "-m", metavar="V", help="Model to evaluate (default: production).")
@click.option("--suite", type=click.Choice(["robustness"]),
              help="Score named shifts of the test split instead (resolution, stroke, slant, capture, paper, "
                   "writing styles, paper tone, shading, lines, fog, outline, speckle, diffusion): accuracy and "
                   "calibration error (ECE) per shift, the families held out of training apart (the headline).")
@click.option("--limit", "-n", type=click.IntRange(1), metavar="N",
              help="With --suite: the first N images of one seeded order per shift (default: all 10,000).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last stdout line.")
@click.pass_context
def evaluate(ctx, data, model_version, suite, limit, as_json):
    """Accuracy and loss of a model on the MNIST test split, or on its robustness suite."""
    from model.quality.evaluation import evaluate_model, evaluate_robustness

    if limit is not None and suite is None:
        raise click.UsageError("--limit applies to --suite robustness; plain evaluate scores all test images")
    if suite == "robustness":
        result = evaluate_robustness(settings_for(ctx), data, model_version, limit)
        if as_json:
            emit_json(result)
            return
        click.echo(f"model {result['model_version']} ({result['runtime']}) on the robustness suite "
                   f"({result['data_source']}, seed {result['seed']}):")
        held = result["held_out"]
        if held["accuracy"] is not None:
            click.echo(f"  HELD-OUT MEAN (families {', '.join(result['held_out_families'])}, never trained on): "
                       f"accuracy {held['accuracy']:.2%}, ECE {held['ece']:.1%} over {held['shifts']} shifts")
        header = (f"  {'SHIFT':<22} {'FAMILY':<11} {'DIGITS':<6} {'N':>6} {'ACCURACY':>9} {'ALONE':>8} {'ECE':>6} "
                  f"{'CONF':>6}")
        for title, held_out in (("trained on (or not held out):", False), ("held out of training:", True)):
            click.echo(f"  {title}")
            click.echo(header)
            for r in (r for r in result["shifts"] if r["held_out"] is held_out):
                digits = "all" if len(r["digits"]) == 10 else ",".join(map(str, r["digits"]))
                alone = f"{r['naive_accuracy']:>8.2%}" if r.get("naive_accuracy") is not None else f"{'':>8}"
                click.echo(f"  {r['name']:<22} {r['family']:<11} {digits:<6} {r['examples']:>6} "
                           f"{r['accuracy']:>9.2%} {alone} {r['ece']:>6.1%} {r['mean_confidence']:>6.3f}")
        avg, trained = result["average"], result["trained"]
        click.echo(f"  not held out: {trained['shifts']} shifts, accuracy {trained['accuracy']:.2%}, "
                   f"ECE {trained['ece']:.1%}")
        click.echo(f"  average over all {avg['shifts']} shifts (clean excluded): accuracy {avg['accuracy']:.2%}, "
                   f"ECE {avg['ece']:.1%}; worst: {avg['worst']}")
        click.echo("  ALONE: the model on the same files without decode_image (grey, resized whole, polarity)")
        click.echo("  style shifts use only the test digits of their class (DIGITS)")
        return
    result = evaluate_model(settings_for(ctx), data, model_version)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"model {result['model_version']}: accuracy {result['accuracy']:.4%}, loss {result['loss']:.4f}, "
                   f"ECE {result['ece']:.2%} on {result['examples']} test images ({result['data_source']}), "
                   f"{result['params']:,} params")


@main.command()
@click.option("--samples", type=click.Path(exists=True, file_okay=False),
              help="Folder to scan (default: the repository's samples/digits).")
@click.option("--demo-dir", default="digitq-demo-data", show_default=True, type=click.Path(file_okay=False),
              help="Data dir for the demo's job (kept, so the CSV stays).")
def demo(samples, demo_dir):
    """Run the whole pipeline once: a private Redis, one worker, a scan of sample digits.

    Stops the Redis server and the worker it started when it is done.
    """
    from producer.demo import run_demo

    sys.exit(run_demo(samples, demo_dir))


main.add_command(train)
main.add_command(trainings)
main.add_command(training)
main.add_command(models)
main.add_command(workers)


if __name__ == "__main__":  # pragma: no cover
    main()
