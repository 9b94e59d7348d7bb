"""``digitq report JOB``: one self-contained HTML page per finished job, built from its CSV and files.

Everything is embedded (plots and images as data URIs), so the page opens offline and
can be mailed. Built on the producer side, never in a worker: matplotlib (Agg) and the
HTML stay out of the prediction path. The gallery shows the lowest-confidence images
twice: the original (a thumbnail, read again from where it was scanned) and the 28x28
array the model saw (decoded again by the same :func:`model.serving.preprocess.decode_image`).
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Sequence

import numpy as np

from digitq.disk.jobs import FileEntry, Job
from digitq.disk.paths import unescape_path
from digitq.disk.storage import atomic_write
from digitq.errors import DigitqError, JobError
from digitq.settings import Settings
from model.quality.metrics import CONFIDENCE_BINS
from model.registry import Registry
from producer.catalog import calibration_summary, percent
from producer.review import scored_bytes


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure_png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()


def _plots(classes: np.ndarray, confidences: np.ndarray, evaluation: dict | None, threshold: float) -> dict[str, str]:
    """Class shares and confidence distribution, the job beside the model's evaluation set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits = np.arange(10)
    job_shares = np.bincount(classes, minlength=10) / max(1, len(classes))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.4 if evaluation else 0.8
    ax.bar(digits - (width / 2 if evaluation else 0), job_shares * 100, width, label="this job")
    if evaluation:
        counts = np.asarray(evaluation["class_shares"], float)
        ax.bar(digits + width / 2, counts / counts.sum() * 100, width, label="evaluation set")
        ax.legend()
    ax.set(xticks=digits, xlabel="predicted digit", ylabel="% of images", title="Predicted classes")
    class_png = _figure_png(fig)
    plt.close(fig)

    edges = np.linspace(0, 1, CONFIDENCE_BINS + 1)
    job_hist = np.histogram(confidences, bins=edges)[0] / max(1, len(confidences))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    centers = (edges[:-1] + edges[1:]) / 2
    ax.bar(centers, job_hist * 100, 1 / CONFIDENCE_BINS * 0.9, label="this job", alpha=0.8)
    if evaluation:
        counts = np.asarray(evaluation["confidence_histogram"], float)
        ax.step(centers, counts / counts.sum() * 100, where="mid", color="C1", label="evaluation set")
        ax.legend()
    ax.axvline(threshold, color="grey", linestyle="--")
    ax.set(yscale="log", xlabel="confidence (top-class probability)", ylabel="% of images (log)",
           title="Confidence", xlim=(0, 1))
    confidence_png = _figure_png(fig)
    plt.close(fig)
    return {"classes": _data_uri(class_png), "confidence": _data_uri(confidence_png)}


def _thumbnails(settings: Settings, job: Job, entry: FileEntry, digest: str | None,
                ) -> tuple[str | None, str | None, str | None]:
    """(original thumbnail, the 28x28 the model saw, a problem) for one scanned file; nothing is shown of a
    file whose bytes are no longer those its row scored."""
    from PIL import Image

    from model.serving.preprocess import decode_image

    data, why = scored_bytes(settings, job, entry, digest)
    if data is None:
        return None, None, f"not shown: {why}"
    try:
        seen = decode_image(data)
    except DigitqError as e:
        return None, None, str(e)
    big = Image.fromarray(seen).resize((112, 112), Image.Resampling.NEAREST)
    out = io.BytesIO()
    big.save(out, format="PNG")
    model_view = _data_uri(out.getvalue())
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (224, 224))
            thumb = img.convert("RGB")
            thumb.thumbnail((112, 112))
            out = io.BytesIO()
            thumb.save(out, format="JPEG", quality=85)
        return _data_uri(out.getvalue(), "image/jpeg"), model_view, None
    except Exception:  # noqa: BLE001 - the model's view is what matters; the thumbnail is a courtesy
        return None, model_view, "no thumbnail"


def build_report(settings: Settings, job: Job, threshold: float = 0.9, gallery: int = 24) -> dict:
    """Write ``jobs/<id>/report.html``; return its path and the figures it shows."""
    status = job.status()
    if status["state"] != "done":
        raise JobError(f"job {job.id} is {status['state']}, not done: `digitq wait {job.id}`, then report")
    rows = [{**row, "entry": entry} for entry, row in job.rows()]
    predicted = [r for r in rows if not r["error"]]
    classes = np.array([int(r["prediction"]) for r in predicted], dtype=int)
    confidences = np.array([float(r["confidence"]) for r in predicted])
    below = int((confidences < threshold).sum())
    try:
        meta = Registry(settings.models_dir).resolve(job.model_version).meta
    except DigitqError:
        meta = {}
    evaluation = meta.get("evaluation")
    model_figures = _model_figures(meta)
    if evaluation and not {"class_shares", "confidence_histogram"} <= evaluation.keys():
        evaluation = None
    figures = {
        "job_id": job.id, "images": len(rows), "predicted": len(predicted), "errors": len(rows) - len(predicted),
        "model_version": job.model_version, "threshold": threshold, "below_threshold": below,
        "below_share": round(below / max(1, len(predicted)), 6), "elapsed_s": status["elapsed_s"],
        "rate_per_s": status["rate_per_s"], "class_counts": np.bincount(classes, minlength=10).tolist(),
        "model": model_figures,
    }
    plots = _plots(classes, confidences, evaluation, threshold)
    lowest = sorted(predicted, key=lambda r: float(r["confidence"]))[:gallery]
    not_shown: list[dict] = []
    cards = [_card(settings, job, r, not_shown) for r in lowest]
    page = _page(figures, status, plots, cards, evaluation, rows)
    path = job.dir / "report.html"
    atomic_write(path, page.encode("utf-8"))
    return {**figures, "report": str(path.resolve()), "gallery": len(cards) - len(not_shown),
            "not_shown": len(not_shown), "not_shown_files": not_shown}


