"""A small progress bar on stderr: count / total, rate and ETA. Silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """``with Progress(total, "scanning") as bar: bar.update(n)``; ``n`` is the absolute count."""

    def __init__(self, total: int, label: str, unit: str = "img", enabled: bool | None = None, stream=None,
                 show_rate: bool = True):
        self.total = total
        self.show_rate = show_rate
        self.detail = ""  # free text after the bar, e.g. the latest loss
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.count = 0
        self._base: int | None = None  # first count seen: work done before we started watching
        self.started = time.monotonic()
        self._drawn = 0.0

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = (self.count - (self._base or 0)) / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, self.count / self.total)
            bar = "#" * int(frac * 24)
            eta = _clock((self.total - self.count) / rate) if rate > 0 else "?"
            speed = f"{rate:,.0f} {self.unit}/s " if self.show_rate else ""
            line = f"{self.label} [{bar:<24}] {self.count}/{self.total} {frac:4.0%} {speed}ETA {eta}"
        else:
            line = f"{self.label} {self.count} {self.unit} {rate:,.0f} {self.unit}/s"
        return f"{line} {self.detail}" if self.detail else line

    def update(self, count: int) -> None:
        if self._base is None:
            self._base, self.started = count, time.monotonic()
        self.count = count
        now = time.monotonic()
        # An unknown total (0) is never reached: redraw ten times a second, not once a file.
        if self.enabled and (now - self._drawn > 0.1 or 0 < self.total <= count):
            self._drawn = now
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K" + self.line() + "\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
