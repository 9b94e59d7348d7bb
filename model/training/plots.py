"""The plots every published version carries, as PNG files (matplotlib, Agg backend).

What the seed notebook showed: training curves, a confusion matrix on the
evaluation set, and sample images with true vs predicted labels, mistakes first.
Imported only where a version is assembled, never on the serving path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CURVES = "curves.png"
CONFUSION = "confusion.png"
SAMPLES = "samples.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation side by side."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            values = history.get(key) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=label, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "training curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """10x10 counts: rows are true digits, columns predicted ones."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return matrix


def confusion(y_true: np.ndarray, y_pred: np.ndarray, path: Path, title: str = "") -> Path:
    """The confusion matrix on the evaluation set, counts in every cell."""
    plt = _pyplot()
    matrix = confusion_matrix(y_true, y_pred)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=100)
    image = ax.imshow(np.log1p(matrix), cmap="Blues")
    for i in range(10):
        for j in range(10):
            if matrix[i, j]:
                dark = np.log1p(matrix[i, j]) > np.log1p(matrix.max()) / 2
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    ax.set_title(title or f"confusion matrix ({matrix.sum()} images, accuracy {accuracy:.2%})")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def samples(x: np.ndarray, y_true: np.ndarray, probs: np.ndarray, path: Path, count: int = 40) -> Path:
    """A grid of evaluation images labelled ``true -> predicted (confidence)``, mistakes first."""
    plt = _pyplot()
    y_pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]  # confident mistakes first
    right = np.flatnonzero(y_pred == y_true)
    chosen = np.concatenate([wrong, right])[:count]
    cols = 10
    rows = max(1, int(np.ceil(len(chosen) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.45), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), chosen, strict=False):
        ax.imshow(x[i], cmap="gray_r", vmin=0, vmax=255)
        mistake = y_pred[i] != y_true[i]
        ax.set_title(f"{y_true[i]}\u2192{y_pred[i]} {confidence[i]:.0%}", fontsize=8,
                     color="crimson" if mistake else "black")
    fig.suptitle(f"evaluation samples: true\u2192predicted, {len(wrong)} mistakes first", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def robustness(tables: dict[str, dict], path: Path, title: str = "") -> Path:
    """Accuracy per shift of the robustness suite, one bar per version: ``tables`` maps a version's name
    to its ``model.json`` ``robustness`` record (:func:`model.quality.evaluation.score_shifts`'s rows). Every shift any
    table has gets its place (in the order of the largest table); the held-out families' shifts are marked
    (``*``, in red) and shaded, and a version's legend gives its held-out mean where it records one."""
    plt = _pyplot()
    largest = max(tables.values(), key=lambda t: len(t["shifts"]))
    names = [r["name"] for r in largest["shifts"]]
    held = {r["name"] for t in tables.values() for r in t["shifts"] if r.get("held_out")}
    fig, ax = plt.subplots(figsize=(max(12, 0.38 * len(names)), 5), dpi=100)
    width = 0.8 / len(tables)
    lowest = 100.0
    for k, (version, table) in enumerate(tables.items()):
        acc = {r["name"]: r["accuracy"] * 100 for r in table["shifts"]}
        lowest = min(lowest, *acc.values())
        label = f"{version} (average {table['average']['accuracy']:.2%}"
        if (table.get("held_out") or {}).get("accuracy") is not None:
            label += f", held-out mean {table['held_out']['accuracy']:.2%}"
        ax.bar(np.arange(len(names)) + (k - (len(tables) - 1) / 2) * width, [acc.get(n, 0) for n in names],
               width, label=label + ")")
    for i, name in enumerate(names):
        if name in held:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.08, linewidth=0)
    ax.axhline(97, color="grey", linestyle="--", linewidth=1, label="97%: every shift's target")
    ax.set_xticks(np.arange(len(names)), [f"{n} *" if n in held else n for n in names], rotation=60, ha="right",
                  fontsize=8)
    for tick, name in zip(ax.get_xticklabels(), names, strict=True):
        if name in held:
            tick.set_color("tab:red")
    bottom = 90 if lowest >= 90 else max(0, 10 * np.floor(lowest / 10) - 5)
    ax.set(ylim=(bottom, 100.5), ylabel="accuracy (%)",
           title=title or "robustness suite, MNIST test split (* held out of training: never rendered)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def reliability(sets: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 15, title: str = "") -> Path:
    """Reliability diagram: accuracy against confidence in equal-width bins, one line per named set of
    ``(probabilities, labels)``; a calibrated model follows the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    edges = np.linspace(0, 1, bins + 1)
    for name, (probs, labels) in sets.items():
        conf, right = probs.max(axis=1), probs.argmax(axis=1) == labels
        which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
        used = [b for b in range(bins) if (which == b).sum() >= 20]  # a bin of a handful says nothing
        ax.plot([conf[which == b].mean() for b in used], [right[which == b].mean() for b in used], "-o",
                markersize=3, label=f"{name} ({len(labels):,} images)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    ax.set(xlim=(0.3, 1.0), ylim=(0.3, 1.0), xlabel="confidence", ylabel="accuracy",
           title=title or "reliability")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
