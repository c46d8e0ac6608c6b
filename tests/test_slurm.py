"""The README's cluster lines, run verbatim on a real (throwaway, single-machine) SLURM cluster.

As a user runs them: from a directory outside the repository (which is cloned into it as
``kowiki-bert/``), with relative paths, official file names, the venv activated and nothing else
set. sbatch runs a copy of each script from the node's spool directory, as on any cluster.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipeline.corpus import load_documents
from pipeline.sample.build import DUMP, REVIEWS_EVAL, REVIEWS_TRAIN
from tests.conftest import ROOT
from tests.slurm_cluster import LocalCluster, ensure_installed

pytestmark = pytest.mark.slow
TINY = ["--model-size", "tiny", "--global-batch-size", "16", "--micro-batch-size", "8", "--eval.every", "0",
        "--eval.batches", "1", "--train.num_workers", "0"]


def cluster_lines() -> list[str]:
    """The shell lines of the README's "On your cluster" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On your cluster"):text.index("## The stages")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [" ".join(line.split()) for block in blocks for line in block.splitlines() if line.strip()]


def readme_line(start: str) -> str:
    found = [line for line in cluster_lines() if line.startswith(start)]
    assert len(found) == 1, f"the README has {len(found)} lines starting with {start!r}"
    return found[0]


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


@pytest.fixture
def user(cluster, tmp_path):
    """(directory, environment) of a user on the login node: the repository cloned into the
    directory, the official files beside it, its venv activated (README steps 1-2)."""
    (tmp_path / "kowiki-bert").symlink_to(ROOT)
    shutil.copy(DUMP, tmp_path / "kowiki-latest-pages-articles-multistream.xml.bz2")
    (tmp_path / "nsmc").mkdir()
    shutil.copy(REVIEWS_TRAIN, tmp_path / "nsmc" / "ratings_train.txt")
    shutil.copy(REVIEWS_EVAL, tmp_path / "nsmc" / "ratings_test.txt")
    keep = {k: v for k, v in cluster.env.items() if not k.startswith(("KOWIKI_", "ACCELERATE_", "PYTEST_"))}
    env = dict(keep, PATH=f"{Path(sys.prefix) / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=sys.prefix)
    return tmp_path, env


def shell(line: str, user, **env) -> subprocess.CompletedProcess:
    cwd, user_env = user
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=dict(user_env, **env), capture_output=True, text=True,
                          timeout=180)


