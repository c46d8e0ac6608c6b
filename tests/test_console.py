"""What a user reads: progress lines in a SLURM log (stderr a file, where tqdm is silent),
``--version``, and help texts without Python internals."""

import re

import pytest

from pipeline import cli as console
from tests.conftest import PRETRAIN_FAST, cli


def test_pretrain_prints_a_line_per_log_step_eval_and_checkpoint(sample_data, tmp_path):
    proc = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path, "--max-steps", 4, "--save-every", 2,
               "--train.log_every", 2, *PRETRAIN_FAST, "--eval.every", 2, "--checkpoint.export_hf", "false")
    steps = re.findall(r"^pretrain: step (\d+)/4, loss [\d.]+ \(MLM [\d.]+, NSP [\d.]+\), MLM acc [\d.]+, NSP acc [\d.]+, "
                       r"lr \S+, [\d,]+ tokens/s, ETA \d+m\d\ds$", proc.stderr, re.M)
    assert steps == ["2", "4"], proc.stderr
    assert re.search(r"^pretrain: eval at step 2: mlm_loss [\d.]+", proc.stderr, re.M)
    assert f"pretrain: checkpoint {tmp_path}/checkpoints/step-00000002" in proc.stderr


def test_data_stages_print_progress_lines(sample_data, tmp_path):
    from pipeline.sample.build import DUMP

    extract = cli("extract", "--input", DUMP, "--output", tmp_path / "corpus")
    assert re.search(r"^extract: [\d,]+ pages cleaned \([\d,]+ pages cleaned/s\)$", extract.stderr, re.M), extract.stderr
    shard = cli("shard", "--corpus", sample_data["corpus"], "--tokenizer", sample_data["tokenizer"], "--output",
                tmp_path / "shards", "--docs-per-shard", 16, "--chunk-docs", 16)
    assert re.search(r"^shard: 20/20 documents \([\d,]+ documents/s, ETA 0m00s\)$", shard.stderr, re.M), shard.stderr


def test_version(capsys):
    assert console.main(["--version"]) == 0
    assert re.fullmatch(r"kowiki-bert \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


@pytest.mark.parametrize("stage", sorted(console.STAGES))
def test_help_shows_defaults_not_python_internals(stage, capsys):
    with pytest.raises(SystemExit):
        console.main([stage, "--help"])
    out = capsys.readouterr().out
    assert "_MISSING_TYPE" not in out and "object at 0x" not in out


def test_run_reports_each_stage_and_the_whole_process_time(tmp_path):
    proc = cli("run", "--output", tmp_path, "--max-steps", 4)
    times = dict(re.findall(r"=== (\S+) done in ([\d.]+)s ===", proc.stderr))
    assert list(times) == ["extract", "tokenizer", "shard", "pretrain", "finetune", "fill-mask"]
    total = float(re.search(r"All stages finished in ([\d.]+)s \(", proc.stdout).group(1))
    assert all(float(t) > 0 for t in times.values()) and total >= sum(map(float, times.values()))
    assert "start-up" in proc.stdout and "model card" in proc.stdout


def test_a_run_that_did_not_learn_says_so():
    from pipeline.pretrain import learning_note

    def state(first, last, corpus=None):
        return {"step": 300, "eval_first": {"mlm_loss": first, "step": 100}, "eval": {"mlm_loss": last},
                "corpus": corpus}

    rose = learning_note(state(6.1, 6.4, {"tokens": 32448}), 2000)
    assert rose.startswith("held-out MLM loss 6.40 at step 300 rose from 6.10 at step 100")
    assert "memorized its 32,448 training tokens" in rose and "smoke run, too small to learn from" in rose
    assert "uniform guess over the 2,000-piece vocabulary scores 7.60" in learning_note(state(8.0, 7.9), 2000)
    assert learning_note(state(7.0, 5.5), 2000) is None
    assert learning_note({"step": 4, "eval": {}}, 2000) is None
