"""Write the demo's sample digits (samples/digits/) from the MNIST test split.

    python scripts/make_samples.py ../shared/mnist

Three looks: MNIST-style PNGs (white on black, 28x28), larger dark-on-light
PNG "scans", and dark-on-light JPEG "photos" with a grey paper tone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from model.dataset import load_dataset

OUT = Path(__file__).resolve().parent.parent / "samples" / "digits"


def main(source: str) -> None:
    data = load_dataset(source)
    x, y = data.x_test, data.y_test
    for sub in ("mnist", "scans", "photos"):
        (OUT / sub).mkdir(parents=True, exist_ok=True)
    for i in range(36):
        img, label = x[i], int(y[i])
        name = f"{label}_{i:04d}"
        if i < 12:
            Image.fromarray(img).save(OUT / "mnist" / f"{name}.png")
        elif i < 24:
            Image.fromarray(255 - img).resize((112, 112), Image.Resampling.BICUBIC).save(OUT / "scans" / f"{name}.png")
        else:
            paper = (225 - img.astype(np.float32) * 0.8).clip(0, 255).astype(np.uint8)
            rgb = Image.fromarray(paper).convert("RGB").resize((96, 120), Image.Resampling.BICUBIC)
            rgb.save(OUT / "photos" / f"{name}.jpg", quality=90)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/mnist")
