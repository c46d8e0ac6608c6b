"""The shipped SLURM scripts, submitted to a real (throwaway, single-machine) SLURM cluster."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.corpus import load_documents
from pipeline.sample.build import DUMP, REVIEWS_EVAL, REVIEWS_TRAIN
from tests.conftest import ROOT
from tests.slurm_cluster import LocalCluster, ensure_installed

pytestmark = pytest.mark.slow
JOB_ENV = {"KOWIKI_REPO": str(ROOT), "KOWIKI_VENV": sys.prefix, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TINY = ["--model-size", "tiny", "--global-batch-size", "16", "--micro-batch-size", "8", "--eval.every", "0",
        "--eval.batches", "1", "--train.num_workers", "0", "--checkpoint.export_hf", "false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = ensure_installed()
    if why:
        pytest.skip(why)
    c = LocalCluster(tmp_path_factory.mktemp("slurm"), nodes=2)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_extract_as_array_job(cluster, tmp_path):
    job = cluster.sbatch("--array=0-1", "--cpus-per-task=1", "--mem=1", "--output", tmp_path / "%x-%A_%a.out",
                         ROOT / "slurm" / "extract.sbatch", DUMP, tmp_path / "corpus", "--pages-per-shard", "5", env=JOB_ENV)
    for task in (0, 1):
        assert cluster.wait(f"{job}_{task}", timeout=300)["JobState"] == "COMPLETED"
    assert len(load_documents(tmp_path / "corpus")) == 20
    log = (tmp_path / f"kowiki-extract-{job}_0.out").read_text()
    assert "restart 0" in log


def test_pretrain_usr1_checkpoint_requeue_resume(cluster, sample_data, tmp_path):
    out = tmp_path / "pretrain"
    log = tmp_path / "pretrain.out"
    # 1-minute limit, USR1 45 s before it: the first run is signalled long before it can finish.
    job = cluster.sbatch("--time=1", "--signal=B:USR1@45", "--nodes=1", "--output", log,
                         ROOT / "slurm" / "pretrain.sbatch", sample_data["shards"], out, "--max-steps", "600",
                         "--save-every", "1000", *TINY, env=dict(JOB_ENV, GPUS_PER_NODE="1"))
    t0 = time.time()
    while int(cluster.job(job).get("Restarts", 0)) < 1:
        assert time.time() - t0 < 300, f"never requeued: {cluster.job(job)}\n{log.read_text() if log.exists() else ''}"
        time.sleep(1)
    preempted = json.loads((out / "status.json").read_text())
    assert preempted["state"] == "preempted" and 0 < preempted["step"] < 600
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], env=cluster.env, check=True)
    info = cluster.wait(job, timeout=900)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert "USR1: asking the ranks to checkpoint" in text and "requeueing" in text and "restart 1" in text
    assert f"resumed from {out}/checkpoints/step-{preempted['step']:08d}" in text
    status = json.loads((out / "status.json").read_text())
    assert (status["state"], status["step"], status["attempt"]) == ("finished", 600, f"{job}.1")


def pretrain_job(cluster, tmp_path, data, out, *args, **env) -> tuple[str, Path]:
    log = tmp_path / "job.out"
    job = cluster.sbatch("--time=10", "--nodes=1", "--output", log, ROOT / "slurm" / "pretrain.sbatch", data, out,
                         *args, *TINY, env=dict(JOB_ENV, GPUS_PER_NODE="1", **env))
    return job, log


def failed_without_requeue(cluster, job: str, log: Path) -> str:
    info = cluster.wait(job, timeout=300)
    text = log.read_text()
    assert info["JobState"] == "FAILED" and int(info.get("Restarts", 0)) == 0, text[-3000:]
    return text


@pytest.mark.parametrize("stale", ["preempted", "finished"])
def test_start_up_failure_after_a_stale_status_fails_the_job(cluster, tmp_path, stale):
    # status.json left by an earlier attempt (preempted, or a finished run); this attempt
    # fails at start-up: the job must fail, neither requeue forever nor report success. A start
    # refused before training (here a wrong --data) writes nothing into the run: the status stays
    # the earlier attempt's, whose stamp tells the script it is not this attempt's.
    out = tmp_path / "pretrain"
    out.mkdir()
    stale_status = json.dumps({"state": stale, "step": 5, "attempt": "0.0"})  # SLURM job ids start at 1
    (out / "status.json").write_text(stale_status)
    text = failed_without_requeue(cluster, *pretrain_job(cluster, tmp_path, tmp_path / "no-such-shards", out))
    assert "no such directory" in text and "training failed; not requeueing" in text
    assert (out / "status.json").read_text() == stale_status


def test_a_signal_during_start_up_is_not_lost_and_requeues_are_capped(cluster, sample_data, tmp_path):
    out = tmp_path / "pretrain"
    job, log = pretrain_job(cluster, tmp_path, sample_data["shards"], out, "--max-steps", "100000",
                            "--save-every", "100000", MAX_REQUEUES="0")
    t0 = time.time()
    while not log.exists() or "pretrain on 1 node(s)" not in log.read_text():
        assert time.time() - t0 < 300, f"never started: {cluster.job(job)}"
        time.sleep(0.2)
    # Preempted while the ranks are still starting (they inherit USR1 ignored until their handler exists)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=cluster.env, check=True)
    text = failed_without_requeue(cluster, job, log)
    assert "not requeueing: already requeued 0 times (MAX_REQUEUES=0)" in text
    assert json.loads((out / "status.json").read_text())["state"] == "preempted"


def test_two_node_job_trains_two_ranks_together(cluster, sample_data, tmp_path):
    out = tmp_path / "two-nodes"
    log = tmp_path / "two.out"
    job = cluster.sbatch("--nodes=2", "--time=10", "--output", log, ROOT / "slurm" / "pretrain.sbatch",
                         sample_data["shards"], out, "--max-steps", "6", "--save-every", "3", *TINY,
                         env=dict(JOB_ENV, GPUS_PER_NODE="1", MAIN_PORT="29611"))
    info = cluster.wait(job, timeout=600)
    assert info["JobState"] == "COMPLETED", log.read_text()[-3000:]
    run = json.loads((out / "run_info.json").read_text())
    assert (run["world_size"], run["distributed_type"]) == (2, "MULTI_CPU")
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


def test_submit_chains_every_stage(cluster, tmp_path):
    nsmc = tmp_path / "nsmc"
    nsmc.mkdir()
    shutil.copy(REVIEWS_TRAIN, nsmc / "ratings_train.tsv")
    shutil.copy(REVIEWS_EVAL, nsmc / "ratings_test.tsv")
    work = tmp_path / "work"
    proc = subprocess.run([ROOT / "slurm" / "submit.sh", DUMP, work, "--cpu", "--array", "2", "--nsmc-dir", nsmc,
                           "--time", "00:20:00", "--sbatch", "--cpus-per-task=1 --mem=1", "--", "--max-steps", "4", *TINY, "--global-batch-size", "8"],
                          env=dict(cluster.env, **JOB_ENV), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = dict(zip(proc.stdout.split()[::2], (i.rstrip(",") for i in proc.stdout.split()[1::2])))
    assert set(ids) == {"extract", "tokenizer", "shard", "pretrain", "finetune"}
    info = cluster.wait(ids["finetune"], timeout=900)
    logs = "\n".join(p.read_text() for p in (work / "logs").glob("*.out"))
    assert info["JobState"] == "COMPLETED", logs[-4000:]
    metrics = json.loads((work / "finetune" / "metrics.json").read_text())
    assert "accuracy" in metrics and (work / "pretrain" / "model" / "model.safetensors").exists()
