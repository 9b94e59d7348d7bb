"""``digitq models``: list, show, promote and roll back model versions, and read the alias history."""

from __future__ import annotations

import getpass
import socket

import click

from digitq.errors import ModelError
from model.registry import ModelRef, Registry
from producer.console import Group, emit_json, settings_for


def _registry(ctx: click.Context) -> Registry:
    return Registry(settings_for(ctx).models_dir)


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def calibration_summary(meta: dict) -> dict:
    """A version's calibration and robustness figures (None where it records none: published before them):
    its temperature, its ECE on the evaluation set, and its accuracy and ECE averaged over the robustness
    suite's shifts, and over the shifts of the families it never trained on (``held_out_families``)."""
    calibration = meta.get("calibration") or {}
    average = (meta.get("robustness") or {}).get("average") or {}
    held = (meta.get("robustness") or {}).get("held_out") or {}
    return {"temperature": calibration.get("temperature"), "ece": (meta.get("evaluation") or {}).get("ece"),
            "suite_accuracy": average.get("accuracy"), "suite_ece": average.get("ece"),
            "suite_worst": average.get("worst"), "held_out_families": meta.get("held_out_families"),
            "held_out_accuracy": held.get("accuracy"), "held_out_ece": held.get("ece")}


def describe(ref: ModelRef, production: str) -> dict:
    """The summary `models list` shows for one version."""
    meta = ref.meta
    return {
        "version": ref.version,
        "accuracy": meta.get("accuracy", meta.get("test_accuracy")),
        **calibration_summary(meta),
        "evaluation": meta.get("evaluation", {}).get("description") or "MNIST test split",
        "created": meta.get("created"),
        "parent": meta.get("parent"),
        "training_id": meta.get("training_id"),
        "production": ref.version == production,
        "path": str(ref.directory),
    }


@click.group(cls=Group)
def models() -> None:
    """Model versions: the bundled one and every published one, and which is production."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@click.pass_context
def list_(ctx, as_json):
    """Every version with its accuracy, creation time and parent; * marks production."""
    registry = _registry(ctx)
    production = registry.current()
    rows = [describe(ref, production) for ref in registry.versions()]
    if as_json:
        emit_json(rows)
        return
    click.echo(f"  {'VERSION':<10} {'ACCURACY':>9}  {'CREATED':<20}  {'PARENT':<9}  EVALUATED ON")
    for r in rows:
        accuracy = f"{r['accuracy']:.2%}" if r["accuracy"] is not None else "-"
        click.echo(f"{'*' if r['production'] else ' '} {r['version']:<10} {accuracy:>9}  {r['created'] or '-':<20}  "
                   f"{r['parent'] or '-':<9}  {r['evaluation']}")


@models.command()
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def show(ctx, version, as_json):
    """One version's metadata, artifacts (checksum-verified) and plots."""
    registry = _registry(ctx)
    ref = registry.resolve(version)
    integrity = ref.verify_all()
    artifacts = {name: {"path": str(ref.directory / name), "sha256": sha, "check": integrity[name]}
                 for name, sha in ref.artifacts().items()}
    info = {**describe(ref, registry.current()), "artifacts": artifacts,
            "plots": [a["path"] for name, a in artifacts.items() if name.endswith(".png")], "metadata": ref.meta}
    if as_json:
        emit_json(info)
        return
    meta = ref.meta
    click.echo(f"version     {ref.version}{'  (production)' if info['production'] else ''}")
    if info["accuracy"] is not None:
        click.echo(f"accuracy    {info['accuracy']:.4%} on {info['evaluation']}")
    baseline = meta.get("baseline")
    if baseline:
        click.echo(f"baseline    {baseline['version']} scored {baseline['accuracy']:.4%} on the same set")
    click.echo(f"created     {info['created']}  parent {info['parent'] or '-'}  training {info['training_id'] or '-'}")
    for source in meta.get("data", []):
        skipped = f", {source['undecodable']} undecodable skipped" if source.get("undecodable") else ""
        click.echo(f"data        {source['path']} ({source['kind']}): {source['train_images']} train, "
                   f"{source['eval_images']} eval{skipped}")
    click.echo(f"recipe      {meta.get('epochs')} epochs, {meta.get('params', 0):,} params, "
               f"{meta.get('training_seconds', '?')} s")
    _echo_calibration(meta, info)
    for a in artifacts.values():
        click.echo(f"artifact    {a['path']}  {'ok' if a['check'] == 'ok' else 'FAILS ITS CHECKSUM'}")
    if any(a["check"] != "ok" for a in artifacts.values()):
        raise ModelError(f"version {ref.version} has tampered or corrupt artifacts; do not promote it")


