"""``python -m model.training``: train the seed CNN locally and write a model directory.

    python -m model.training --data DIR --out DIR [--epochs N] [--version NAME] ...

writes ``OUT/model.keras`` and ``OUT/model.json`` (:func:`model.training.recipe.train`); then
``python -m model.training.export OUT MNIST`` adds the ONNX graph, and
``scripts/calibrate_bundled.py OUT MNIST`` the temperature, as the bundled model was made.
"""

from __future__ import annotations

import json
import sys

import click

from model.dataset import load_dataset
from model.extras import MissingExtra, require_train
from model.training.recipe import Recipe, train


@click.command(help="Train the seed CNN locally and write OUT/model.keras + OUT/model.json.")
@click.option("--data", envvar="DIGITQ_MNIST", help="MNIST IDX dir, mnist.npz or digit folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--epochs", default=Recipe.epochs, show_default=True)
@click.option("--batch-size", default=Recipe.batch_size, show_default=True)
@click.option("--learning-rate", default=Recipe.learning_rate, show_default=True)
@click.option("--holdout", default=0, show_default=True, help="Last N training images kept for validation.")
@click.option("--no-augment", is_flag=True)
@click.option("--rotation", default=Recipe.rotation_deg, show_default=True, help="Max rotation, degrees.")
@click.option("--zoom", default=Recipe.zoom, show_default=True, help="Max zoom fraction.")
@click.option("--shift", default=Recipe.shift, show_default=True, help="Max shift, fraction of 28 px.")
@click.option("--clean-epochs", default=Recipe.clean_epochs, show_default=True,
              help="Last N epochs without augmentation.")
@click.option("--no-ema", is_flag=True)
@click.option("--variants", default=Recipe.variants, show_default=True,
              help="Rendered variants added, as a share of the training images (0: none).")
@click.option("--limit", default=0, help="Use only the first N training images.")
@click.option("--seed", default=0, show_default=True)
@click.option("--version", "version", help="The version name recorded (e.g. bundled-N for model/bundled).")
def cli(data, out, epochs, batch_size, learning_rate, holdout, no_augment, rotation, zoom, shift,
        clean_epochs, no_ema, variants, limit, seed, version):
    """Train with the recipe these options make; print the headline figures as JSON."""
    recipe = Recipe(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, holdout=holdout,
                    augment=not no_augment, rotation_deg=rotation, zoom=zoom, shift=shift,
                    clean_epochs=clean_epochs, ema=not no_ema, variants=variants,
                    limit=limit, seed=seed)
    meta = train(load_dataset(data), recipe, out, command="python -m model.training " + " ".join(sys.argv[1:]),
                 version=version)
    keys = ("params", "holdout_accuracy", "test_accuracy", "test_loss", "training_seconds", "sha256")
    click.echo(json.dumps({k: meta[k] for k in keys if k in meta}))


def main(argv: list[str] | None = None) -> None:
    """Say what to install without the ``train`` extra; else run :func:`cli` on ``argv`` (default: the command line)."""
    try:
        require_train("python -m model.training", ("tensorflow", "keras"))
    except MissingExtra as e:
        sys.exit(f"error: {e}")
    cli.main(args=argv, prog_name="python -m model.training")


if __name__ == "__main__":
    main()
