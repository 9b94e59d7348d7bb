"""Where the pipeline's CPU goes, per image: a sampling profile (py-spy) of both sides of `digitq scan --wait`.

    .venv/bin/python -m pip install py-spy        # once (not part of digitq)
    .venv/bin/python scripts/profile.py            # 20,000 MNIST PNGs, one shared-dir worker (-c 2)

It starts a private redis-server and a warm worker (as scripts/benchmark.py does), runs the scan
once unprofiled (the rate), then once with py-spy sampling the producer and every worker process
(idle threads excluded), and sorts every sample into one of the budget's stages by the innermost
frame that names one: walk, read, hash, encode (base64, JSON, the message), Redis (redis-py's
socket I/O), Celery and kombu (their own Python, the prefork pool's hand-off included), task (our
own Python around them), decode, inference, commit (the worker's results; the producer's
manifest), merge, follow (the producer's `--wait` polling), start-up (imports), other. The samples
share out each side's CPU seconds in the unprofiled run; Redis's own CPU comes from INFO around that
run. Printed as a Markdown table, JSON last.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import DIGITQ, ROOT, Mode, _cpu, compile_checkout, make_digits  # noqa: E402

RATE = 250  # samples per second per thread: more slows the run being measured
#: The stages, in the order a frame is tested against them (the first that matches the innermost
#: matching frame wins); each a regex over "function (file:line)".
STAGES = [
    ("inference", r"onnxruntime|tensorflow|keras|serving/runtime\.py"),
    ("decode", r"serving/(preprocess|cleaning|artifacts)\.py|PIL/|pyspng|numpy/"),
    ("hash", r"hashlib|digest|blake2"),
    ("merge", r"finalize|merge|csvfile\.py"),
    ("read", r"read_bytes|\bread \(|producer/senders\.py|disk/files\.py"),
    ("commit", r"digitq/batch/(commit|ledger)\.py|digitq/disk/"),
    ("encode", r"base64|json/|msgpack|batch/message\.py|kombu/serialization|binascii"),
    ("walk", r"catalog\.py|producer/scan\.py|scandir|walk \(|os\.py"),
    ("follow", r"producer/follow\.py|producer/progress\.py"),
    ("Redis", r"redis/"),
    ("task (own Python)", r"worker/|digitq/batch/|producer/dispatch\.py"),
    ("Celery, kombu", r"kombu/|celery/|billiard/|vine/|amqp/"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in STAGES]


def stage_of(frames: list[str]) -> str:
    """The stage of one stack (outermost frame first): that of its innermost frame that names one; start-up
    (imports: a fixed cost of each process, not of an image) wherever a module is being imported."""
    if any(frame.startswith("_find_and_load") for frame in frames):
        return "start-up"
    for frame in reversed(frames):
        for name, pattern in COMPILED:
            if pattern.search(frame):
                return name
    return "other"


def budget(raw: Path, images: int) -> dict[str, float]:
    """CPU microseconds per image by stage, from py-spy's raw (collapsed) output sampled at ``RATE``."""
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[stage_of(stack.split(";"))] += int(n)
    return {stage: round(n / RATE / images * 1e6, 1) for stage, n in counts.most_common()}


def scale(shares: dict[str, float], total: float) -> dict[str, float]:
    """``shares`` (any unit) rescaled to sum to ``total``."""
    whole = sum(shares.values()) or 1.0
    return {stage: round(v * total / whole, 1) for stage, v in shares.items()}


def _spy(*args: str) -> list[str]:
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if not spy:
        raise click.ClickException("py-spy is not installed: `.venv/bin/python -m pip install py-spy`, then again")
    return [spy, "record", "--rate", str(RATE), "--nonblocking", "--subprocesses", "--format", "raw", *args]


@click.command()
@click.option("--images", default=20_000, show_default=True, help="MNIST PNGs.")
@click.option("--concurrency", default=2, show_default=True, help="Predicting worker processes.")
@click.option("--data", envvar="DIGITQ_MNIST", default=str(ROOT.parent / "shared" / "mnist"), show_default=True)
@click.option("--keep", type=click.Path(file_okay=False), help="Copy py-spy's raw stacks here (producer.txt, "
              "worker.txt), to read the samples themselves.")
