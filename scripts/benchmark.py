"""The benchmark: every figure the README quotes, in one run, written to BENCHMARKS.md.

    .venv/bin/python scripts/benchmark.py              # 20,000 MNIST PNGs, 100 phone photos, an A4 page
    .venv/bin/python scripts/benchmark.py --million    # also 1,000,000 files through the pipeline (minutes)
    .venv/bin/python scripts/benchmark.py scale        # (c), (g) and the cost model alone, printed only

On one generated folder of N MNIST digits as PNG files it measures, side by side:
  (a) raw model throughput on preloaded arrays, for each runtime and thread count; and the served
      confidences' fidelity to the float model on all 10,000 MNIST test digits, for each runtime;
  (b) the plain local script a user would write (walk, read, Pillow decode, batches of 512
      through a tf.function, one CSV), the peer the pipeline must beat; and the limit, the same script
      with our own runtime (pyspng, ONNX Runtime with 2 threads): the best a single process does;
  (c) the full pipeline: `digitq scan --wait`, producer + Redis + warm workers, wall time to the CSV:
      with a worker that sees the data dir, and with stateless workers (a private data dir, the same
      concurrency, results handed in through Redis to a collect-only worker that sees it), alternating;
  (d) the producer's enqueue rate (`digitq scan` with no worker listening);
  (e) worker start-up to its first prediction;
  (f) worker memory (RSS) per process;
  (g) 12-megapixel phone photos through the pipeline, in both modes; and one A4 600-dpi page scan decoded alone;
  (h) an incremental rescan of the unchanged MNIST folder (after one that fills the index);
  and the cost model: around each run of (c) and (g), what its Redis paid per image (INFO deltas:
  commands, bytes in and out, CPU, peak memory) and the CPU of each process, and from those the rate at which
  one Redis core saturates and how many hosts that is.
Model loading is excluded on both sides of (b)/(c); (c) and (g) are the best of five runs per mode, (b) of two,
(d) of three. Everything runs locally: private redis-servers on free loopback ports (one per worker mode, so
that INFO counts one mode) and real Celery workers.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
DIGITQ = [PYTHON, "-m", "producer.cli"]
MARK_START, MARK_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def compile_checkout() -> None:
    """Byte-compile the checkout, as installing a package does: where PYTHONDONTWRITEBYTECODE is set (this
    machine type sets it) every CLI run and worker start would compile its sources again, 0.1 s a start."""
    import compileall

    for package in ("digitq", "producer", "worker", "model"):
        compileall.compile_dir(ROOT / package, quiet=1)


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
    from model.serving.runtime import load_predictor

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
    from model.registry import ONNX_FILE, Registry
    from model.serving.runtime import RUNTIMES, OnnxPredictor, load_predictor
    from model.training.export import CALIBRATION_IMAGES, confidence_fidelity, to_int8

    data = load_dataset(os.environ["DIGITQ_MNIST"])
    ref = Registry(ROOT / "nowhere").bundled()
    reference = load_predictor(ref, "keras").predict(data.x_test)
    out = {}
    for runtime in RUNTIMES:
        predictor = load_predictor(ref, runtime)
        out[runtime] = {**confidence_fidelity(reference, predictor.predict(data.x_test), data.y_test),
                        "served": f"{predictor.runtime}, {predictor.artifact}"}
    # The int8 graph (still on disk in versions published with one), for comparison.
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
@click.argument("folder")
@click.argument("out")
def limit(folder: str, out: str) -> None:
    """(b) The limit: the same script with our own runtime (pyspng, ONNX Runtime on the served graph with 2
    intra-op threads, x 512, one CSV; no queue, no hashing). What the pipeline must reach on the same cores."""
    import csv

    import numpy as np
    import onnxruntime as ort
    import pyspng

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(ROOT / "model" / "bundled" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    session.run(None, {"image": np.zeros((512, 28, 28), np.uint8)})  # first run allocates, like loading
    best = 0.0
    for _ in range(2):
        started = time.perf_counter()
        paths = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if f.endswith(".png"))
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "prediction", "confidence"])
            for i in range(0, len(paths), 512):
                chunk = paths[i : i + 512]
                x = np.stack([pyspng.load(Path(p).read_bytes()).reshape(28, 28) for p in chunk])
                probs = session.run(None, {"image": x})[0]
                writer.writerows([p, int(q.argmax()), f"{q.max():.6f}"] for p, q in zip(chunk, probs, strict=True))
        best = max(best, len(paths) / (time.perf_counter() - started))
    print(json.dumps({"images_per_s": round(best), "images": len(paths)}))


@cli.command()
@click.argument("path")
def page(path: str) -> None:
    """(g) A page scan through decode_image, as in a worker process (decoders preloaded): the median
    seconds of three, and the rise of peak RSS over the first."""
    from model.serving.preprocess import decode_image, preload

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



@cli.command()
@click.option("--images", default=20_000, show_default=True, help="MNIST PNGs.")
@click.option("--photos", default=100, show_default=True, help="12-megapixel phone photos.")
@click.option("--concurrency", type=int, help="Predicting worker processes (default: one per core).")
@click.option("--data", envvar="DIGITQ_MNIST", default=str(ROOT.parent / "shared" / "mnist"), show_default=True)
def scale(images: int, photos: int, concurrency: int | None, data: str) -> None:
    """(c), (g) and the cost model alone: the pipeline with workers that see the data dir and with stateless
    ones, and what Redis paid per image in each (printed, JSON last; BENCHMARKS.md is not written)."""
    compile_checkout()
    cores = len(os.sched_getaffinity(0))
    concurrency = concurrency or cores
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cores": cores, "cpu": _cpu(), "images": images,
                     "photos": photos, "concurrency": concurrency}
    machine = _Others()
    with tempfile.TemporaryDirectory(prefix="digitq-bench-") as tmp:
        tmp = Path(tmp)
        make_digits(tmp / "digits", images, data)
        make_digits(tmp / "warmup", 64, data)
        make_photos(tmp / "photos", photos, data)
        run_pipelines(tmp, images, photos, {**os.environ, "DIGITQ_MNIST": data}, concurrency, cores, results,
                      extras=False)
    results["machine"] = machine.result()
    st = results["stateless"]
    print(f"pipeline: shared {results['pipeline']:,} images/s, stateless {st['pipeline']:,} ({st['ratio']:.2f}x); "
          f"photos: shared {results['photos_per_s']}/s, stateless {st['photos_per_s']}/s ({st['photo_ratio']:.2f}x); "
          f"ratios of the medians {st['digits_median_ratio']:.2f}x and {st['photos_median_ratio']:.2f}x."
          f"{_others_note(results)}")
    print(render_cost(results))
    print(json.dumps(results))

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
    from digitq.disk import csvfile

    rows = csvfile.read(csv_path)
    label = re.compile(r"(?:^|/)([0-9])(?:/|_)")
    hits = [r["prediction"] == label.findall(r["path"])[-1] for r in rows]
    return sum(hits) / max(1, len(hits))


# -- what one Redis pays per image (the cost model) --------------------------------------------------

class RedisProbe:
    """``INFO`` of one redis-server around a run: command counts, network bytes, CPU seconds, and (sampled
    every 50 ms) the peak of ``used_memory``. It talks RESP on connections of its own, so that its own
    commands and bytes are known exactly and taken out of the deltas."""

    SECTIONS = ("stats", "cpu", "commandstats", "memory")

    def __init__(self, url: str, every_s: float = 0.05):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.address, self.password = (parts.hostname or "127.0.0.1", parts.port or 6379), parts.password
        self.every_s = every_s
        self.sent = self.received = self.calls = 0  # the probe's own INFO traffic inside the window
        self.peak = 0
        self._stop = threading.Event()

    def _connect(self) -> tuple[socket.socket, object]:
        sock = socket.create_connection(self.address)
        reader = sock.makefile("rb")
        if self.password:
            sock.sendall(_resp("AUTH", self.password))
            reader.readline()
        return sock, reader

    def _info(self, conn: tuple[socket.socket, object], *sections: str) -> tuple[dict, int, int]:
        """The parsed reply, and the bytes of the request and of the reply."""
        sock, reader = conn
        request = _resp("INFO", *sections)
        sock.sendall(request)
        header = reader.readline()
        if not header.startswith(b"$"):
            raise SystemExit(f"INFO failed: {header!r}")
        body = reader.read(int(header[1:]) + 2)
        out = {}
        for line in body.decode().splitlines():
            if ":" in line and not line.startswith("#"):
                name, value = line.split(":", 1)
                out[name] = value
        return out, len(request), len(header) + len(body)

    def _sample(self) -> None:
        conn = self._connect()
        try:
            while not self._stop.wait(self.every_s):
                info, sent, received = self._info(conn, "memory")
                self.sent += sent
                self.received += received
                self.calls += 1
                self.peak = max(self.peak, int(info["used_memory"]))
        finally:
            conn[0].close()

    def __enter__(self) -> RedisProbe:
        self._conn = self._connect()
        self.before, _, received = self._info(self._conn, *self.SECTIONS)
        # Redis counts a request's bytes before it runs the command, and the reply's once it is written:
        # the window holds the reply of this first INFO and the request of the last, and one INFO call.
        self.received, self.calls = received, 1
        self.peak = int(self.before["used_memory"])
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        time.sleep(0.05)
        self.after, self.sent_last, _ = self._info(self._conn, *self.SECTIONS)
        self.window_s = time.perf_counter() - self.started
        self._conn[0].close()
        self.peak = max(self.peak, int(self.after["used_memory"]))

    def deltas(self) -> dict:
        """Commands by name, bytes in and out, CPU seconds and the memory peak over the start, net of the probe."""
        def calls(info: dict) -> dict:
            return {name[len("cmdstat_"):]: dict(kv.split("=") for kv in value.split(","))
                    for name, value in info.items() if name.startswith("cmdstat_")}

        before, after = calls(self.before), calls(self.after)
        commands, usec = {}, {}
        for name, stats in after.items():
            was = before.get(name, {"calls": "0", "usec": "0"})
            n = int(stats["calls"]) - int(was["calls"]) - (self.calls if name == "info" else 0)
            if n > 0:
                commands[name] = n
                usec[name] = int(stats["usec"]) - int(was["usec"])

        def cpu(info: dict) -> float:
            return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

        def stat(name: str) -> int:
            return int(self.after[name]) - int(self.before[name])

        return {"commands": commands, "usec": usec,
                "bytes_in": stat("total_net_input_bytes") - self.sent - self.sent_last,
                "bytes_out": stat("total_net_output_bytes") - self.received,
                "cpu_s": cpu(self.after) - cpu(self.before), "window_s": self.window_s,
                "memory_rise": self.peak - int(self.before["used_memory"])}


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        data = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants, and of the children it reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for current in _tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if current == pid:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: pool processes that were replaced
    return total / tick


# -- the pipeline in two modes: workers that see the data dir, and stateless ones ---------------------

class Mode:
    """One way to run the workers, on a redis-server of its own (so that its INFO counts this mode alone).

    ``shared``: one worker that sees the producer's data dir, ``concurrency`` processes: it predicts and commits.
    ``stateless``: a worker with a private, empty data dir and the same ``concurrency`` (it predicts from the
    message and hands each batch's outcome in on the data dir's collect queue), beside a collect-only worker
    (``-Q collect.<id> -c 1``) that sees the data dir and commits; on the same cores, so its CPU counts."""

    def __init__(self, name: str, redis_url: str, tmp: Path, env: dict, concurrency: int):
        from digitq.disk.storage import data_dir_id
        from digitq.settings import Settings
        from worker.process import WorkerProcess

        self.name, self.redis_url = name, redis_url
        data = tmp / "data"
        data.mkdir(exist_ok=True)  # seen at start: a worker that sees it collects for it
        self.settings = Settings.from_env(redis_url=redis_url, data_dir=str(data))
        self.env = {**env, "DIGITQ_REDIS_URL": redis_url, "DIGITQ_DATA_DIR": str(data)}
        wenv = {"DIGITQ_REDIS_URL": redis_url, "DIGITQ_DATA_DIR": str(data)}
        if name == "shared":
            self.roles = {"workers": WorkerProcess(wenv, tmp / "worker.log", concurrency=concurrency)}
        else:
            private = tmp / "private"  # none of the producer's files are in it
            private.mkdir(exist_ok=True)
            self.roles = {
                "predictor": WorkerProcess({**wenv, "DIGITQ_DATA_DIR": str(private)}, tmp / "stateless.log",
                                           concurrency=concurrency, name="stateless"),
                "collector": WorkerProcess(wenv, tmp / "collector.log", concurrency=1, name="collector",
                                           queues=self.settings.collect_route(data_dir_id(data)))}

    def start(self, warmup: Path) -> float:
        """Start the workers and warm every pool process (model loaded, or fetched through Redis); the
        seconds from the start to the first batch committed."""
        from producer.dispatch import submit
        from producer.follow import wait_for

        started = time.perf_counter()
        for worker in self.roles.values():
            worker.start()
        wait_for(submit(self.settings, [str(warmup)], batch_size=64), timeout=120, poll=0.01)
        ready = time.perf_counter() - started
        for _ in range(3):  # every pool process loads the model
            wait_for(submit(self.settings, [str(warmup)], batch_size=8), timeout=120, poll=0.01)
        return ready

    def stop(self) -> None:
        for worker in self.roles.values():
            worker.stop()

    def idle(self, seconds: float = 3.0) -> float:
        """Redis CPU seconds per second with these workers idle (their polling, Redis's own timers, the
        probe's sampling): taken out of each run's CPU, in proportion to its length."""
        with RedisProbe(self.redis_url) as probe:
            time.sleep(seconds)
        return probe.deltas()["cpu_s"] / probe.window_s

    def scan(self, folder: Path) -> dict:
        """`digitq scan FOLDER --wait`, timed; around it, what Redis did (:class:`RedisProbe`) and the CPU
        seconds of each role: the producer (the CLI and the processes it forks) and each worker."""
        workers = {role: _cpu_seconds(w.proc.pid) for role, w in self.roles.items()}
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        with RedisProbe(self.redis_url) as probe:
            seconds, summary, _ = _digitq(self.env, "scan", str(folder), "--wait")
            time.sleep(0.3)  # the last batch's acknowledgement and records, after the merge the CLI waited for
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = {role: _cpu_seconds(w.proc.pid) - workers[role] for role, w in self.roles.items()}
        cpu["producer"] = after.ru_utime + after.ru_stime - reaped.ru_utime - reaped.ru_stime
        return {"seconds": seconds, "accuracy": _accuracy(summary["output"]), "cpu": cpu, **probe.deltas()}


#: Runs of (c) and of (g) per worker mode: a run is a few seconds, and single runs move by 20% here.
ROUNDS = 5


def _alternate(modes: dict, rounds: int = ROUNDS) -> list[str]:
    """The order of the runs: each mode ``rounds`` times, who goes first changing every round (A B, B A, A B...)."""
    names = list(modes)
    return [name for i in range(rounds) for name in (names if i % 2 == 0 else names[::-1])]


def _cost(runs: list[dict], count: int, idle: float) -> dict:
    """Per image, averaged over ``runs`` of ``count`` images each: Redis commands (all, and the most
    frequent), bytes in and out, Redis CPU (less ``idle`` CPU seconds per second of each run), and the CPU
    of each role; Redis's peak memory over its start."""
    per = count * len(runs)
    commands: dict[str, int] = {}
    usec: dict[str, int] = {}
    for run in runs:
        for name, n in run["commands"].items():
            commands[name] = commands.get(name, 0) + n
            usec[name] = usec.get(name, 0) + run["usec"][name]
    top = sorted(commands, key=commands.get, reverse=True)[:6]
    roles = runs[0]["cpu"].keys()
    redis_cpu = sum(r["cpu_s"] - idle * r["window_s"] for r in runs) / per
    return {
        "commands_per_image": round(sum(commands.values()) / per, 3),
        "top_commands": {name: round(commands[name] / per, 3) for name in top},
        "top_usec_share": {name: round(usec[name] / max(1, sum(usec.values())), 2) for name in top},
        "bytes_in_per_image": round(sum(r["bytes_in"] for r in runs) / per),
        "bytes_out_per_image": round(sum(r["bytes_out"] for r in runs) / per),
        "redis_cpu_s_per_1000": round(1000 * redis_cpu, 4),
        "redis_cpu_s_per_1000_gross": round(1000 * sum(r["cpu_s"] for r in runs) / per, 4),
        "redis_idle_cpu_per_s": round(idle, 5),
        "redis_memory_rise_mb": round(max(r["memory_rise"] for r in runs) / 2**20, 1),
        "cpu_s_per_1000": {role: round(1000 * sum(r["cpu"][role] for r in runs) / per, 3) for role in roles},
        # One core of Redis, busy with nothing else, at this cost per image:
        "redis_core_images_per_s": round(1 / redis_cpu) if redis_cpu > 0 else None,
    }


def _model(cost: dict, rate: float, cores: int) -> dict:
    """How many hosts like this one feed one Redis core: at the rate measured here (producer, Redis and
    workers together on these cores), and at the rate the predicting workers' own CPU allows on ``cores``."""
    saturates = cost["redis_core_images_per_s"]
    cpu = cost["cpu_s_per_1000"]
    predict = cpu.get("workers", cpu.get("predictor", 0.0)) / 1000
    host = cores / predict if predict else None
    return {"host_rate_measured": round(rate, 1), "host_rate_worker_cpu": round(host, 1) if host else None,
            "hosts_measured": round(saturates / rate, 1) if saturates else None,
            "hosts_worker_cpu": round(saturates / host, 1) if saturates and host else None,
            "collector_images_per_core_s": round(1000 / cpu["collector"]) if cpu.get("collector") else None,
            "mb_per_s_at_saturation": round(saturates * (cost["bytes_in_per_image"] + cost["bytes_out_per_image"])
                                            / 1e6, 1) if saturates else None}


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
    compile_checkout()
    cores = len(os.sched_getaffinity(0))
    concurrency = concurrency or cores
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cores": cores, "cpu": _cpu(), "images": images,
                     "photos": photos, "concurrency": concurrency}
    env = {**os.environ, "DIGITQ_MNIST": data}
    machine = _Others()
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
        results["limit"] = _sub("limit", str(tmp / "digits"), str(tmp / "limit.csv"), env=env)["images_per_s"]
        print(f"(b) limit script {results['limit']} images/s", file=sys.stderr)

        run_pipelines(tmp, images, photos, env, concurrency, cores, results)
        if million:
            results["million"] = run_million(tmp, million, data, env, concurrency)
        results["page"] = _sub("page", str(tmp / "page.png"), env=env)
    results["ratio_plain"] = round(results["pipeline"] / results["plain"], 2)
    results["ratio_limit"] = round(results["pipeline"] / results["limit"], 2)
    results["ratio_raw"] = round(results["pipeline"] / max(results["raw"].values()), 2)
    results["machine"] = machine.result()
    table = render(results)
    print(table)
    print(json.dumps(results))
    if write:
        write_benchmarks(table)