def submitted(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return re.search(r"Submitted batch job (\d+)", proc.stdout).group(1)


def logs(folder: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()}" for p in sorted(folder.glob("*.out")))[-6000:]


def test_plain_sbatch_of_a_stage(cluster, user):
    line = readme_line("sbatch --array=0-7 kowiki-bert/slurm/extract.sbatch")
    job = submitted(shell(line, user))
    for task in range(8):
        info = cluster.wait(f"{job}_{task}", timeout=300)
        assert info["JobState"] == "COMPLETED", logs(user[0])
    corpus = user[0] / "work" / "corpus"
    assert len(load_documents(corpus)) == 20
    assert "restart 0" in (user[0] / f"kowiki-extract-{job}_0.out").read_text()


def test_submit_chain_from_the_readme(cluster, user):
    proc = shell(readme_line("kowiki-bert/slurm/submit.sh kowiki-bert/pipeline/sample/"), user)
    assert proc.returncode == 0, proc.stderr
    ids = dict(re.findall(r"(extract|tokenizer|shard|pretrain|finetune) (\d+)", proc.stdout))
    assert set(ids) == {"extract", "tokenizer", "shard", "pretrain", "finetune"}, proc.stdout
    work = user[0] / "check"
    info = cluster.wait(ids["finetune"], timeout=900)
    assert info["JobState"] == "COMPLETED", logs(work / "logs")
    metrics = json.loads((work / "finetune" / "metrics.json").read_text())
    assert "accuracy" in metrics and (work / "pretrain" / "model" / "model.safetensors").exists()
    assert "ratings_test.txt" in (work / "finetune" / "report.md").read_text()


def test_submit_refuses_bad_input_before_queueing(cluster, user):
    before = subprocess.run(["squeue", "-h"], env=user[1], capture_output=True, text=True).stdout
    usage = shell("kowiki-bert/slurm/submit.sh", user)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: slurm/submit.sh DUMP WORK_DIR")
    (user[0] / "empty").mkdir()
    line = readme_line("kowiki-bert/slurm/submit.sh kowiki-bert/pipeline/sample/")
    for bad, says in ((line.replace("--nsmc-dir nsmc", "--nsmc-dir empty"), "--nsmc-dir empty has no ratings_train.txt"),
                      (line.replace("kowiki-bert/pipeline/sample/kowiki-sample", "kowiki-sampel"), "the dump kowiki-sampel"),
                      (line + " --train.micro_batch_size 3", "is not a multiple")):
        proc = shell(bad, user)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("submit.sh: error:"), proc.stderr
    assert subprocess.run(["squeue", "-h"], env=user[1], capture_output=True, text=True).stdout == before


def deepspeed_line(zero: int, out: str, steps: int) -> str:
    """The README's DeepSpeed line on this GPU-less cluster: no --gpus-per-node (one CPU rank per
    node), the tiny model instead of BERT-base."""
    line = readme_line("ACCELERATE_CONFIG=kowiki-bert/accelerate_configs/deepspeed_zero3.yaml sbatch")
    line = line.replace("deepspeed_zero3.yaml", f"deepspeed_zero{zero}.yaml").replace(" --gpus-per-node=8", "")
    line = line.replace("work/pretrain --config kowiki-bert/pipeline/configs/pretrain_base.yaml",
                        f"{out} --max-steps {steps} --save-every 1000 --train.log_every 1 " + shlex.join(TINY))
    return line.replace("sbatch ", f"sbatch --time=10 --output={out}.out ", 1)


@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_on_two_nodes_requeues_and_resumes_bit_identical(cluster, user, sample_data, zero):
    cwd = user[0]
    (cwd / "work").mkdir()
    (cwd / "work" / "shards").symlink_to(sample_data["shards"])
    steps = 60
    job = submitted(shell(deepspeed_line(zero, "work/preempted", steps), user, MAIN_PORT="29611"))
    log, train_log = cwd / "work" / "preempted.out", cwd / "work" / "preempted" / "train_log.jsonl"
    t0 = time.time()
    while not train_log.exists() or len(train_log.read_text().splitlines()) < 5:
        assert time.time() - t0 < 300 and cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), \
            log.read_text()[-3000:] if log.exists() else cluster.job(job)
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=user[1], check=True)
    info = cluster.wait(job, timeout=600)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, text[-4000:]
    assert "USR1: asking the ranks to checkpoint" in text and "requeueing" in text and "restart 1" in text
    stopped = re.search(r"resumed from \S+/step-(\d+)", text)
    assert stopped and 0 < int(stopped.group(1)) < steps, text[-4000:]
    run = json.loads((cwd / "work" / "preempted" / "run_info.json").read_text())
    assert (run["world_size"], run["distributed_type"], run["deepspeed_stage"]) == (2, "DEEPSPEED", zero)

    straight = submitted(shell(deepspeed_line(zero, "work/straight", steps), user, MAIN_PORT="29612"))
    assert cluster.wait(straight, timeout=600)["JobState"] == "COMPLETED", (cwd / "work" / "straight.out").read_text()[-4000:]
    a = load_file(cwd / "work" / "preempted" / "model" / "model.safetensors")
    b = load_file(cwd / "work" / "straight" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def pretrain_job(cluster, user, data, out, *args, nodes=1, **env) -> tuple[str, Path]:
    log = user[0] / "job.out"
    line = shlex.join(["sbatch", "--time=10", f"--nodes={nodes}", f"--output={log}", "kowiki-bert/slurm/pretrain.sbatch", str(data),
                       str(out), *map(str, args), *TINY, "--checkpoint.export_hf", "false"])
    return submitted(shell(line, user, **env)), log


def failed_without_requeue(cluster, job: str, log: Path) -> str:
    info = cluster.wait(job, timeout=300)
    text = log.read_text()
    assert info["JobState"] == "FAILED" and int(info.get("Restarts", 0)) == 0, text[-3000:]
    return text


@pytest.mark.parametrize("stale", ["preempted", "finished"])
def test_start_up_failure_after_a_stale_status_fails_the_job(cluster, user, stale):
    # status.json left by an earlier attempt (preempted, or a finished run); this attempt
    # fails at start-up: the job must fail, neither requeue forever nor report success. A start
    # refused before training (here a wrong --data) writes nothing into the run: the status stays
    # the earlier attempt's, whose stamp tells the script it is not this attempt's.
    out = user[0] / "pretrain"
    out.mkdir()
    stale_status = json.dumps({"state": stale, "step": 5, "attempt": "0.0"})  # SLURM job ids start at 1
    (out / "status.json").write_text(stale_status)
    job, log = pretrain_job(cluster, user, "no-such-shards", "pretrain")
    text = failed_without_requeue(cluster, job, log)
    # the rank's one-line refusal is the job's last line, and its exit code the job's
    last = text.strip().splitlines()[-1]
    assert "training failed; not requeueing: error: " in last and "no such directory" in last, text[-3000:]
    assert cluster.job(job)["ExitCode"] == "2:0"
    assert (out / "status.json").read_text() == stale_status


def test_a_signal_during_start_up_is_not_lost_and_requeues_are_capped(cluster, user, sample_data):
    out = user[0] / "pretrain"
    job, log = pretrain_job(cluster, user, sample_data["shards"], "pretrain", "--max-steps", "100000",
                            "--save-every", "100000", MAX_REQUEUES="0")
    t0 = time.time()
    while not log.exists() or "pretrain on 1 node(s)" not in log.read_text():
        assert time.time() - t0 < 300, f"never started: {cluster.job(job)}"
        time.sleep(0.2)
    # Preempted while the ranks are still starting (they inherit USR1 ignored until their handler exists)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=user[1], check=True)
    text = failed_without_requeue(cluster, job, log)
    assert "not requeueing: already requeued 0 times (MAX_REQUEUES=0)" in text
    assert json.loads((out / "status.json").read_text())["state"] == "preempted"


def test_two_node_ddp_job_trains_two_ranks_together(cluster, user, sample_data):
    job, log = pretrain_job(cluster, user, sample_data["shards"], "two-nodes", "--max-steps", "6", "--save-every", "3",
                            nodes=2, MAIN_PORT="29613")
    info = cluster.wait(job, timeout=600)
    assert info["JobState"] == "COMPLETED", log.read_text()[-3000:]
    run = json.loads((user[0] / "two-nodes" / "run_info.json").read_text())
    assert (run["world_size"], run["distributed_type"]) == (2, "MULTI_CPU")