def main(images: int, concurrency: int, data: str, keep: str | None) -> None:
    """Profile one `digitq scan --wait` of IMAGES PNGs: CPU per image by stage, producer and workers."""
    from digitq.bus.server import RedisServer

    compile_checkout()
    with tempfile.TemporaryDirectory(prefix="digitq-profile-") as tmp, RedisServer() as redis:
        tmp = Path(tmp)
        make_digits(tmp / "digits", images, data)
        make_digits(tmp / "warmup", 64, data)
        mode = Mode("shared", redis.url, tmp, {**os.environ, "DIGITQ_MNIST": data}, concurrency)
        try:
            mode.start(tmp / "warmup")
            plain = mode.scan(tmp / "digits")
            worker = mode.roles["workers"].proc.pid
            spy = subprocess.Popen(_spy("--pid", str(worker), "-o", str(tmp / "worker.txt")),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached
            started = time.perf_counter()
            subprocess.run([*_spy("-o", str(tmp / "producer.txt"), "--"), *DIGITQ, "scan",
                            str(tmp / "digits"), "--wait", "--json"], env=mode.env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            profiled_s = time.perf_counter() - started
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            sampled = {"producer": budget(tmp / "producer.txt", images),
                       "workers": budget(tmp / "worker.txt", images)}
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                for name in ("producer.txt", "worker.txt"):
                    shutil.copy(tmp / name, Path(keep) / name)
        finally:
            mode.stop()
    # py-spy's sampling slows what it samples, and a sample counts wall time on a contended core: the
    # samples give each stage's share of a side, the unprofiled run's CPU seconds give the side's total.
    measured = {side: plain["cpu"][side] / images * 1e6 for side in sampled}
    result = {"cpu": _cpu(), "images": images, "concurrency": concurrency,
              "rate": round(images / plain["seconds"]), "profiled_rate": round(images / profiled_s),
              "redis_us": round(plain["cpu_s"] / images * 1e6, 1),
              "sampled_us": {side: round(sum(b.values()), 1) for side, b in sampled.items()},
              "budget": {side: scale(b, measured[side]) for side, b in sampled.items()}}
    print(render(result))
    print(json.dumps(result))


def render(r: dict) -> str:
    """The budget as Markdown: one row per stage, a column per side, the three largest costs named."""
    stages = list(dict.fromkeys(name for name, _ in STAGES)) + ["start-up", "other"]
    totals = {side: sum(b.values()) for side, b in r["budget"].items()}
    lines = [f"CPU per image by stage, µs ({r['cpu']}; {r['images']:,} MNIST PNGs, `scan --wait`, one worker "
             f"-c {r['concurrency']}; {r['rate']:,} images/s unprofiled, {r['profiled_rate']:,} under py-spy). "
             f"Each side's total is its CPU time in the unprofiled run, shared out as py-spy's samples were "
             f"(they summed to {r['sampled_us']['producer']:g} and {r['sampled_us']['workers']:g} µs):", "",
             "| stage | producer | workers | total |", "|---|---|---|---|"]
    both = {s: sum(b.get(s, 0.0) for b in r["budget"].values()) for s in stages}
    for s in sorted(stages, key=lambda s: -both[s]):
        if both[s]:
            p, w = r["budget"]["producer"].get(s, 0.0), r["budget"]["workers"].get(s, 0.0)
            lines.append(f"| {s} | {p:g} | {w:g} | {both[s]:.1f} |")
    lines.append(f"| Redis server (INFO) | | | {r['redis_us']:g} |")
    lines.append(f"| **all** | {totals['producer']:.1f} | {totals['workers']:.1f} | "
                 f"**{sum(totals.values()) + r['redis_us']:.1f}** |")
    top = sorted(stages, key=lambda s: -both[s])[:3]
    lines += ["", "Largest: " + ", ".join(f"{s} ({both[s]:.0f} µs)" for s in top) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