def run_pipelines(tmp: Path, images: int, photos: int, env: dict, concurrency: int, cores: int, results: dict,
                  extras: bool = True) -> None:
    """(c), (e), (f), (g), with (d) and (h) when ``extras``: the pipeline with workers that see the data dir and
    with stateless ones, alternating, on the folders ``tmp/digits``, ``tmp/photos`` and ``tmp/warmup``; and what
    one Redis paid per image in each (the cost model). Fills ``results``."""
    from digitq.bus.server import RedisServer

    with RedisServer() as redis, RedisServer() as sredis:
        modes = {"shared": Mode("shared", redis.url, tmp, env, concurrency),
                 "stateless": Mode("stateless", sredis.url, tmp, env, concurrency)}
        shared = modes["shared"]
        try:
            results["worker_ready_s"] = round(shared.start(tmp / "warmup"), 2)
            print(f"(e) worker ready in {results['worker_ready_s']} s", file=sys.stderr)
            results["stateless_ready_s"] = round(modes["stateless"].start(tmp / "warmup"), 2)
            idle = {name: mode.idle() for name, mode in modes.items()}  # both started: Redis as in the runs
            # The two modes alternate, each run on the same images with its own Redis; the other mode's
            # workers wait idle meanwhile. Each figure is the best of ROUNDS; the costs are the mean of them all.
            runs: dict = {"digits": {m: [] for m in modes}, "photos": {m: [] for m in modes}}
            for name in _alternate(modes):
                runs["digits"][name].append(modes[name].scan(tmp / "digits"))
                print(f"(c) {name} {images / runs['digits'][name][-1]['seconds']:,.0f} images/s", file=sys.stderr)
            digits = runs["digits"]
            results["pipeline"] = round(images / min(r["seconds"] for r in digits["shared"]))
            results["pipeline_accuracy"] = round(digits["shared"][-1]["accuracy"], 4)
            results["stateless"] = {"pipeline": round(images / min(r["seconds"] for r in digits["stateless"])),
                                    "pipeline_accuracy": round(digits["stateless"][-1]["accuracy"], 4),
                                    "ready_s": results.pop("stateless_ready_s")}
            print(f"(c) pipeline {results['pipeline']} images/s, stateless {results['stateless']['pipeline']}",
                  file=sys.stderr)
            if extras:  # (h) incremental rescans: the first fills the content-hash index, the second finds it all
                _digitq(shared.env, "scan", str(tmp / "digits"), "--wait", "--incremental")
                seconds, summary, _ = _digitq(shared.env, "scan", str(tmp / "digits"), "--wait", "--incremental")
                results["rescan"] = {"seconds": round(seconds, 2), "sent": summary["sent"],
                                     "from_index": summary["from_index"]}
                print(f"(h) unchanged incremental rescan {results['rescan']}", file=sys.stderr)
            for name in _alternate(modes):
                runs["photos"][name].append(modes[name].scan(tmp / "photos"))
                print(f"(g) {name} {photos / runs['photos'][name][-1]['seconds']:.1f} photos/s", file=sys.stderr)
            taken = runs["photos"]
            results["photos_per_s"] = round(photos / min(r["seconds"] for r in taken["shared"]), 1)
            results["photo_accuracy"] = round(taken["shared"][-1]["accuracy"], 4)
            results["stateless"]["photos_per_s"] = round(photos / min(r["seconds"] for r in taken["stateless"]), 1)
            results["stateless"]["photo_accuracy"] = round(taken["stateless"][-1]["accuracy"], 4)
            print(f"(g) photos {results['photos_per_s']} /s, stateless {results['stateless']['photos_per_s']}",
                  file=sys.stderr)
            worker = shared.roles["workers"]
            results["worker_rss_mb"] = round(max(_rss_mb(pid)[1] for pid in worker.child_pids()))
            results["worker_parent_rss_mb"] = round(_rss_mb(worker.proc.pid)[1])
            results["stateless"]["worker_rss_mb"] = round(max(
                _rss_mb(pid)[1] for pid in modes["stateless"].roles["predictor"].child_pids()))
            print(f"(f) worker RSS {results['worker_rss_mb']} MB per pool process", file=sys.stderr)
            for workload, count in (("digits", images), ("photos", photos)):  # every run, and the medians' ratio
                rates = {name: [round(count / r["seconds"], 1) for r in runs[workload][name]] for name in modes}
                results["stateless"][f"{workload}_runs"] = rates
                results["stateless"][f"{workload}_median_ratio"] = round(
                    statistics.median(rates["stateless"]) / statistics.median(rates["shared"]), 3)
        finally:
            for mode in modes.values():
                mode.stop()
        rates = {"digits": {"shared": results["pipeline"], "stateless": results["stateless"]["pipeline"]},
                 "photos": {"shared": results["photos_per_s"], "stateless": results["stateless"]["photos_per_s"]}}
        results["cost"] = {}
        for workload, count in (("digits", images), ("photos", photos)):
            for name in modes:
                cost = _cost(runs[workload][name], count, idle[name])
                cost.update(_model(cost, rates[workload][name], cores))
                results["cost"][f"{workload}/{name}"] = cost
                print(f"cost {workload}/{name}: {cost}", file=sys.stderr)
        if extras:  # (d) no worker listens on database 1: the producer alone, files on disk to messages in Redis
            qenv = {**shared.env, "DIGITQ_REDIS_URL": redis.url.rsplit("/", 1)[0] + "/1"}
            seconds = min(_digitq(qenv, "scan", str(tmp / "digits"))[0] for _ in range(3))
            results["enqueue_per_s"] = round(images / seconds)
            print(f"(d) enqueue {results['enqueue_per_s']} files/s", file=sys.stderr)
    results["stateless"]["ratio"] = round(results["stateless"]["pipeline"] / results["pipeline"], 3)
    results["stateless"]["photo_ratio"] = round(results["stateless"]["photos_per_s"] / results["photos_per_s"], 3)