def _model_figures(meta: dict) -> dict:
    """How far the job's model version can be trusted, as recorded at publish time: its temperature, its ECE
    on its evaluation set, and accuracy and ECE on each robustness shift and on average (None: not recorded)."""
    robustness = meta.get("robustness") or {}
    return {**calibration_summary(meta), "suite_limit": robustness.get("limit"),
            "shifts": [{"name": r["name"], "accuracy": r["accuracy"], "ece": r["ece"]}
                       for r in robustness.get("shifts", [])]}


def _model_table(model: dict) -> str:
    """The model's calibration and robustness figures as a small HTML section."""
    temperature = f"temperature {model['temperature']:g}" if model["temperature"] else "no calibration recorded"
    if not model["shifts"]:
        return (f'<p id="model-ece">Confidence: {temperature}; ECE {percent(model["ece"])} on the evaluation set. '
                "No robustness suite recorded for this version.</p>")
    rows = "".join(f"<tr><td>{html.escape(r['name'])}</td><td>{percent(r['accuracy'])}</td>"
                   f"<td>{percent(r['ece'])}</td></tr>" for r in model["shifts"])
    return (f'<p id="model-ece">Confidence: {temperature}; ECE (15 bins) {percent(model["ece"])} on the evaluation '
            'set, '
            f'{percent(model["suite_ece"])} averaged over the robustness suite, where accuracy averages '
            f'{percent(model["suite_accuracy"])}: a confidence of 0.9 means right about 90% of the time.</p>'
            f'<table id="robustness"><tr><th>shift</th><th>accuracy</th><th>ECE</th></tr>{rows}</table>')


def _card(settings: Settings, job: Job, row: dict, not_shown: list[dict]) -> str:
    original, seen, problem = _thumbnails(settings, job, row["entry"], row["digest"])
    if original is None and seen is None:
        not_shown.append({"source": row["entry"].path, "reason": problem})
    name = _shown(row["entry"])
    images = "".join(f'<figure><img src="{src}" alt="{alt}" width="112" height="112"><figcaption>{alt}</figcaption>'
                     f"</figure>" for src, alt in ((original, "original"), (seen, "model input")) if src)
    note = f'<p class="problem">{html.escape(problem)}</p>' if problem else ""
    return (f'<div class="card"><div class="pair">{images}</div><p><b>{row["prediction"]}</b> at '
            f'{float(row["confidence"]):.1%}</p><p class="path">{name}</p>{note}</div>')


def _shown(entry: FileEntry) -> str:
    """The file's path as scanned, for HTML."""
    return html.escape(unescape_path(entry.path).decode("utf-8", "replace"))


def _page(figures: dict, status: dict, plots: dict, cards: Sequence[str], evaluation: dict | None,
          rows: Sequence[dict]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(status["finished"] or time.time()))
    rate = f"{figures['rate_per_s']:,.0f} images/s" if figures["rate_per_s"] else "-"
    summary = [("images", f"{figures['images']:,}"), ("predicted", f"{figures['predicted']:,}"),
               ("errors", f"{figures['errors']:,}"), ("model version", html.escape(figures["model_version"])),
               ("finished", when), ("elapsed", f"{figures['elapsed_s'] or 0:.1f} s"), ("throughput", rate),
               (f"below {figures['threshold'] * 100:g}% confidence",
                f"{figures['below_threshold']:,} ({figures['below_share']:.1%}): candidates for `digitq review`")]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary)
    counts = "".join(f"<td>{n:,}</td>" for n in figures["class_counts"])
    eval_note = (f"Evaluation set: {html.escape(str(evaluation.get('set', 'recorded at publish time')))}, "
                 f"{sum(evaluation['class_shares']):,} images, recorded when the version was published."
                 if evaluation else "This version has no evaluation profile recorded: only this job is shown.")
    errors = [r for r in rows if r["error"]][:50]
    error_rows = "".join(f"<tr><td>{_shown(r['entry'])}</td><td>{html.escape(r['error'])}</td></tr>" for r in errors)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>digitq report: job {html.escape(figures['job_id'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ text-align: left; padding: .25em .8em; }}
th {{ color: #555; font-weight: 600; }} .gallery {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .5em; width: 250px; }}
.pair {{ display: flex; gap: .5em; }} figure {{ margin: 0; }} figcaption {{ font-size: .75em; color: #666; }}
img {{ image-rendering: pixelated; background: #000; }}
.path {{ font-size: .75em; word-break: break-all; color: #555; }}
.problem {{ color: #a40; font-size: .8em; }} .plots img {{ background: #fff; max-width: 100%; }}
</style></head><body>
<h1>Job {html.escape(figures['job_id'])}</h1>
<p id="count">{figures['images']:,} images, {figures['errors']:,} errors,
model {html.escape(figures['model_version'])}</p>
<table>{table}</table>
<h2>Predicted classes</h2>
<table><tr><th>digit</th>{''.join(f'<th>{d}</th>' for d in range(10))}</tr><tr><th>images</th>{counts}</tr></table>
<div class="plots"><img src="{plots['classes']}" alt="class histogram">
<img src="{plots['confidence']}" alt="confidence distribution"></div>
<p>{eval_note}</p>
<h2>The model's confidence</h2>
{_model_table(figures["model"])}
<h2>Lowest confidence ({len(cards)})</h2>
<div class="gallery">{''.join(cards)}</div>
<h2>Errors ({figures['errors']:,}{', first 50' if figures['errors'] > 50 else ''})</h2>
<table>{error_rows or '<tr><td>none</td></tr>'}</table>
</body></html>
"""
