"""The benchmark: every figure the README quotes, in one run, written to BENCHMARKS.md.

    .venv/bin/python scripts/benchmark.py              # 20,000 MNIST PNGs, 100 phone photos, an A4 page
    .venv/bin/python scripts/benchmark.py --million    # also 1,000,000 files through the pipeline (minutes)

On one generated folder of N MNIST digits as PNG files it measures, side by side:
  (a) raw model throughput on preloaded arrays, for each runtime and thread count; and the served
      confidences' fidelity to the float model on all 10,000 MNIST test digits, for each runtime;
  (b) the plain local script a user would write (walk, read, Pillow decode, batches of 512
      through a tf.function, one CSV), the peer the pipeline must beat;
  (c) the full pipeline: `digitq scan --wait`, producer + Redis + warm workers, wall time to the CSV;
  (d) the producer's enqueue rate (`digitq scan` with no worker listening);
  (e) worker start-up to its first prediction;
  (f) worker memory (RSS) per process;
  (g) 12-megapixel phone photos through the pipeline; and one A4 600-dpi page scan decoded alone;
  (h) an incremental rescan of the unchanged MNIST folder (after one that fills the index).
Model loading is excluded on both sides of (b)/(c); each timed run is the best of two ((d): of three).
Everything runs locally: a private redis-server on a free loopback port and real Celery workers.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
DIGITQ = [PYTHON, "-m", "producer.cli"]
MARK_START, MARK_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def _sub(*args: str, env: dict | None = None) -> dict:
    """Run this script's sub-command in a fresh process; its last stdout line is JSON."""
    proc = subprocess.run([PYTHON, __file__, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- sub-commands, each in its own process --------------------------------------------------------

@click.group(invoke_without_command=True)
@click.option("--images", default=20_000, show_default=True, help="MNIST PNGs in the main folder.")
@click.option("--photos", default=100, show_default=True, help="12-megapixel phone photos for (g).")
@click.option("--million", is_flag=True, help="Also scan 1,000,000 small files (generation timed apart).")
@click.option("--million-files", default=1_000_000, show_default=True, hidden=True)
@click.option("--concurrency", type=int, help="Worker processes (default: Celery's, one per core).")
@click.option("--data", envvar="DIGITQ_MNIST", default=str(ROOT.parent / "shared" / "mnist"), show_default=True)
@click.option("--write/--no-write", default=True, help="Write the results into BENCHMARKS.md.")
@click.pass_context
def cli(ctx, images, photos, million, million_files, concurrency, data, write):
    """Measure, print a table, and write it to BENCHMARKS.md."""
    if ctx.invoked_subcommand is None:
        run_all(images, photos, million_files if million else 0, concurrency, data, write)


@cli.command()
@click.option("--runtime", required=True)
@click.option("--threads", type=int, required=True)
def raw(runtime: str, threads: int) -> None:
    """(a) images/s of one runtime on preloaded MNIST test arrays."""
    os.environ["DIGITQ_THREADS"] = str(threads)
    from model.dataset import load_dataset
    from model.registry import Registry
    from model.runtime import load_predictor

    x = load_dataset(os.environ["DIGITQ_MNIST"]).x_test
    predictor = load_predictor(Registry(ROOT / "nowhere").bundled(), runtime)
    predictor.predict(x[:512])
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, len(x), 256):
            predictor.predict(x[i : i + 256])
        best = max(best, len(x) / (time.perf_counter() - started))
    print(json.dumps({"images_per_s": round(best), "images": int(len(x)), "served": predictor.runtime}))


@cli.command()
def fidelity() -> None:
    """(a) every runtime's probabilities against the float model's (Keras) on the 10,000 MNIST test digits."""
    from model.dataset import load_dataset
    from model.export import CALIBRATION_IMAGES, confidence_fidelity, to_int8
    from model.registry import ONNX_FILE, Registry
    from model.runtime import RUNTIMES, OnnxPredictor, load_predictor

    data = load_dataset(os.environ["DIGITQ_MNIST"])
    ref = Registry(ROOT / "nowhere").bundled()
    reference = load_predictor(ref, "keras").predict(data.x_test)
    out = {}
    for runtime in RUNTIMES:
        predictor = load_predictor(ref, runtime)
        out[runtime] = {**confidence_fidelity(reference, predictor.predict(data.x_test), data.y_test),
                        "served": f"{predictor.runtime}, {predictor.artifact}"}
    # The int8 graph served before issue 14 (and still on disk in versions published then), for comparison.
    retired = to_int8((ref.directory / ONNX_FILE).read_bytes(), data.x_train[:CALIBRATION_IMAGES])
    out["int8 graph (retired)"] = {**confidence_fidelity(reference, OnnxPredictor(ref, retired).predict(data.x_test),
                                                         data.y_test), "served": "no longer served"}
    print(json.dumps(out))


@cli.command()
@click.argument("folder")
@click.argument("out")
def plain(folder: str, out: str) -> None:
    """(b) The plain local script, as a user would write it in 30 lines."""
    import csv

    import keras
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    model = keras.saving.load_model(ROOT / "model" / "bundled" / "model.keras", compile=False)
    predict = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    predict(np.zeros((512, 28, 28, 1), np.float32))  # trace once, like loading: excluded
    best = 0.0
    for _ in range(2):
        started = time.perf_counter()
        paths = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if f.endswith(".png"))
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "prediction", "confidence"])
            for i in range(0, len(paths), 512):
                chunk = paths[i : i + 512]
                x = np.stack([np.asarray(Image.open(p).convert("L"), np.float32) for p in chunk])[..., None] / 255
                probs = predict(x).numpy()
                writer.writerows([p, int(q.argmax()), f"{q.max():.6f}"] for p, q in zip(chunk, probs, strict=True))
        best = max(best, len(paths) / (time.perf_counter() - started))
    print(json.dumps({"images_per_s": round(best), "images": len(paths)}))


