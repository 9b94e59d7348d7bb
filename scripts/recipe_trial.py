"""Score trained model directories on the recipe's hold-out: how a training recipe is chosen.

    .venv/bin/python -m model.training --data MNIST --out runs/a --holdout 5000 [--seed 1] ...
    .venv/bin/python scripts/recipe_trial.py MNIST runs/a [runs/b ...] [--holdout 5000] [--limit N] [--json]

Each ``DIR`` is ``python -m model.training --holdout N`` output (``model.keras``). They are scored on the
last ``N`` MNIST training digits (never the test split), clean and under the robustness suite made from
them with seed :data:`TRIAL_SEED` (the test split's suite uses :data:`model.quality.robustness.SEED`), every
digit or at most ``LIMIT`` images per shift. The suite is built once and every directory is scored on that build,
so the figures compare like with like. The held-out families' mean is reported, never chosen on: a
recipe is chosen on hold-out clean accuracy and the trained families' mean (docs/model.md, "How the
recipe was chosen").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, installed or not

#: The hold-out suite's seed: another draw of every shift than the test split's.
TRIAL_SEED = 2015


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("mnist", type=click.Path(exists=True))
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--holdout", default=5000, show_default=True, help="The last N training digits the runs held out.")
@click.option("--limit", type=int, help="Images per shift at most (default: every hold-out digit).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@click.option("--cache", type=click.Path(dir_okay=False),
              help="An .npz of the built suite: read when it exists (and was built alike), else written.")
def main(mnist: str, dirs: tuple[str, ...], holdout: int, limit: int | None, as_json: bool, cache: str | None) -> None:
    """Build the hold-out suite once, score every directory on it, print a table (or JSON)."""
    import keras

    from model.dataset import load_dataset
    from model.quality.evaluation import score_shifts
    from model.quality.robustness import HELD_OUT_FAMILIES, build_suite
    from model.training.recipe import predict_arrays

    for d in dirs:
        meta = json.loads((Path(d) / "model.json").read_text())
        recipe = meta.get("recipe", {})
        if recipe.get("holdout") != holdout or recipe.get("limit"):
            raise click.UsageError(f"{d} was trained with --holdout {recipe.get('holdout')} and --limit "
                                   f"{recipe.get('limit')}, not --holdout {holdout} on every training digit: "
                                   f"these are not the digits it held out; train it with --holdout {holdout}")
    data = load_dataset(mnist)
    x, y = data.x_train[-holdout:], data.y_train[-holdout:]
    started = time.monotonic()
    built_as = (holdout, -1 if limit is None else limit)
    sets = _cached(cache, built_as) if cache else None
    if sets is None:
        sets = build_suite(x, y, limit=limit, seed=TRIAL_SEED)
        if cache:
            _save(cache, sets, built_as)
    built = time.monotonic() - started
    results = {}
    for d in dirs:
        model = keras.models.load_model(Path(d) / "model.keras", compile=False, safe_mode=True)
        scores = score_shifts(sets, lambda images, m=model: predict_arrays(m, images), HELD_OUT_FAMILIES)
        rows = {r["name"]: r for r in scores["shifts"]}
        results[d] = {"clean": rows["clean"]["accuracy"], "trained": scores["trained"]["accuracy"],
                      "held_out": scores["held_out"]["accuracy"],
                      "shifts": {n: r["accuracy"] for n, r in rows.items()}}
    if as_json:
        click.echo(json.dumps({"holdout": holdout, "limit": limit, "seed": TRIAL_SEED,
                               "build_seconds": round(built, 1), "runs": results}, indent=1))
        return
    names = list(next(iter(results.values()))["shifts"])
    click.echo(f"hold-out: last {holdout} training digits, suite seed {TRIAL_SEED}, {limit or 'every digit'} per shift "
               f"(built in {built:.0f} s)")
    click.echo(f"{'shift':24}" + "".join(f"{Path(d).name[-12:]:>13}" for d in dirs))
    for label, key in (("clean", None), ("trained mean", "trained"), ("held-out mean", "held_out")):
        values = [results[d]["shifts"]["clean"] if key is None else results[d][key] for d in dirs]
        click.echo(f"{label:24}" + "".join(f"{100 * v:12.2f}%" for v in values))
    for name in names[1:]:
        click.echo(f"{name:24}" + "".join(f"{100 * results[d]['shifts'][name]:12.2f}%" for d in dirs))


def _save(path: str, sets: list, built: tuple[int, int]) -> None:
    """The decoded images, labels and indices of every shift (plain arrays: no pickle)."""
    import numpy as np

    arrays = {"built": np.array(built)}
    for s in sets:
        arrays[f"{s.shift.name}/images"], arrays[f"{s.shift.name}/labels"] = s.images, s.labels
        arrays[f"{s.shift.name}/indices"] = s.indices
    np.savez(path, **arrays)


def _cached(path: str, built: tuple[int, int]) -> list | None:
    """The sets :func:`_save` wrote, if ``path`` exists and was built with the same hold-out and limit."""
    import numpy as np

    from model.quality.robustness import ShiftedSet, resolve

    if not Path(path).exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        if tuple(int(v) for v in f["built"]) != built:
            return None
        return [ShiftedSet(s, f[f"{s.name}/indices"], f[f"{s.name}/images"], f[f"{s.name}/labels"])
                for s in resolve()]


if __name__ == "__main__":
    main()
