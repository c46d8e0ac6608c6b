"""Exact resume: kill -9, SIGUSR1/SIGTERM, damaged checkpoints, the LR schedule, elastic world sizes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.pretrain import EXIT_PREEMPTED
from tests.conftest import ROOT, child_env, cli, launch
from tests.tb import scalars

STEPS = 12


def args(data, out, *extra):
    return ["pretrain", "--data", data, "--output", out, "--max-steps", STEPS, "--save-every", 3,
            "--model-size", "tiny", "--global-batch-size", 16, "--micro-batch-size", 8, "--lr", "1e-3",
            "--eval.every", 0, "--eval.batches", 1, "--train.log_every", 1, "--checkpoint.export_hf", "false",
            "--checkpoint.keep_last", 2, *extra]


def start(argv, new_session: bool = False, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, argv)], cwd=ROOT, env=env or child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=new_session)


def wait_for(path: Path, timeout=300):
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            raise TimeoutError(path)
        time.sleep(0.05)


def weights(out: Path) -> bytes:
    return (out / "model" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    cli(*args(sample_data["shards"], out))
    return out


def test_kill_9_at_several_points_resumes_bit_identically(sample_data, reference, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(0)
    for step in (3, 6, 9):
        proc = start(args(sample_data["shards"], out))
        wait_for(out / "checkpoints" / f"step-{step:08d}" / "COMPLETE")
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere inside the next steps or the next save
        proc.kill()
        proc.wait()
    finish = cli(*args(sample_data["shards"], out))
    assert "resumed from" in finish.stderr
    assert weights(out) == weights(reference), "resumed weights differ from the uninterrupted run"
    ref, got = scalars(reference / "tensorboard"), scalars(out / "tensorboard")
    assert got["optim/lr"] == ref["optim/lr"], "the LR schedule after resume differs"
    assert [s for s, _ in got["loss/total"]] == list(range(1, STEPS + 1))
    assert got["loss/total"] == ref["loss/total"]


@pytest.mark.parametrize("sig,group", [(signal.SIGUSR1, False), (signal.SIGTERM, False), (signal.SIGTERM, True)])
def test_signal_checkpoints_exits_and_resumes_exactly(sample_data, reference, tmp_path, sig, group):
    out = tmp_path / "signalled"
    proc = start(args(sample_data["shards"], out, "--train.num_workers", 1), new_session=group)
    wait_for(out / "checkpoints" / "step-00000003" / "COMPLETE")  # training is under way
    if group:  # as SLURM and `kill -- -PGID` do: the data-loading worker gets it too
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "preempted" and 0 < status["step"] < STEPS
    assert (out / "checkpoints" / f"step-{status['step']:08d}" / "COMPLETE").exists()
    cli(*args(sample_data["shards"], out))
    assert weights(out) == weights(reference)


def test_damaged_checkpoint_falls_back_to_previous(sample_data, reference, tmp_path):
    out = tmp_path / "damaged"
    proc = start(args(sample_data["shards"], out))
    wait_for(out / "checkpoints" / "step-00000009" / "COMPLETE")
    proc.kill()
    proc.wait()
    model = out / "checkpoints" / "step-00000009" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])  # truncated on disk
    finish = cli(*args(sample_data["shards"], out))
    assert "step-00000009 is damaged" in finish.stderr and "falling back" in finish.stderr
    assert "resumed from" in finish.stderr and "step-00000006" in finish.stderr
    assert weights(out) == weights(reference)


def test_resume_never_and_explicit_path(sample_data, reference, tmp_path):
    out = tmp_path / "explicit"
    explicit = reference / "checkpoints" / "step-00000009"
    if not explicit.exists():  # keep_last 2 left 9 and 12
        pytest.fail("expected checkpoint missing")
    done = cli(*args(sample_data["shards"], out, "--resume", explicit))
    assert "resumed from" in done.stderr and weights(out) == weights(reference)
    fresh = cli(*args(sample_data["shards"], reference, "--resume", "never", "--max-steps", 1, "--output", tmp_path / "n"))
    assert "resumed" not in fresh.stderr


@pytest.mark.parametrize("first,second", [(1, 2), (2, 1)])
def test_elastic_resume_changes_world_size(sample_data, tmp_path, first, second):
    out = tmp_path / f"elastic-{first}-{second}"

    def run_with(procs, steps):
        stage = args(sample_data["shards"], out, "--max-steps", steps, "--save-every", 2)[1:]
        if procs == 1:
            return cli("pretrain", *stage)
        return launch(["--multi_gpu", "--num_processes", procs], stage, env=child_env(ACCELERATE_USE_CPU="true"))

    run_with(first, 4)
    assert json.loads((out / "run_info.json").read_text())["world_size"] == first
    second_run = run_with(second, 8)
    assert "resumed from" in second_run.stderr and "at step 4" in second_run.stderr
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == second and json.loads((out / "status.json").read_text())["step"] == 8
    state = json.loads((out / "checkpoints" / "step-00000008" / "state.json").read_text())
    assert state["tokens_seen"] > 0 and state["world_size"] == second