@cli.command()
@click.argument("path")
def page(path: str) -> None:
    """(g) A page scan through decode_image, as in a worker process (decoders preloaded): the median
    seconds of three, and the rise of peak RSS over the first."""
    from model.preprocess import decode_image, preload

    data = Path(path).read_bytes()
    preload()  # what each worker process does at start
    decode_image((ROOT / "samples" / "digits" / "scans" / "5_0023.png").read_bytes())  # imports, allocator
    before = _rss_mb(os.getpid())[1]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        decode_image(data)
        times.append(time.perf_counter() - started)
        if len(times) == 1:
            rise = _rss_mb(os.getpid())[1] - before
    print(json.dumps({"seconds": round(sorted(times)[1], 3), "rss_rise_mb": round(rise, 1)}))


# -- the whole run --------------------------------------------------------------------------------

def _digitq(env: dict, *args: str) -> tuple[float, dict, int]:
    """Run the real CLI; wall seconds, its --json summary, and its peak RSS (MB) with its children's.

    The peak is VmHWM, sampled (getrusage's ru_maxrss would start at this process's own size, which
    Linux carries into a child across fork and exec), or the largest sampled sum of VmRSS over the
    CLI and the processes it forks (the walk, the senders; pages they share count in each)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*DIGITQ, *args, "--json"], env=env, cwd=ROOT, stdout=out, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            try:
                peak = max(peak, _rss_mb(proc.pid)[1], sum(_rss_mb(pid)[0] for pid in _tree(proc.pid)))
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"digitq {' '.join(args)} failed:\n{err.read()[-3000:]}")
        return seconds, json.loads(out.read().strip().splitlines()[-1]), round(peak)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            pass
    return out


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _accuracy(csv_path: str) -> float:
    from digitq import csvfile

    rows = csvfile.read(csv_path)
    label = re.compile(r"(?:^|/)([0-9])(?:/|_)")
    hits = [r["prediction"] == label.findall(r["path"])[-1] for r in rows]
    return sum(hits) / max(1, len(hits))


def make_digits(folder: Path, count: int, data: str) -> None:
    import numpy as np

    from model.dataset import load_dataset, write_image_folder

    mnist = load_dataset(data)
    x = np.concatenate([mnist.x_test, mnist.x_train])[:count]
    y = np.concatenate([mnist.y_test, mnist.y_train])[:count]
    write_image_folder(folder, x, y)


def make_photos(folder: Path, count: int, data: str) -> None:
    import numpy as np

    from model.dataset import load_dataset
    from model.synthetic import phone_photo

    mnist = load_dataset(data)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"{mnist.y_test[i]}_{i:04d}.jpg").write_bytes(phone_photo(mnist.x_test[i], rng))


def make_many(folder: Path, count: int, data: str) -> None:
    """``count`` small PNGs, 1,000 a folder, bytes reused from MNIST digits."""
    import io

    from PIL import Image

    from model.dataset import load_dataset

    mnist = load_dataset(data)
    blobs = []
    for digit, label in zip(mnist.x_test[:1000], mnist.y_test[:1000], strict=True):
        buf = io.BytesIO()
        Image.fromarray(digit).save(buf, format="PNG")
        blobs.append((int(label), buf.getvalue()))
    for start in range(0, count, 1000):
        sub = folder / f"{start // 1000:04d}"
        sub.mkdir(parents=True)
        for i in range(start, min(count, start + 1000)):
            label, blob = blobs[i % 1000]
            with open(sub / f"{label}_{i:07d}.png", "wb") as f:
                f.write(blob)


def run_all(images: int, photos: int, million: int, concurrency: int | None, data: str, write: bool) -> None:
    from digitq.redisserver import RedisServer
    from producer.dispatch import submit
    from producer.follow import wait_for
    from worker.process import WorkerProcess

    cores = len(os.sched_getaffinity(0))
    concurrency = concurrency or cores
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cores": cores, "cpu": _cpu(), "images": images,
                     "photos": photos, "concurrency": concurrency}
    env = {**os.environ, "DIGITQ_MNIST": data}
    with tempfile.TemporaryDirectory(prefix="digitq-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        make_digits(tmp / "digits", images, data)
        make_digits(tmp / "warmup", 64, data)
        make_photos(tmp / "photos", photos, data)
        from model.dataset import load_dataset
        from model.synthetic import page_scan

        (tmp / "page.png").write_bytes(page_scan(load_dataset(data).x_test[0]))
        results["generate_s"] = round(time.perf_counter() - started, 1)
        print(f"generated {images} PNGs, {photos} photos and a page in {results['generate_s']} s", file=sys.stderr)

        raw = {f"{rt}/{th}": _sub("raw", "--runtime", rt, "--threads", str(th), env=env)
               for rt in ("onnx", "keras") for th in (1, cores)}
        results["raw"] = {key: value["images_per_s"] for key, value in raw.items()}
        print(f"(a) raw {results['raw']}", file=sys.stderr)
        results["fidelity"] = _sub("fidelity", env=env)
        print(f"(a) fidelity {results['fidelity']}", file=sys.stderr)
        results["plain"] = _sub("plain", str(tmp / "digits"), str(tmp / "plain.csv"), env=env)["images_per_s"]
        print(f"(b) plain script {results['plain']} images/s", file=sys.stderr)

        with RedisServer() as redis:
            wenv = {"DIGITQ_REDIS_URL": redis.url, "DIGITQ_DATA_DIR": str(tmp / "data")}
            cenv = {**env, **wenv}
            from digitq.settings import Settings

            settings = Settings.from_env(redis_url=redis.url, data_dir=str(tmp / "data"))
            worker = WorkerProcess(wenv, tmp / "worker.log", concurrency=concurrency)
            t0 = time.perf_counter()
            worker.start()
            wait_for(submit(settings, [str(tmp / "warmup")], batch_size=64), timeout=120, poll=0.01)
            results["worker_ready_s"] = round(time.perf_counter() - t0, 2)
            print(f"(e) worker ready in {results['worker_ready_s']} s", file=sys.stderr)
            try:
                for _ in range(3):  # every pool process loads the model
                    wait_for(submit(settings, [str(tmp / "warmup")], batch_size=8), timeout=120, poll=0.01)
                best = None
                for _ in range(2):
                    seconds, summary, producer_rss = _digitq(cenv, "scan", str(tmp / "digits"), "--wait")
                    best = seconds if best is None else min(best, seconds)
                results["pipeline"] = round(images / best)
                results["pipeline_accuracy"] = round(_accuracy(summary["output"]), 4)
                print(f"(c) pipeline {results['pipeline']} images/s", file=sys.stderr)
                # (h) incremental rescans: the first fills the content-hash index, the second finds it all there
                _digitq(cenv, "scan", str(tmp / "digits"), "--wait", "--incremental")
                seconds, summary, _ = _digitq(cenv, "scan", str(tmp / "digits"), "--wait", "--incremental")
                results["rescan"] = {"seconds": round(seconds, 2), "sent": summary["sent"],
                                     "from_index": summary["from_index"]}
                print(f"(h) unchanged incremental rescan {results['rescan']}", file=sys.stderr)
                runs = [_digitq(cenv, "scan", str(tmp / "photos"), "--wait") for _ in range(2)]
                seconds, summary = min(r[0] for r in runs), runs[-1][1]
                results["photos_per_s"] = round(photos / seconds, 1)
                results["photo_accuracy"] = round(_accuracy(summary["output"]), 4)
                print(f"(g) photos {results['photos_per_s']} /s", file=sys.stderr)
                children = worker.child_pids()
                results["worker_rss_mb"] = round(max(_rss_mb(pid)[1] for pid in children))
                results["worker_parent_rss_mb"] = round(_rss_mb(worker.proc.pid)[1])
                print(f"(f) worker RSS {results['worker_rss_mb']} MB per pool process", file=sys.stderr)
            finally:
                worker.stop()
            # (d) no worker listens on database 1: the producer alone, files on disk to messages in Redis
            qenv = {**cenv, "DIGITQ_REDIS_URL": redis.url.rsplit("/", 1)[0] + "/1"}
            seconds = min(_digitq(qenv, "scan", str(tmp / "digits"))[0] for _ in range(3))
            results["enqueue_per_s"] = round(images / seconds)
            print(f"(d) enqueue {results['enqueue_per_s']} files/s", file=sys.stderr)

        if million:
            results["million"] = run_million(tmp, million, data, env, concurrency)
        results["page"] = _sub("page", str(tmp / "page.png"), env=env)
    results["ratio_plain"] = round(results["pipeline"] / results["plain"], 2)
    results["ratio_raw"] = round(results["pipeline"] / max(results["raw"].values()), 2)
    table = render(results)
    print(table)
    print(json.dumps(results))
    if write:
        write_benchmarks(table)


def run_million(tmp: Path, count: int, data: str, env: dict, concurrency: int) -> dict:
    """Scan ``count`` files with warm workers and a fresh Redis; peak memory of the producer and of Redis."""
    import redis as redis_lib

    from digitq.redisserver import RedisServer
    from worker.process import WorkerProcess

    folder = tmp / "many"
    started = time.perf_counter()
    make_many(folder, count, data)
    generate = time.perf_counter() - started
    print(f"generated {count} files in {generate:.0f} s", file=sys.stderr)
    with RedisServer() as redis:  # its own server: used_memory_peak covers this run alone
        wenv = {"DIGITQ_REDIS_URL": redis.url, "DIGITQ_DATA_DIR": str(tmp / "data-many")}
        with WorkerProcess(wenv, tmp / "worker-many.log", concurrency=concurrency):
            seconds, summary, producer_rss = _digitq({**env, **wenv}, "scan", str(folder), "--wait")
        info = redis_lib.Redis.from_url(redis.url).info("memory")
    out = {"files": count, "generate_s": round(generate), "seconds": round(seconds), "per_s": round(count / seconds),
           "producer_peak_rss_mb": producer_rss, "redis_peak_mb": round(info["used_memory_peak"] / 2**20, 1),
           "rows": summary["done"], "state": summary["state"]}
    print(f"million: {out}", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def _cpu() -> str:
    """The CPU's model name and widest vector instructions (which kernels ONNX Runtime runs; the graph
    served is the same on every CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor() or "?"
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {isa}, {'VNNI' if flags & {'avx512_vnni', 'avx_vnni'} else 'no VNNI'}"


