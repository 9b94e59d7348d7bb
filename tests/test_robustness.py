"""The robustness suite: seeded shifts that do what their names say, ECE, and the CLI end to end."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from digitq.errors import ConfigError
from model.quality.evaluation import evaluate_robustness, score_shifts
from model.quality.metrics import ECE_BINS, expected_calibration_error
from model.quality.robustness import FAMILIES, HELD_OUT_FAMILIES, SHIFTS, Shift, build_suite, pick, resolve, stroke
from model.serving.preprocess import decode_image
from tests.conftest import ROOT, mnist_source

SAMPLE = range(40)  # test digits each property is checked on


def _decoded(data: bytes) -> np.ndarray:
    """What a PNG or JPEG holds, as a plain array (Pillow, not the code under test)."""
    import io

    return np.asarray(Image.open(io.BytesIO(data)))


def _of_class(mnist, digit: int, count: int = 25) -> list[int]:
    return [int(i) for i in np.flatnonzero(mnist.y_test == digit)[:count]]


def _holes(ink: np.ndarray) -> int:
    """Background pixels that no path of background pixels links to the border (the inside of loops)."""
    background = ~ink
    reach = np.zeros_like(background)
    reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = (background[0, :], background[-1, :],
                                                            background[:, 0], background[:, -1])
    while True:
        grown = reach.copy()
        grown[1:] |= reach[:-1]
        grown[:-1] |= reach[1:]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= background
        if (grown == reach).all():
            return int((background & ~reach).sum())
        reach = grown


# -- determinism ------------------------------------------------------------------------------------

def test_every_shift_is_a_seeded_function_of_the_image_index(mnist):
    for shift in resolve():
        for i in (0, 1, 2):
            first = shift.encode(mnist.x_test[i], i)
            assert first == shift.encode(mnist.x_test[i], i), shift.name  # no hidden state
        if shift.name in ("rotate-25", "small-noisy-canvas", "sensor-noise", "uneven-light", "coloured-ink"):
            # Seeded per index: the same digit at another index is shifted differently.
            assert shift.encode(mnist.x_test[0], 0) != shift.encode(mnist.x_test[0], 7), shift.name
    # And another suite seed gives another suite.
    noise = SHIFTS["sensor-noise"]
    assert noise.encode(mnist.x_test[0], 0, seed=1) != noise.encode(mnist.x_test[0], 0)


def _suite_digest(x: np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    for s in build_suite(x, y, limit=12):
        digest.update(s.shift.name.encode() + s.indices.tobytes() + s.images.tobytes() + s.labels.tobytes())
    return digest.hexdigest()


def test_the_suite_is_identical_in_another_process(mnist):
    """No dependence on hash randomisation, call order or process state: a fresh interpreter builds
    the same decoded images."""
    here = _suite_digest(mnist.x_test, mnist.y_test)
    code = ("from model.dataset import load_dataset; from tests.test_robustness import _suite_digest; "
            f"d = load_dataset({mnist.source!r}); print(_suite_digest(d.x_test, d.y_test))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == here


def test_subsets_are_one_seeded_order_and_style_shifts_keep_their_class(mnist):
    y = mnist.y_test
    small, large = pick(y, SHIFTS["blur"], 50), pick(y, SHIFTS["blur"], 200)
    assert len(small) == 50 and set(small) <= set(large)  # the first 50 of the same order
    assert not np.array_equal(small, np.arange(50))  # a sample of the whole split, not its head
    assert len(pick(y, SHIFTS["blur"])) == len(y)
    for name, digit in (("style-1-flag-base", 1), ("style-7-crossbar", 7), ("style-4-open", 4),
                        ("style-4-closed", 4), ("style-9-straight-stem", 9)):
        chosen = pick(y, SHIFTS[name])
        assert len(chosen) == int((y == digit).sum()) and set(y[chosen]) == {digit}, name
    with pytest.raises(ConfigError, match="unknown shift"):
        resolve(["blur", "smoke"])


# -- each shift does what its name says ---------------------------------------------------------

@pytest.mark.parametrize("height", [8, 12, 16])
def test_low_resolution_digits_are_n_px_tall_and_not_mnist_sized(mnist, height):
    shift = SHIFTS[f"lowres-{height}"]
    for i in SAMPLE:
        image = _decoded(shift.encode(mnist.x_test[i], i))
        assert image.ndim == 2 and image.shape != (28, 28)  # decode_image must frame it, as any file
        ink_rows = np.flatnonzero(image.min(axis=1) < 250)  # dark ink on white (250) paper
        assert len(ink_rows) == height == ink_rows[-1] - ink_rows[0] + 1, i
        assert image.shape[0] < 2 * height  # a margin, not a page
        assert decode_image(shift.encode(mnist.x_test[i], i)).max() > 200  # still a digit after framing


def test_stroke_shifts_thin_and_thicken_at_4x_without_losing_thin_strokes(mnist):
    plain = Shift("pen", "stroke", "the 4x pen shape, unchanged", stroke(0, grow=True))
    for i in SAMPLE:
        digit = mnist.x_test[i]
        ink = {name: SHIFTS[name].image(digit, i) for name in ("stroke-thin", "stroke-thick", "stroke-bold")}
        pen = plain.image(digit, i)
        assert all(im.shape == (112, 112) for im in ink.values())
        sums = [float(a.sum()) for a in (ink["stroke-thin"], pen, ink["stroke-thick"], ink["stroke-bold"])]
        assert sums == sorted(sums) and len(set(sums)) == 4, i
        # Thin, not broken: every row the pen covers still has ink, the digit keeps its height.
        pen_rows = set(np.flatnonzero(pen.max(axis=1) > 127))
        thin_rows = set(np.flatnonzero(ink["stroke-thin"].max(axis=1) > 127))
        assert len(pen_rows - thin_rows) <= 8, i  # a few rows at the rounded ends (2 MNIST px)
        # And what the model sees after framing: less ink thin than bold.
        seen = [int((decode_image(SHIFTS[n].encode(digit, i)) > 127).sum()) for n in ("stroke-thin", "stroke-bold")]
        assert seen[0] < 0.8 * seen[1], i


def _lean(image: np.ndarray) -> float:
    """Ink centroid of the top half minus that of the bottom half, in columns (> 0: leans right)."""
    ink = image.astype(np.float64)
    rows = np.flatnonzero(ink.max(axis=1) > 0)
    mid = (rows[0] + rows[-1]) // 2
    cols = np.arange(ink.shape[1])

    def centre(part):
        return (part * cols).sum() / part.sum()

    return centre(ink[: mid + 1]) - centre(ink[mid + 1 :])


def _axis_degrees(image: np.ndarray) -> float:
    ink = image.astype(np.float64)
    ys, xs = np.indices(ink.shape)
    total = ink.sum()
    cy, cx = (ys * ink).sum() / total, (xs * ink).sum() / total
    mxx, myy = ((xs - cx) ** 2 * ink).sum(), ((ys - cy) ** 2 * ink).sum()
    mxy = ((xs - cx) * (ys - cy) * ink).sum()
    return float(np.degrees(0.5 * np.arctan2(2 * mxy, mxx - myy)))


def test_slant_and_rotation_turn_the_digit(mnist):
    for i in _of_class(mnist, 1):  # 1s: one long stroke, whose lean and axis are easy to measure
        digit = mnist.x_test[i]
        base = _lean(np.pad(digit, 6))
        assert _lean(SHIFTS["slant"].image(digit, i)) > base + 2, i
        assert _lean(SHIFTS["backslant"].image(digit, i)) < base - 1.5, i
        turned = (_axis_degrees(SHIFTS["rotate-25"].image(digit, i)) - _axis_degrees(digit) + 90) % 180 - 90
        assert 18 < abs(turned) < 32, i
    signs = {SHIFTS["rotate-25"].rng(i).random() < 0.5 for i in range(20)}
    assert signs == {True, False}  # both directions occur


def test_small_digit_sits_at_a_seeded_place_on_a_large_noisy_canvas(mnist):
    places = set()
    for i in SAMPLE:
        image = _decoded(SHIFTS["small-noisy-canvas"].encode(mnist.x_test[i], i))
        assert image.shape == (128, 128)
        rows, cols = np.flatnonzero((image < 120).any(axis=1)), np.flatnonzero((image < 120).any(axis=0))
        assert 20 <= rows[-1] - rows[0] + 1 <= 25, i  # the digit: 24 px tall, a fifth of the canvas
        places.add((rows[0], cols[0]))
        paper = np.delete(np.delete(image, slice(rows[0] - 2, rows[-1] + 3), 0), slice(cols[0] - 2, cols[-1] + 3), 1)
        assert 5 < paper.std() < 7 and 195 < paper.mean() < 235, i  # noise sigma 6 on gray paper
    assert len(places) > 30


def test_capture_shifts_blur_add_noise_and_compress(mnist):
    from model.quality.robustness import _paper_scan

    rng = np.random.default_rng(0)
    for i in SAMPLE:
        digit = mnist.x_test[i]
        sharp = _paper_scan(digit, rng).astype(np.float64)
        blurred = SHIFTS["blur"].image(digit, i).astype(np.float64)
        assert (np.diff(blurred) ** 2).sum() < 0.5 * (np.diff(sharp) ** 2).sum(), i  # edges spread out
        noisy = SHIFTS["sensor-noise"].image(digit, i).astype(np.float64)
        noise = (noisy - sharp)[sharp > 240]  # on the paper, away from the ink
        below = noise[noise < 0]  # clipped at 255 above; below, a half-normal: E[x^2 | x < 0] = sigma^2
        assert 18 < np.sqrt((below**2).mean()) < 22, i
        data = SHIFTS["jpeg-q10"].encode(digit, i)
        assert data[:2] == b"\xff\xd8"  # a JPEG file: decode_image reads it as it reads photos
        assert np.abs(_decoded(data).astype(np.float64) - sharp).mean() > 1.0, i  # lossy at quality 10


def test_paper_shifts_light_unevenly_and_colour_paper_and_ink(mnist):
    for i in SAMPLE:
        digit = mnist.x_test[i]
        lit = SHIFTS["uneven-light"].image(digit, i).astype(np.float64)
        corners = [lit[:4, :4].mean(), lit[:4, -4:].mean(), lit[-4:, :4].mean(), lit[-4:, -4:].mean()]
        assert max(corners) - min(corners) > 50, i  # the paper itself, 30% darker on one side
        paper = SHIFTS["coloured-paper"].image(digit, i).astype(np.int64)
        assert paper.shape == (56, 56, 3) and np.ptp(paper[0, 0]) > 20, i  # the corner is coloured
        inked = SHIFTS["coloured-ink"].image(digit, i).astype(np.int64)
        assert tuple(inked[0, 0]) == (255, 255, 255), i
        darkest = inked[np.unravel_index(inked.sum(axis=2).argmin(), inked.shape[:2])]
        assert np.ptp(darkest) > 80, i  # the ink itself has a colour


def _binary(shift_name: str, digit: np.ndarray, i: int) -> np.ndarray:
    return SHIFTS[shift_name].image(digit, i) > 127


def _row_widths(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(ink.any(axis=1))
    widths = np.array([np.flatnonzero(ink[r])[-1] - np.flatnonzero(ink[r])[0] + 1 for r in rows])
    return rows, widths


def test_ones_get_a_flag_and_a_base(mnist):
    for i in _of_class(mnist, 1):
        before = np.asarray(Image.fromarray(mnist.x_test[i]).resize((112, 112), Image.Resampling.BICUBIC)) > 127
        after = _binary("style-1-flag-base", mnist.x_test[i], i)
        rows, widths = _row_widths(after)
        height = rows[-1] - rows[0] + 1
        foot = widths[-max(2, height // 12) :].max()
        assert foot >= 0.45 * height, i  # a base: the foot is about half the height wide
        assert foot > 2 * _row_widths(before)[1][-height // 12 :].max(), i
        top = after[rows[0] : rows[0] + height // 3]
        top_before = before[rows[0] : rows[0] + height // 3]
        # The flag reaches left of where the top third's ink began.
        assert np.flatnonzero(top.any(axis=0))[0] < np.flatnonzero(top_before.any(axis=0))[0] - 0.12 * height, i


def test_sevens_get_a_crossbar(mnist):
    uncrossed = 0
    for i in _of_class(mnist, 7):
        after = _binary("style-7-crossbar", mnist.x_test[i], i)
        before = np.asarray(Image.fromarray(mnist.x_test[i]).resize((112, 112), Image.Resampling.BICUBIC)) > 127
        rows = np.flatnonzero(after.any(axis=1))
        height = rows[-1] - rows[0] + 1
        band = slice(int(rows[0] + 0.35 * height), int(rows[0] + 0.7 * height) + 1)  # below the top bar
        bar, was = after[band].sum(axis=1).max(), before[band].sum(axis=1).max()
        assert bar >= 0.5 * height, i  # a row of ink half the digit's height long: a bar across the stem
        if was < 0.3 * height:  # MNIST drew this 7 without one (some of its 7s have a crossbar already)
            uncrossed += 1
            assert bar >= 2 * was, i
    assert uncrossed >= 12


def test_fours_are_drawn_open_or_closed(mnist):
    for i in _of_class(mnist, 4, 40):
        digit = mnist.x_test[i]
        assert _holes(_binary("style-4-open", digit, i)) == 0, i
        assert _holes(_binary("style-4-closed", digit, i)) > 60, i  # the triangle, at 4x


def test_nines_have_a_loop_and_a_straight_stem(mnist):
    for i in _of_class(mnist, 9, 40):
        ink = _binary("style-9-straight-stem", mnist.x_test[i], i)
        assert _holes(ink) > 100, i
        rows = np.flatnonzero(ink.any(axis=1))
        height = rows[-1] - rows[0] + 1
        stem = np.arange(rows[0] + int(0.65 * height), rows[-1] - 4)
        centres = np.array([np.flatnonzero(ink[r]).mean() for r in stem])
        fit = np.polyval(np.polyfit(stem, centres, 1), stem)
        assert np.abs(centres - fit).max() < 3.0, i  # straight within 3 px at 4x (under 1 MNIST pixel)


# -- scoring -----------------------------------------------------------------------------------------

def _naive_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        inside = (confidence > lo) & (confidence <= hi) if k else (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
    return total


def _probs(confidences: list[float], predicted: list[int]) -> np.ndarray:
    out = np.zeros((len(confidences), 10))
    for row, (c, p) in enumerate(zip(confidences, predicted, strict=True)):
        out[row] = (1 - c) / 9
        out[row, p] = c
    return out


def test_expected_calibration_error_by_hand():
    assert ECE_BINS == 15
    # Two at 0.9 (one right): |0.5 - 0.9| * 2/4. Two at 0.6 (both right): |1.0 - 0.6| * 2/4. ECE = 0.4.
    probs = _probs([0.9, 0.9, 0.6, 0.6], [3, 3, 5, 5])
    assert expected_calibration_error(probs, np.array([3, 4, 5, 5])) == pytest.approx(0.4)
    # Calibrated: 8 of 10 right at confidence 0.8.
    probs = _probs([0.8] * 10, [1] * 10)
    assert expected_calibration_error(probs, np.array([1] * 8 + [2] * 2)) == pytest.approx(0.0, abs=1e-12)
    # Always right at confidence 1.0: the last bin, no gap; always wrong at 1.0: a gap of 1.
    assert expected_calibration_error(_probs([1.0], [0]), np.array([0])) == 0.0
    assert expected_calibration_error(_probs([1.0], [0]), np.array([1])) == 1.0
    # 1/3 exactly lies on a bin edge: it belongs to the bin below (4/15, 5/15]; both bins agree here.
    assert expected_calibration_error(_probs([1 / 3, 0.34], [0, 0]), np.array([0, 1])) == pytest.approx(
        0.5 * (1 - 1 / 3) + 0.5 * 0.34)
    assert expected_calibration_error(np.zeros((0, 10)), np.zeros(0, int)) == 0.0
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2000, 10))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 10, 2000)
    assert expected_calibration_error(probs, labels) == pytest.approx(_naive_ece(probs, labels), abs=1e-12)


def test_score_shifts_reports_each_shift_and_averages_without_clean(mnist):
    sets = build_suite(mnist.x_test, mnist.y_test, resolve(["clean", "blur", "style-7-crossbar"]), limit=20)

    def oracle(images: np.ndarray) -> np.ndarray:
        # Right on every image but the first of each set, with confidence 0.9.
        labels = next(s.labels for s in sets if s.images is images)
        predicted = labels.copy()
        predicted[0] = (predicted[0] + 1) % 10
        return _probs([0.9] * len(labels), list(predicted))

    result = score_shifts(sets, oracle)
    rows = {r["name"]: r for r in result["shifts"]}
    assert list(rows) == ["clean", "blur", "style-7-crossbar"]
    assert rows["blur"]["accuracy"] == pytest.approx(0.95) and rows["blur"]["ece"] == pytest.approx(0.05)
    assert rows["blur"]["mean_confidence"] == pytest.approx(0.9)
    assert rows["style-7-crossbar"]["digits"] == [7] and rows["clean"]["digits"] == list(range(10))
    assert all(r["examples"] == 20 for r in rows.values())
    assert result["average"] == {"shifts": 2, "accuracy": pytest.approx(0.95), "ece": pytest.approx(0.05),
                                 "worst": "blur"}


# -- end to end ----------------------------------------------------------------------------------------

def test_evaluate_suite_end_to_end_on_mnist(tmp_path, mnist):
    """`digitq evaluate --suite robustness --limit 30 --json` in its own process: every shift, the
    bundled model's figures, and the same figures as in this process (deterministic)."""
    args = [sys.executable, "-m", "producer.cli", "--data-dir", str(tmp_path), "evaluate", "--suite", "robustness",
            "--limit", "30", "--json"]
    if mnist_source():
        args += ["--data", mnist_source()]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["suite"] == "robustness" and result["limit"] == 30 and result["ece_bins"] == 15
    rows = {r["name"]: r for r in result["shifts"]}
    assert list(rows) == list(SHIFTS)
    families = {r["family"] for r in rows.values()}
    assert families == set(FAMILIES)
    assert {r["family"] for r in rows.values() if r["held_out"]} == set(HELD_OUT_FAMILIES) == \
        set(result["held_out_families"])
    held = [r["accuracy"] for r in rows.values() if r["held_out"]]
    assert result["held_out"]["accuracy"] == pytest.approx(np.mean(held), abs=1e-6)
    assert all(0 <= r["naive_accuracy"] <= 1 for r in rows.values())
    assert rows["clean"]["naive_accuracy"] == rows["clean"]["accuracy"]  # a 28x28 MNIST file: the same pixels
    assert all(r["examples"] == 30 for r in rows.values())
    assert rows["style-4-open"]["digits"] == [4] and "their class" in result["note"]
    assert rows["clean"]["accuracy"] >= 0.96  # the bundled version scores over 99.4% on the whole split
    for r in rows.values():
        assert 0 <= r["ece"] <= 1 and 0.1 <= r["mean_confidence"] <= 1 and 0 <= r["accuracy"] <= 1
    average = result["average"]
    assert average["shifts"] == len(SHIFTS) - 1
    assert average["accuracy"] == pytest.approx(np.mean([r["accuracy"] for n, r in rows.items() if n != "clean"]),
                                                abs=1e-6)
    assert average["accuracy"] > 0.8
    from digitq.settings import Settings

    again = evaluate_robustness(Settings.from_env(data_dir=str(tmp_path)), mnist_source(), None, 30)
    assert again["shifts"] == result["shifts"] and again["average"] == average
    assert 0 < result["build_seconds"] <= result["seconds"]


