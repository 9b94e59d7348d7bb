"""Score model versions on one build of the robustness suite: docs/robustness.json and docs/robustness.png.

    .venv/bin/python scripts/robustness_table.py MNIST NAME=DIR [NAME=DIR ...] [--jobs 2] [--limit N]
        [--cache DIR] [--json docs/robustness.json] [--png docs/robustness.png]

Each ``DIR`` is a version's directory (``model.onnx`` and ``model.json``, as ``model/bundled`` or a registry
entry); each is served as production serves it (ONNX, its own temperature). The suite (the MNIST test
split, seed :data:`model.quality.robustness.SEED`) is built once, with the model alone on the same files
(``naive``), one shift per task in ``--jobs`` processes, each shift's images kept in ``--cache`` so a
second run scores without building. Building is most of the cost: about 12 minutes of one core for the
whole test split (345,136 images); scoring a version, about 40 s. Every version is split by the suite's
held-out families, so their means compare like with like.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, installed or not


def _build(mnist: str, name: str, limit: int | None, cache: str) -> float:
    """Build one shift and write its arrays to ``cache/NAME.npz`` (plain arrays: no pickle); its seconds."""
    import numpy as np

    from model.dataset import load_dataset
    from model.quality.robustness import build_suite, resolve

    started = time.monotonic()
    data = load_dataset(mnist)
    (built,) = build_suite(data.x_test, data.y_test, resolve([name]), limit=limit, naive=True)
    np.savez(Path(cache) / f"{name}.npz", images=built.images, naive=built.naive, labels=built.labels,
             indices=built.indices, limit=np.array(-1 if limit is None else limit))
    return time.monotonic() - started


def _cached(cache: Path, name: str, limit: int | None):
    """The set of shift ``name`` from ``cache``, or None if it is missing or was built with another limit."""
    import numpy as np

    from model.quality.robustness import SHIFTS, ShiftedSet

    path = cache / f"{name}.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        if int(f["limit"]) != (-1 if limit is None else limit):
            return None
        return ShiftedSet(SHIFTS[name], f["indices"], f["images"], f["labels"], f["naive"])


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("mnist", type=click.Path(exists=True))
@click.argument("versions", nargs=-1, required=True)
@click.option("--jobs", default=2, show_default=True, help="Processes building the suite.")
@click.option("--limit", type=int, help="Images per shift at most (default: the whole test split).")
@click.option("--cache", default=str(Path(tempfile.gettempdir()) / "digitq-robustness"), show_default=True,
              type=click.Path(file_okay=False),
              help="Where each shift's built images are kept.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the table here.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="Draw the accuracy per shift here.")
def main(mnist: str, versions: tuple[str, ...], jobs: int, limit: int | None, cache: str,
         json_path: str | None, png_path: str | None) -> None:
    """Build (or read) the suite, score every ``NAME=DIR`` on it, print each version's averages."""
    from model.quality.evaluation import RECORDED_FIELDS, held_out_of, score_shifts
    from model.quality.robustness import HELD_OUT_FAMILIES, SEED, resolve
    from model.registry import ONNX_FILE, read_version
    from model.serving.runtime import OnnxPredictor

    pairs = [v.split("=", 1) for v in versions]
    if any(len(p) != 2 for p in pairs):
        raise click.UsageError("give each version as NAME=DIR (for example bundled-4=model/bundled)")
    Path(cache).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    kept = {s.name: _cached(Path(cache), s.name, limit) for s in resolve()}
    missing = [name for name, built in kept.items() if built is None]
    build_seconds = None
    if missing:
        with ProcessPoolExecutor(jobs) as pool:
            futures = [pool.submit(_build, mnist, name, limit, cache) for name in missing]
            build_seconds = round(sum(f.result() for f in futures), 1)
        kept.update({name: _cached(Path(cache), name, limit) for name in missing})
    sets = list(kept.values())
    click.echo(f"suite ready in {time.monotonic() - started:.0f} s ({len(missing)} shifts built: "
               f"{build_seconds} s of CPU summed)")
    table: dict = {}
    for name, directory in pairs:
        ref = read_version(Path(directory), name)
        predictor = OnnxPredictor(ref, ref.read_verified(ONNX_FILE), 1)
        # One split for every version (the suite's held-out families), so their means compare like with like;
        # what each version itself records is kept beside it.
        scores = score_shifts(sets, predictor.predict, HELD_OUT_FAMILIES)
        scores["shifts"] = [{k: r[k] for k in (*RECORDED_FIELDS, "naive_accuracy") if k in r} for r in scores["shifts"]]
        scores["recorded_held_out_families"] = list(held_out_of(ref.meta))
        clean = next(r for r in scores["shifts"] if r["name"] == "clean")  # the test split's own images
        scores["clean_test"] = {"accuracy": clean["accuracy"], "ece": clean["ece"],
                                "temperature": predictor.temperature}
        table[name] = scores
        click.echo(f"{name}: clean {scores['clean_test']['accuracy']:.2%}, trained mean "
                   f"{scores['trained']['accuracy']:.2%}, held-out mean {scores['held_out']['accuracy']:.2%}")
    if json_path:
        record = {"suite": "robustness", "set": "MNIST test split", "seed": SEED, "limit": limit, "calibrated": True,
                  "note": f"{', '.join(table)} as served (ONNX, each with its temperature) on one build of the "
                          "suite through decode_image; held_out: the suite's held-out families for every version "
                          "(recorded_held_out_families: what each version's model.json says it never trained on)",
                  "build_seconds": build_seconds, "versions": table}
        Path(json_path).write_text(json.dumps(record, indent=1) + "\n")
    if png_path:
        from model.training.plots import robustness

        robustness(table, Path(png_path))


if __name__ == "__main__":
    main()