def render(r: dict) -> str:
    raw = r["raw"]
    lines = [
        f"Measured {r['date']} on {r['cores']} cores ({r.get('cpu', '?')}), {r['images']:,} MNIST PNGs, worker "
        f"concurrency {r['concurrency']} (`.venv/bin/python scripts/benchmark.py`).",
        "",
        "| | measure | result | target |",
        "|---|---|---|---|",
    ]
    for key, value in raw.items():
        runtime, threads = key.split("/")
        target = ">= 15,000 with 2 threads" if runtime == "onnx" and threads != "1" else ""
        if runtime == "onnx":
            runtime += " (default, float graph; also what `onnx-int8` serves)"
        lines.append(f"| (a) | raw inference, {runtime}, {threads} thread(s) | {value:,} images/s | {target} |")
    lines += [
        f"| (b) | plain local script (walk, Pillow, tf.function x 512, CSV) | {r['plain']:,} images/s | |",
        f"| (c) | pipeline: `digitq scan --wait`, Redis, warm workers, to the CSV | {r['pipeline']:,} images/s "
        f"(accuracy {r['pipeline_accuracy']:.2%}) | |",
        f"| (c)/(b) | pipeline vs the plain script | **{r['ratio_plain']}x** | >= 1.5x (aim 2x) |",
        f"| (c)/(a) | pipeline vs the fastest raw inference | {r['ratio_raw']}x | |",
        f"| (d) | producer enqueue (`digitq scan`, no worker; best of 3) | {r['enqueue_per_s']:,} files/s "
        "| >= 20,000 |",
        f"| (e) | worker start to first prediction | {r['worker_ready_s']} s | <= 3 s |",
        f"| (f) | worker RSS, peak per pool process (parent) | {r['worker_rss_mb']} MB "
        f"({r['worker_parent_rss_mb']} MB) | <= 300 MB |",
        f"| (g) | 12-megapixel phone photos through the pipeline | {r['photos_per_s']} photos/s "
        f"(accuracy {r['photo_accuracy']:.0%} of {r['photos']}) | >= 40 |",
        f"| (g) | A4 page, 600 dpi RGB PNG, decode alone | {r['page']['seconds']} s, peak RSS "
        f"+{r['page']['rss_rise_mb']} MB | <= 0.3 s, <= 100 MB |",
    ]
    if "rescan" in r:
        h = r["rescan"]
        lines.append(f"| (h) | `scan --incremental --wait` of the same {r['images']:,} files, unchanged | "
                     f"{h['seconds']} s, {h['sent']} sent, {h['from_index']:,} from the index | nothing sent |")
    fidelity = r.get("fidelity")
    if fidelity:
        lines += ["", "Confidence fidelity on the 10,000 MNIST test digits, against the float model (Keras): "
                  "the largest difference in any probability of any digit (target < 0.005), and the distinct "
                  "confidences as rows carry them (6 decimals).", "",
                  "| runtime | serves | max \\|p - p_float\\| | distinct confidences | highest confidence | "
                  "below 0.999 | accuracy |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {f['served']} | {f['max_abs_diff']:.2g} | {f['distinct_confidences']:,} | "
                  f"{f['max_confidence']:.6f} | {f['below_0_999']:,} | {f['accuracy']:.2%} |"
                  for name, f in fidelity.items()]
    m = r.get("million")
    if m:
        lines += [
            f"| 1M | {m['files']:,} files: pipeline (generation {m['generate_s']} s apart) | {m['seconds']} s, "
            f"{m['per_s']:,} files/s, {m['rows']:,} rows | |",
            f"| 1M | producer peak RSS (with its walk and sender processes) | {m['producer_peak_rss_mb']} MB "
            "| <= 600 MB |",
            f"| 1M | Redis peak `used_memory` | {m['redis_peak_mb']} MB | <= 100 MB |",
        ]
    return "\n".join(lines)


