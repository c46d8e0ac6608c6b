"""``benchmarks/gpu.sh --smoke``: the device check's code paths on CPU, so it is never broken
when a GPU machine is at hand (naive HF loop, our step eager and compiled, same data)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

pytestmark = pytest.mark.slow


def test_gpu_benchmark_smoke_runs_every_variant():
    proc = subprocess.run(["bash", ROOT / "benchmarks" / "gpu.sh", "--smoke"], capture_output=True, text=True,
                          timeout=900, cwd=ROOT, env=child_env(PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {m.group(1): m for m in re.finditer(r"^(naive|ours|compiled)\s+([\d,]+)\s+([\d.]+)x\s+\S+\s+([\d,]+)\s+([\d.]+)\s*$",
                                                proc.stdout, re.M)}
    assert set(rows) == {"naive", "ours", "compiled"}, proc.stdout
    for m in rows.values():
        assert int(m.group(2).replace(",", "")) > 0 and 0 < float(m.group(5)) < 20