def run_million(tmp: Path, count: int, data: str, env: dict, concurrency: int) -> dict:
    """Scan ``count`` files with warm workers and a fresh Redis; peak memory of the producer and of Redis."""
    import redis as redis_lib

    from digitq.bus.server import RedisServer
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


class _Others:
    """How busy the machine was with other work while the benchmark ran: CPU time of the whole machine
    (/proc/stat) less this process's and its children's (all reaped by the end), and the time the
    hypervisor gave to other guests (steal), each in cores on average over the run."""

    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        ours = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
        return time.monotonic(), (user + nice + system + irq + softirq) / tick, steal / tick, ours

    def result(self) -> dict:
        end = self._now()
        wall = end[0] - self.start[0]
        busy, steal, ours = (end[i] - self.start[i] for i in (1, 2, 3))
        return {"seconds": round(wall), "others_cores": round(max(0.0, busy - ours) / wall, 2),
                "steal_cores": round(steal / wall, 2), "load_end": round(os.getloadavg()[0], 2)}


def _others_note(r: dict) -> str:
    m = r.get("machine")
    if not m:
        return ""
    return (f" The run took {m['seconds']} s; other processes used {m['others_cores']} of the {r['cores']} cores on "
            f"average meanwhile (steal {m['steal_cores']}).")


