"""Shared fixtures: real stage runs on tiny inputs, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PYTEST_"))}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def cli(*args, check: bool = True, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``kowiki-bert ARGS`` as a user would, in a child process."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or child_env(), cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"kowiki-bert {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def launch(launch_args: list, stage_args: list, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch LAUNCH_ARGS -m pipeline.pretrain STAGE_ARGS``, for real."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *map(str, launch_args), "-m", "pipeline.pretrain",
           *map(str, stage_args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or child_env(), cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (real Korean data is only in the development checkout)")
    return SHARED


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> dict:
    """corpus, tokenizer and shards made from the embedded sample by the real stages."""
    from pipeline.run import Config, stage_configs
    from pipeline import extract, shard, tokenizer

    out = tmp_path_factory.mktemp("sample")
    configs = stage_configs(Config(output=str(out)))
    for name, module in (("extract", extract), ("tokenizer", tokenizer), ("shard", shard)):
        module.run(configs[name])
    return {"root": out, "corpus": out / "corpus", "tokenizer": out / "tokenizer", "shards": out / "shards"}


PRETRAIN_FAST = ["--model-size", "tiny", "--global-batch-size", "16", "--micro-batch-size", "8",
                 "--eval.every", "0", "--eval.batches", "2", "--train.num_workers", "0", "--lr", "1e-3"]


@pytest.fixture(scope="session")
def tiny_model(sample_data, tmp_path_factory) -> Path:
    """A tiny BERT pretrained for a few steps by ``kowiki-bert pretrain``; returns OUTPUT."""
    out = tmp_path_factory.mktemp("pretrain")
    cli("pretrain", "--data", sample_data["shards"], "--output", out, "--max-steps", 30, "--save-every", 15,
        "--train.log_every", 5, *PRETRAIN_FAST)
    return out
