"""Progress that reads well in both places users look: a tqdm bar on a terminal, and plain
lines (rate, ETA) every ``every`` seconds when stderr is a file, as in a SLURM ``.out`` log,
where tqdm would switch itself off and leave the log silent."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def elapsed(seconds: float) -> str:
    """A measured time, sub-second ones included (``0.23s``, ``56s``)."""
    return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.0f}s"


class Progress:
    def __init__(self, stage: str, unit: str, total: int | None = None, every: float = 30.0):
        self.stage, self.unit, self.total, self.every = stage, unit, total, every
        self.lines = not sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=stage, unit=f" {unit}", disable=self.lines, file=sys.stderr)
        self.done, self.t0, self.shown = 0, time.time(), time.time()

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        if self.lines and time.time() - self.shown >= self.every:
            self.line()

    def line(self) -> None:
        self.shown = time.time()
        rate = self.done / max(self.shown - self.t0, 1e-9)
        of = f"/{self.total:,}" if self.total else ""
        eta = f", ETA {duration((self.total - self.done) / rate)}" if self.total and rate else ""
        print(f"{self.stage}: {self.done:,}{of} {self.unit} ({rate:,.0f} {self.unit}/s{eta})", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
        if self.lines and self.done:
            self.line()
