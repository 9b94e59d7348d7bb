"""`digitq report`: a self-contained HTML page per job, checked in a real headless Chromium (Debian's
`chromium`, which scripts/test.sh installs when it is absent) through Playwright."""

import io
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image

from model.dataset import write_image_folder
from model.registry import Registry
from producer.cli import main

from .conftest import ROOT
from .pipeline_helpers import last_json, make_job

ARTIFACTS = ROOT / "test-artifacts"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("no Chromium: run the suite with scripts/test.sh, which installs Debian's chromium")


def test_the_report_renders_offline_in_headless_chromium(settings, worker, tmp_path, mnist):
    from playwright.sync_api import sync_playwright

    from producer.follow import wait_for

    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:60], mnist.y_test[:60])
    photo = Image.fromarray(np.kron(255 - mnist.x_test[60], np.ones((8, 8), np.uint8))).convert("RGB")
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    (folder / "scan of a 7.jpg").write_bytes(buf.getvalue())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    job = make_job(settings, folder, batch_size=20)
    wait_for(job, timeout=120)

    result = CliRunner().invoke(main, ["--redis-url", settings.redis_url, "--data-dir", str(settings.data_dir),
                                       "report", job.id, "--gallery", "12", "--below", "0.999", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    figures = last_json(result)
    assert (figures["images"], figures["errors"], figures["gallery"]) == (62, 1, 12)
    assert sum(figures["class_counts"]) == 61 and 0 < figures["below_threshold"] <= 61
    path = job.dir / "report.html"
    assert figures["report"] == str(path.resolve())
    text = path.read_text()
    assert 'src="http' not in text and 'src="file' not in text  # every image is embedded
    assert "Evaluation set: MNIST test split, 10,000 images" in text  # the bundled version's recorded profile
    # the version's calibration and robustness, as recorded in its model.json, in the page and the JSON
    model = figures["model"]
    recorded = Registry("/nowhere").bundled().meta
    assert model["temperature"] == recorded["calibration"]["temperature"] != 1
    assert model["ece"] == recorded["evaluation"]["ece"] and 0 < model["ece"] < 0.01
    assert model["suite_ece"] == recorded["robustness"]["average"]["ece"] and 0 < model["suite_ece"] < 0.03
    assert len(model["shifts"]) == len(recorded["robustness"]["shifts"]) and model["shifts"][0]["name"] == "clean"
    assert model["suite_worst"]
    assert 'id="robustness"' in text and "style-7-crossbar" in text and f"{model['suite_ece']:.2%}" in text

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri(), wait_until="load")
            assert page.title() == f"digitq report: job {job.id}"
            assert page.inner_text("#count").startswith("62 images, 1 errors")
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    gallery = [i for i in images if i[0] in ("original", "model input")]
    plots = [i for i in images if i[0] in ("class histogram", "confidence distribution")]
    assert len(gallery) == 24 and len(plots) == 2  # 12 cards, each the original and the model's input
    assert all(complete and width > 0 and height > 0 for _, complete, width, height in gallery + plots), images
    assert errors == []