def test_plain_evaluate_reports_the_clean_ece(tmp_path, mnist):
    """evaluate_model's ECE is the clean row's: the same images, the same predictor."""
    from digitq.settings import Settings
    from model.quality.evaluation import evaluate_model

    settings = Settings.from_env(data_dir=str(tmp_path))
    clean = evaluate_model(settings, mnist_source())
    suite = build_suite(mnist.x_test, mnist.y_test, resolve(["clean"]))
    assert np.array_equal(suite[0].images, mnist.x_test)  # a 28x28 PNG decodes to its own pixels
    from model.registry import Registry
    from model.serving.runtime import load_predictor

    row = score_shifts(suite, load_predictor(Registry(settings.models_dir).resolve(None)).predict)["shifts"][0]
    assert clean["ece"] == row["ece"] and clean["accuracy"] == row["accuracy"]
    assert 0 < clean["ece"] < 0.02 and clean["mean_confidence"] > 0.98


def test_evaluate_limit_needs_the_suite(tmp_path):
    from producer.cli import main

    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "evaluate", "--limit", "5"])
    assert result.exit_code == 2 and "--limit applies to --suite robustness" in result.output


def test_the_robustness_table_script_builds_once_and_scores_every_version(tmp_path, mnist):
    """scripts/robustness_table.py: every shift built (the model alone beside it) and kept, every version
    split by the suite's held-out families, and a second run scores from the kept build."""
    source = mnist_source()
    assert source, "the script reads MNIST's IDX files from a directory: set DIGITQ_MNIST"
    out, cache = tmp_path / "table.json", tmp_path / "cache"
    args = [sys.executable, "scripts/robustness_table.py", source, "a=model/bundled", "b=model/bundled",
            "--limit", "3", "--jobs", "2", "--cache", str(cache), "--json", str(out)]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"{len(SHIFTS)} shifts built" in first.stdout
    table = json.loads(out.read_text())
    assert table["limit"] == 3 and list(table["versions"]) == ["a", "b"]
    a = table["versions"]["a"]
    assert [r["name"] for r in a["shifts"]] == list(SHIFTS) and all(r["examples"] == 3 for r in a["shifts"])
    assert {r["family"] for r in a["shifts"] if r["held_out"]} == set(HELD_OUT_FAMILIES)
    assert all(0 <= r["naive_accuracy"] <= 1 for r in a["shifts"])
    assert a["shifts"] == table["versions"]["b"]["shifts"]  # one build: the same version scores the same
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "0 shifts built" in again.stdout, again.stderr
    assert json.loads(out.read_text())["versions"]["a"]["shifts"] == a["shifts"]


def test_the_recipe_trial_refuses_a_model_that_saw_the_hold_out():
    """scripts/recipe_trial.py scores only runs trained with the same --holdout: the bundled model trained
    on every training digit, so scoring it on the last 5,000 would flatter it."""
    proc = subprocess.run([sys.executable, "scripts/recipe_trial.py", mnist_source() or ".", "model/bundled"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "was trained with --holdout 0 and --limit 0" in proc.stderr, proc.stderr