def write_benchmarks(table: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{MARK_START}\n{MARK_END}\n"
    head, rest = text.split(MARK_START, 1)
    tail = rest.split(MARK_END, 1)[1]
    path.write_text(f"{head}{MARK_START}\n{table}\n{MARK_END}{tail}")
    print(f"wrote {path}", file=sys.stderr)



# -- the robustness suite: a section of its own (`benchmark.py robustness`), apart from run_all ----

ROBUSTNESS_START, ROBUSTNESS_END = "<!-- robustness:start -->", "<!-- robustness:end -->"


@cli.command()
@click.option("--limit", type=click.IntRange(1), help="Images per shift (default: all 10,000).")
@click.option("--data", envvar="DIGITQ_MNIST", default=str(ROOT.parent / "shared" / "mnist"), show_default=True)
@click.option("--write/--no-write", default=True, help="Write the table into BENCHMARKS.md's robustness section.")
def robustness(limit: int | None, data: str, write: bool) -> None:
    """The production model on the whole robustness suite (`digitq evaluate --suite robustness`),
    timed end to end in a fresh process: accuracy and ECE per shift, and the average."""
    with tempfile.TemporaryDirectory() as tmp:  # a fresh data dir: the bundled model is production
        args = [*DIGITQ, "--data-dir", tmp, "evaluate", "--suite", "robustness", "--data", data, "--json"]
        started = time.monotonic()
        proc = subprocess.run(args + (["--limit", str(limit)] if limit else []), capture_output=True, text=True,
                              cwd=ROOT)
        wall = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(f"digitq evaluate --suite robustness failed:\n{proc.stderr[-3000:]}")
    table = render_robustness(json.loads(proc.stdout.strip().splitlines()[-1]), wall)
    print(table)
    if write:
        write_robustness(table)


def render_robustness(r: dict, wall: float) -> str:
    """The suite's table, in Markdown."""
    images = sum(row["examples"] for row in r["shifts"])
    scope = "all test images" if r["limit"] is None else f"the first {r['limit']} of the seeded order"
    lines = [f"Model {r['model_version']} ({r['runtime']}), seed {r['seed']}, {scope} per shift: {images:,} images "
             f"in {wall:.0f} s ({r['build_seconds']} s making and decoding them, "
             f"{r['seconds'] - r['build_seconds']:.2f} s predicting), {time.strftime('%Y-%m-%d')}, {_cpu()}.", "",
             "| shift | family | digits | images | accuracy | ECE | mean confidence |", "|---|---|---|---|---|---|---|"]
    for row in r["shifts"]:
        digits = "all" if len(row["digits"]) == 10 else ",".join(map(str, row["digits"]))
        lines.append(f"| {row['name']} | {row['family']} | {digits} | {row['examples']:,} | {row['accuracy']:.2%} "
                     f"| {row['ece']:.1%} | {row['mean_confidence']:.3f} |")
    avg = r["average"]
    lines.append(f"| **average of {avg['shifts']} shifts** (without clean) | | | | **{avg['accuracy']:.2%}** "
                 f"| **{avg['ece']:.1%}** | |")
    return "\n".join(lines)


def write_robustness(table: str) -> None:
    """Replace BENCHMARKS.md's robustness section (added at the end the first time)."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if ROBUSTNESS_START not in text:
        text = (text.rstrip("\n") + "\n\n## Robustness suite\n\n`.venv/bin/python scripts/benchmark.py robustness` "
                "(see README, \"Robustness: the suite\"):\n\n" + f"{ROBUSTNESS_START}\n{ROBUSTNESS_END}\n")
    head, rest = text.split(ROBUSTNESS_START, 1)
    path.write_text(f"{head}{ROBUSTNESS_START}\n{table}\n{ROBUSTNESS_END}{rest.split(ROBUSTNESS_END, 1)[1]}")
    print(f"wrote {path}", file=sys.stderr)

if __name__ == "__main__":
    cli()
