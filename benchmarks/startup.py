"""How long ``kowiki-bert STAGE --help`` (and a config error) takes, against the imports it
avoids: the baseline is ``python -c "import torch, transformers, accelerate"`` in the same run.

    python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from measure import ROOT

STAGES = ("extract", "tokenizer", "shard", "pretrain", "finetune", "fill-mask", "run")


def median_seconds(cmd: list, repeat: int, code: int = 0) -> float:
    """Median wall time of ``cmd``, which must exit with ``code``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
        if proc.returncode != code:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}, not {code}: {proc.stderr[-500:]}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    base = median_seconds([py, "-c", "import torch, transformers, accelerate"], args.repeat)
    print(f"baseline: import torch, transformers, accelerate: {base:.2f}s (median of {args.repeat})")
    print("| command | seconds | share of the baseline |\n| --- | --- | --- |")
    for stage in STAGES:
        t = median_seconds([py, "-m", "pipeline.cli", stage, "--help"], args.repeat)
        print(f"| kowiki-bert {stage} --help | {t:.2f} | {t / base:.0%} |")
    t = median_seconds([py, "-m", "pipeline.cli", "pretrain", "--data", "d", "--output", "o", "--optim.lr", "-1"], args.repeat, 2)
    print(f"| kowiki-bert pretrain with a bad --optim.lr (one-line error) | {t:.2f} | {t / base:.0%} |")


if __name__ == "__main__":
    main()