def render(r: dict) -> str:
    raw, st = r["raw"], r["stateless"]
    lines = [
        f"Measured {r['date']} on {r['cores']} cores ({r.get('cpu', '?')}), {r['images']:,} MNIST PNGs, worker "
        f"concurrency {r['concurrency']} (`.venv/bin/python scripts/benchmark.py`).{_others_note(r)}",
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
        f"| (b) | the limit: the same script with our runtime (pyspng, ONNX Runtime x 512, 2 threads, CSV) | "
        f"{r['limit']:,} images/s | |",
        f"| (c) | pipeline: `digitq scan --wait`, Redis, warm workers, to the CSV | {r['pipeline']:,} images/s "
        f"(accuracy {r['pipeline_accuracy']:.2%}) | |",
        f"| (c) | pipeline with stateless workers: a private data dir, the same concurrency, results handed in "
        f"through Redis to a collector (`-Q collect.<id> -c 1`) on the same cores | {st['pipeline']:,} images/s "
        f"(accuracy {st['pipeline_accuracy']:.2%}), **{st['ratio']:.2f}x** the shared-dir figure (medians of "
        f"{ROUNDS} alternating runs: {st.get('digits_median_ratio', 0):.2f}x) | >= 0.90x |",
        f"| (c)/(b) | pipeline vs the plain script | **{r['ratio_plain']}x** | >= 1.5x (aim 2x) |",
        f"| (c)/(b) | pipeline vs the limit | **{r['ratio_limit']}x** | >= 1.0x (aim 1.3x) |",
        f"| (c)/(a) | pipeline vs the fastest raw inference | {r['ratio_raw']}x | |",
        f"| (d) | producer enqueue (`digitq scan`, no worker; best of 3) | {r['enqueue_per_s']:,} files/s "
        "| >= 20,000 |",
        f"| (e) | worker start to first prediction | {r['worker_ready_s']} s | <= 3 s |",
        f"| (f) | worker RSS, peak per pool process (parent) | {r['worker_rss_mb']} MB "
        f"({r['worker_parent_rss_mb']} MB) | <= 300 MB |",
        f"| (g) | 12-megapixel phone photos through the pipeline | {r['photos_per_s']} photos/s "
        f"(accuracy {r['photo_accuracy']:.0%} of {r['photos']}) | >= 40 |",
        f"| (g) | the same photos, stateless workers | {st['photos_per_s']} photos/s (accuracy "
        f"{st['photo_accuracy']:.0%}), {st['photo_ratio']:.2f}x the shared-dir figure (medians: "
        f"{st.get('photos_median_ratio', 0):.2f}x) | |",
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
    if r.get("cost"):
        lines += ["", render_cost(r)]
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


def render_cost(r: dict) -> str:
    """The cost model's table: what the benchmark's own Redis paid per image in each run above."""
    lines = [
        "What one Redis paid per image in the pipeline runs above (`INFO` deltas around each `scan --wait`, "
        f"the benchmark's own probe taken out, mean of the {ROUNDS} runs of each; the producer's polling included). "
        "Redis CPU is net of what the same Redis used idle with the same workers connected, per second of the "
        "run (gross in brackets); CPU seconds of each process per 1,000 images last:", "",
        "| images | workers | rate here | Redis commands / image (most frequent) | bytes in / out per image "
        "| Redis CPU s / 1,000 | Redis peak rise | CPU s / 1,000: producer, predicting workers, collector |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, c in r["cost"].items():
        workload, mode = key.split("/")
        what = f"{r['images']:,} MNIST PNGs" if workload == "digits" else f"{r['photos']} 12 MP photos"
        top = ", ".join(f"{name} {n:g}" for name, n in c["top_commands"].items())
        cpu = c["cpu_s_per_1000"]
        predict = cpu.get("workers", cpu.get("predictor"))
        lines.append(f"| {what} | {mode} | {c['host_rate_measured']:,g}/s | {c['commands_per_image']:g} ({top}) | "
                     f"{_bytes(c['bytes_in_per_image'])} / {_bytes(c['bytes_out_per_image'])} | "
                     f"{c['redis_cpu_s_per_1000']:.3g} ({c['redis_cpu_s_per_1000_gross']:.3g}) | "
                     f"{c['redis_memory_rise_mb']} MB | {cpu['producer']:.2f}, "
                     f"{predict:.2f}, {cpu.get('collector', 0):.2f} |")
    lines += ["", "Toward 100 hosts, from those figures: one Redis core saturates at 1 / (its CPU seconds per image); "
              "hosts like this one (producer, Redis and workers on its cores) at the rate measured here, and "
              "worker-only hosts at the rate the predicting workers' own CPU allows on "
              f"{r['cores']} cores:", "",
              "| images | workers | one Redis core saturates at | hosts at the rate here | worker-only hosts "
              "(rate each) | Redis traffic at saturation | a collector core commits |",
              "|---|---|---|---|---|---|---|"]
    for key, c in r["cost"].items():
        workload, mode = key.split("/")
        per_core = c["collector_images_per_core_s"]
        collector = f"{per_core:,} images/s" if per_core else "(in the workers)"
        digits = 0 if workload == "digits" else 1
        lines.append(f"| {workload} | {mode} | {c['redis_core_images_per_s']:,} images/s | {c['hosts_measured']:g} | "
                     f"{c['hosts_worker_cpu']:g} ({c['host_rate_worker_cpu']:,.{digits}f}/s) | "
                     f"{c['mb_per_s_at_saturation']:,} MB/s | {collector} |")
    return "\n".join(lines)


def _bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n:.0f} B"


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
