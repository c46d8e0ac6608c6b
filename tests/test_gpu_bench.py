"""The one device check, as it will run on a GPU machine, in its CPU smoke mode: never broken
when a GPU is at hand. ``benchmarks/prepare_gpu.sh`` builds the shards it carries (here from the
embedded kowiki-format sample), ``benchmarks/gpu.sh --smoke`` runs every variant on them (naive
HF loop, our step padded and padding-free, eager and compiled, same data)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

pytestmark = pytest.mark.slow

SAMPLE = ROOT / "pipeline" / "sample" / "kowiki-sample-pages-articles-multistream.xml.bz2"
VARIANTS = {"naive", "ours", "padfree", "compiled", "padfree-compiled"}


def test_prepare_then_smoke_runs_every_variant(tmp_path):
    env = child_env(PYTHON=sys.executable, OUT=str(tmp_path / "out"))
    prep = subprocess.run(["bash", ROOT / "benchmarks" / "prepare_gpu.sh", SAMPLE, tmp_path / "bench"], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env=env)
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert (tmp_path / "bench" / "shards" / "manifest.json").exists() and "ready" in prep.stdout
    proc = subprocess.run(["bash", ROOT / "benchmarks" / "gpu.sh", "--smoke", "--data", tmp_path / "bench" / "shards"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {m.group(1): m for m in re.finditer(r"^([a-z-]+)\s+([\d,]+)\s+([\d.]+)x\s+\S+\s+([\d,]+)\s+([\d.]+)\s*$",
                                                proc.stdout, re.M)}
    assert set(rows) == VARIANTS, proc.stdout
    for m in rows.values():
        assert int(m.group(2).replace(",", "")) > 0 and 0 < float(m.group(5)) < 20
    assert "padfree-compiled" in (tmp_path / "out" / "gpu.log").read_text()


def test_device_run_fails_fast_in_one_line_without_its_shards(tmp_path):
    proc = subprocess.run(["bash", ROOT / "benchmarks" / "gpu.sh", "--data", tmp_path / "absent"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=child_env(PYTHON=sys.executable))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "gpu.sh: no shards: run benchmarks/prepare_gpu.sh here and carry .bench/shards"], proc.stderr
