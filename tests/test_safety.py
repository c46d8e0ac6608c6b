"""Nothing lost, part two: the fine-tune stage under the output rules, one writer per folder,
trackers that cannot kill a run, settings that never change silently on resume, refusals that
write nothing, torn files, consumers that check content, and inputs that end in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from pipeline.pretrain import EXIT_PREEMPTED
from pipeline.sample.build import REVIEWS_EVAL, REVIEWS_TRAIN
from tests.conftest import PRETRAIN_FAST, ROOT, child_env, cli
from tests.test_ecosystem import one_line
from tests.test_resume import start, wait_for

pytestmark = pytest.mark.slow


def pretrain(data, out, steps, *extra):
    return ["pretrain", "--data", data, "--output", out, "--max-steps", steps, "--save-every", 3, "--train.log_every", 3,
            "--checkpoint.export_hf", "false", *PRETRAIN_FAST, *extra]


def finetune(model, out, *extra):
    return ["finetune", "--model", model, "--task", "nsmc", "--train", REVIEWS_TRAIN, "--eval", REVIEWS_EVAL,
            "--output", out, "--epochs", 1, "--lr", "1e-3", *extra]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the fine-tune stage -------------------------------------------------------------------

def test_finetune_output_never_holds_its_model_or_data(tiny_model, tmp_path):
    before = snapshot(tiny_model / "model")
    line = one_line(cli(*finetune(tiny_model / "model", tiny_model), check=False))
    assert "overlaps the input" in line and snapshot(tiny_model / "model") == before
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(REVIEWS_TRAIN, data / "train.tsv")
    proc = cli("finetune", "--model", tiny_model / "model", "--task", "nsmc", "--train", data / "train.tsv",
               "--eval", REVIEWS_EVAL, "--output", data, "--epochs", 1, check=False)
    assert "overlaps the input" in one_line(proc)


def test_finetune_keeps_foreign_files_and_replaces_a_finished_output_only_when_complete(tiny_model, tmp_path):
    out = tmp_path / "ft"
    (out / "model").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    assert "did not write (notes.txt)" in one_line(cli(*finetune(tiny_model / "model", out), check=False))
    assert (out / "notes.txt").read_text() == "mine" and (out / "model").is_dir()
    shutil.rmtree(out)
    cli(*finetune(tiny_model / "model", out))
    finished = snapshot(out)
    line = one_line(cli(*finetune(tiny_model / "model", out, "--lr", "2e-3"), check=False))
    assert "other inputs or settings" in line and "settings.lr: 0.001 -> 0.002" in line and snapshot(out) == finished
    proc = start(finetune(tiny_model / "model", out, "--lr", "2e-3", "--epochs", 50, "--overwrite", "true"))
    staging = None
    t0 = time.time()
    while staging is None:  # the new model is being built beside the old output
        found = [p for p in tmp_path.glob(".ft.tmp-*") if (p / "model" / "model.safetensors").exists()]
        staging = found[0] if found else None
        assert time.time() - t0 < 300 and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert snapshot(out) == finished  # a kill while the new one trains leaves the finished output whole
    cli(*finetune(tiny_model / "model", out, "--lr", "2e-3", "--overwrite", "true"))
    assert json.loads((out / "manifest.json").read_text())["identity"]["settings"]["lr"] == 2e-3
    assert not list(tmp_path.glob(".ft.tmp-*"))  # the killed run's staging folder is gone too
    (out / "model" / "mine.txt").write_text("mine")  # a user's file inside the model folder
    line = one_line(cli(*finetune(tiny_model / "model", out, "--lr", "2e-3", "--overwrite", "true"), check=False))
    assert "did not write (model/mine.txt)" in line and (out / "model" / "mine.txt").read_text() == "mine"


# --- one writer per folder -----------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder(sample_data, tiny_model, tmp_path):
    from pipeline import lock

    for stage, args in (("pretrain", pretrain(sample_data["shards"], tmp_path / "p", 2)),
                        ("extract", ["extract", "--input", sample_data["root"] / "missing.txt", "--output", tmp_path / "e"]),
                        ("finetune", finetune(tiny_model / "model", tmp_path / "f"))):
        out = Path(args[args.index("--output") + 1])
        with lock.writer(out, stage):
            line = one_line(cli(*args, check=False))
        assert f"{out} is being written by 'kowiki-bert {stage}' on " in line and f"PID {os.getpid()}" in line, line
        assert not (out / "status.json").exists()


def test_two_pretrain_launches_on_one_output(sample_data, tmp_path):
    out = tmp_path / "run"
    first = start(pretrain(sample_data["shards"], out, 400))
    wait_for(out / "checkpoints" / "step-00000003" / "COMPLETE")
    line = one_line(cli(*pretrain(sample_data["shards"], out, 400), check=False))
    assert f"PID {first.pid}" in line
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    first.send_signal(signal.SIGUSR1)
    assert first.wait(timeout=300) == EXIT_PREEMPTED


def test_array_tasks_finishing_together_publish_once(sample_data, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_data["corpus"], corpus)
    src = ROOT / "pipeline" / "sample" / "kowiki-sample-pages-articles-multistream.xml.bz2"
    args = ["extract", "--input", src, "--output", corpus, "--overwrite", "true", "--pages-per-shard", 40, "--num-tasks", 2]
    tasks = [start([*args, "--task-index", i]) for i in range(2)]
    for t in tasks:
        assert t.wait(timeout=600) == 0, t.stderr.read()[-2000:]
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["config"]["pages_per_shard"] == 40
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".corpus.") and p.suffix != ".lock"]


# --- trackers and the Hub ------------------------------------------------------------------

def test_trackers_that_cannot_work_are_refused_before_any_work(sample_data, tmp_path):
    args = pretrain(sample_data["shards"], tmp_path / "o", 2)
    env = child_env(WANDB_DIR=str(tmp_path / "w"), NETRC=str(tmp_path / "no-netrc"))
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)
    assert "no W&B API key" in one_line(cli(*args, "--log-with", "wandb", check=False, env=env))
    assert "--project 'a\"b'" in one_line(cli(*args, "--log-with", "mlflow", "--project", 'a"b', check=False))
    line = one_line(cli(*args, "--log-with", "mlflow", check=False, env=child_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9")))
    assert "MLFLOW_TRACKING_URI http://127.0.0.1:9 does not answer" in line
    assert not (tmp_path / "o").exists()


def test_a_tracker_that_fails_mid_run_or_on_resume_never_stops_training(sample_data, tmp_path):
    out = tmp_path / "run"
    env = child_env(MLFLOW_ALLOW_FILE_STORE="true")
    proc = start(pretrain(sample_data["shards"], out, 60, "--log-with", "tensorboard,mlflow"), env=env)
    wait_for(out / "checkpoints" / "step-00000003" / "COMPLETE")
    shutil.rmtree(out / "mlruns")  # the store is gone mid-run
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "warning: mlflow stopped logging" in err, err[-2000:]
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    shutil.rmtree(out / "mlruns", ignore_errors=True)  # lost before a resume
    proc = cli(*pretrain(sample_data["shards"], out, 66, "--log-with", "tensorboard,mlflow"), env=env)
    assert "cannot be continued" in proc.stderr and "logging to a new run" in proc.stderr


# --- settings, status and files on resume --------------------------------------------------

def test_resume_applies_or_refuses_every_setting_and_refusals_write_nothing(sample_data, tmp_path):
    out = tmp_path / "run"
    cli(*pretrain(sample_data["shards"], out, 6))
    kept = {name: (out / name).read_bytes() for name in ("status.json", "run_info.json", "train_log.jsonl")}
    ckpt = out / "checkpoints" / "step-00000006"
    stamp = ckpt.stat().st_mtime_ns
    line = one_line(cli(*pretrain(sample_data["shards"], out, 12, "--optim.lr", "1e-2"), check=False))
    assert "optim.lr: 0.001 -> 0.01" in line and "--init-from" in line
    assert "no such directory" in one_line(cli(*pretrain(tmp_path / "nothing", out, 12), check=False))  # a wrong --data
    assert {name: (out / name).read_bytes() for name in kept} == kept  # a refused start wrote nothing
    cli(*pretrain(sample_data["shards"], out, 6))  # the finished run again: nothing re-saved
    assert ckpt.stat().st_mtime_ns == stamp and (ckpt / "COMPLETE").exists()
    with (out / "train_log.jsonl").open("a") as f:
        f.write('{"step": 7, "loss/to')  # torn by a kill mid-write
    cli(*pretrain(sample_data["shards"], out, 12))  # max_steps may change: applies from step 6
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and json.loads((out / "run_info.json").read_text())["config"]["train"]["max_steps"] == 12


def test_ctrl_c_checkpoints_and_says_so(sample_data, tmp_path):
    out = tmp_path / "run"
    proc = start(pretrain(sample_data["shards"], out, 400))
    wait_for(out / "checkpoints" / "step-00000003" / "COMPLETE")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == EXIT_PREEMPTED
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "preempted" and (out / "checkpoints" / f"step-{status['step']:08d}" / "COMPLETE").exists()


# --- consumers check content -----------------------------------------------------------------

def test_a_corpus_changed_in_place_is_refused_and_datasets_caches_are_tolerated(sample_data, tmp_path):
    import datasets

    corpus = tmp_path / "corpus"
    shutil.copytree(sample_data["corpus"], corpus)
    ds = datasets.load_from_disk(str(corpus))
    ds.map(lambda row: {"n": len(row["sentences"])})  # the documented use: writes cache-*.arrow into the folder
    assert list(corpus.glob("cache-*.arrow"))
    src = ROOT / "pipeline" / "sample" / "kowiki-sample-pages-articles-multistream.xml.bz2"
    cli("extract", "--input", src, "--output", corpus)  # the same command still takes its own output
    shard = corpus / "shard-00000.arrow"
    raw = bytearray(shard.read_bytes())
    raw[-64] ^= 0x01  # changed in place, same size
    shard.write_bytes(bytes(raw))
    for args in (["tokenizer", "--corpus", corpus, "--output", tmp_path / "tok"],
                 ["shard", "--corpus", corpus, "--tokenizer", sample_data["tokenizer"], "--output", tmp_path / "sh"]):
        assert "does not match its sha256" in one_line(cli(*args, check=False))


# --- inputs that used to end in tracebacks -------------------------------------------------

def test_inputs_end_in_one_line_or_the_right_result(sample_data, tiny_model, tmp_path):
    long = tmp_path / "long.tsv"
    rows = REVIEWS_TRAIN.read_text(encoding="utf-8").splitlines()
    cols = rows[1].split("\t")
    long.write_text("\n".join([rows[0], "\t".join([cols[0], "좋아요 " * 30000, cols[2]]), *rows[2:]]) + "\n", encoding="utf-8")
    cli("finetune", "--model", tiny_model / "model", "--task", "nsmc", "--train", long, "--eval", REVIEWS_EVAL,
        "--output", tmp_path / "long", "--epochs", 1)  # a 180 KB field is data, not a csv error
    assert "repeats a seed" in one_line(cli(*finetune(tiny_model / "model", tmp_path / "s"), "--seed", "7,7", check=False))
    line = one_line(cli(*pretrain(sample_data["shards"], sample_data["shards"] / "run", 2), check=False))
    assert "overlaps the input" in line and not (sample_data["shards"] / "run").exists()
    line = one_line(cli("fill-mask", "--model", tmp_path / "long" / "model", "[MASK] 영화", check=False))
    assert "no masked-LM head" in line
    line = one_line(cli("fill-mask", "--model", tiny_model / "model", "[MASK] " + "영화 " * 600, check=False))
    assert "positions" in line
    sts = tmp_path / "sts.json"
    sts.write_text(json.dumps([{"sentence1": "a", "sentence2": "b", "labels": 3.2}] * 4))
    line = one_line(cli("finetune", "--model", tiny_model / "model", "--task", "klue-sts", "--train", sts, "--eval", sts,
                        "--output", tmp_path / "sts", check=False))
    assert "row 1 has 'labels' 3.2" in line
    config = tmp_path / "c.yaml"
    config.write_text("output: ~/tilde-out\n")
    cli("pretrain", "--config", config, "--data", sample_data["shards"], "--max-steps", 1, *PRETRAIN_FAST,
        "--checkpoint.export_hf", "false", env=child_env(HOME=str(tmp_path)))
    assert (tmp_path / "tilde-out" / "model").is_dir() and not (ROOT / "~").exists()


def test_numbers_that_would_overflow_are_refused_when_the_config_loads(sample_data, tmp_path):
    line = one_line(cli(*pretrain(sample_data["shards"], tmp_path / "o", 2), "--seed", str(2**62), check=False))
    assert "seed" in line and "too large" in line and not (tmp_path / "o").exists()


def test_a_regression_fine_tune_that_diverges_says_so(tiny_model, tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"영화 {i}\t배우 {i}\t{i % 5}.5\n" for i in range(64)), encoding="utf-8")
    line = one_line(cli("finetune", "--model", tiny_model / "model", "--task", "generic", "--train", sts, "--eval", sts,
                        "--text-column", "sentence1", "--pair-column", "sentence2", "--output", tmp_path / "ft",
                        "--epochs", 1, "--lr", "1e12", "--precision", "no", check=False))
    assert "diverged" in line and "--lr" in line