def percent(value: float | None) -> str:
    """A share as a percentage with two decimals, or ``-`` where none is recorded."""
    return f"{value:.2%}" if value is not None else "-"


def _echo_calibration(meta: dict, info: dict) -> None:
    """The calibration line and the robustness suite's table, where the version records them."""
    calibration = meta.get("calibration")
    if calibration:
        click.echo(f"calibration temperature {calibration['temperature']:g}, fitted on {calibration.get('fitted_on')} "
                   f"({calibration.get('examples', '?'):,} images)")
    else:
        click.echo("calibration none recorded: confidences are served as the model gives them (T = 1)")
    if info["ece"] is not None:
        click.echo(f"ece         {percent(info['ece'])} on {info['evaluation']} (15 bins)")
    robustness = meta.get("robustness")
    if not robustness:
        click.echo("robustness  not recorded (published before the suite): `digitq evaluate --suite robustness`")
        return
    limit = robustness.get("limit")
    click.echo(f"robustness  suite on {robustness.get('set')}, "
               f"{f'{limit:,} images per shift at most' if limit else 'every image'}: average accuracy "
               f"{percent(info['suite_accuracy'])}, ECE {percent(info['suite_ece'])}, worst {info['suite_worst']}")
    if info["held_out_accuracy"] is not None:
        click.echo(f"held out    {', '.join(info['held_out_families'] or [])} (never trained on): mean accuracy "
                   f"{percent(info['held_out_accuracy'])}, ECE {percent(info['held_out_ece'])}")
    click.echo(f"  {'SHIFT':<22} {'IMAGES':>7} {'ACCURACY':>9} {'ECE':>6}")
    for row in robustness.get("shifts", []):
        mark = "  held out" if row.get("held_out") else ""
        click.echo(f"  {row['name']:<22} {row['examples']:>7,} {percent(row['accuracy']):>9} {percent(row['ece']):>6}"
                   f"{mark}")


@models.command()
@click.argument("version")
@click.option("--reason", default="", help="Why (kept in the history).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def promote(ctx, version, reason, as_json):
    """Make VERSION production (checksums verified first). New jobs use it; running jobs keep theirs."""
    moved = _registry(ctx).promote(version, reason=reason or "promoted by hand", by=f"digitq models promote ({_who()})")
    if as_json:
        emit_json(moved)
    elif moved["moved"]:
        click.echo(f"production: {moved['from']} -> {moved['to']}")
    else:
        click.echo(f"production is already {moved['to']}")


@models.command()
@click.option("--reason", default="", help="Why (kept in the history).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def rollback(ctx, reason, as_json):
    """Move production back to the version it named before the last promotion."""
    moved = _registry(ctx).rollback(reason=reason or "rolled back by hand", by=f"digitq models rollback ({_who()})")
    if as_json:
        emit_json(moved)
    else:
        click.echo(f"production: {moved['from']} -> {moved['to']} (rolled back)")


@models.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@click.pass_context
def history(ctx, as_json):
    """Every move of the production alias: when, from, to, why, by whom."""
    entries = _registry(ctx).history()
    if as_json:
        emit_json(entries)
        return
    if not entries:
        click.echo("production has never moved (the bundled model serves)")
    for e in entries:
        click.echo(f"{e['at']}  {e['action']:<8} {e['from']} -> {e['to']}  by {e['by']}: {e['reason']}")
