"""Compiled training without surprises: every pad bucket's graph is compiled before step 1 and
none during training (with evaluation and checkpoints in between); DeepSpeed compiles its
engine and trains to the same losses as eager; a padding-free run resumes bit for bit."""

import json

import pytest

from pipeline.data import MLMNSPCollator, StepBatches, load_pretraining_dataset, load_tokenizer
from tests.conftest import ROOT, cli, launch

pytestmark = pytest.mark.slow

RUN = ["--model-size", "tiny", "--global-batch-size", 16, "--micro-batch-size", 8, "--max-steps", 12,
       "--eval.every", 4, "--eval.batches", 2, "--train.num_workers", 0, "--save-every", 6, "--train.log_every", 4,
       "--checkpoint.export_hf", "false", "--model.dropout", 0]


def lengths_seen(shards, steps=12, buckets=(32, 64, 128)):
    tok = load_tokenizer(shards / "tokenizer")
    batches = StepBatches(load_pretraining_dataset(shards), MLMNSPCollator(tok, seed=0, max_seq_len=128, buckets=buckets),
                          0, 16, 8, 2, 0, 1)
    return {batches[k]["input_ids"].shape[1] for k in range(steps * 2)}


def losses(out):
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss/total"] for r in rows if "loss/total" in r]


@pytest.mark.parametrize("padding_free", ["off", "on"])
def test_every_bucket_compiles_before_step_1_and_none_during_training(sample_data, tmp_path, padding_free):
    assert len(lengths_seen(sample_data["shards"])) >= 2  # the run below meets several padded lengths
    out = tmp_path / "compiled"
    mode = ["--train.pad_buckets", 3, "--train.padding_free", padding_free]
    proc = cli("pretrain", "--data", sample_data["shards"], "--output", out, *RUN, "--model.compile", "on", *mode)
    compiled = json.loads((out / "metrics.json").read_text())["compile"]
    assert compiled["during_training"] == 0, compiled
    if padding_free == "off":  # one static graph per bucket
        assert compiled["graphs"] == 3, compiled
    else:  # the token count is dynamic from the first compile; the grid length may become so too
        assert 1 <= compiled["graphs"] <= 3, compiled
    assert f"compiled {compiled['graphs']} graphs before step 1" in proc.stderr
    assert "compiled during training" not in proc.stderr
    eager = tmp_path / "eager"
    cli("pretrain", "--data", sample_data["shards"], "--output", eager, *RUN, "--model.compile", "off", *mode)
    assert losses(out) == pytest.approx(losses(eager), rel=1e-4)


def test_deepspeed_engine_compiles_and_matches_eager(sample_data, tmp_path):
    ds = ["--use_deepspeed", "--deepspeed_config_file", ROOT / "ds_configs" / "zero2.json", "--num_processes", 2]
    runs = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        launch(ds, ["--data", sample_data["shards"], "--output", out, *RUN, "--micro-batch-size", 4, "--max-steps", 6,
                    "--eval.every", 3, "--save-every", 0, "--train.log_every", 2, "--model.compile", mode])
        runs[mode] = out
    compiled = json.loads((runs["on"] / "metrics.json").read_text())["compile"]
    assert compiled["graphs"] >= 3 and compiled["during_training"] == 0, compiled  # train and eval shapes, warmed up
    assert json.loads((runs["off"] / "metrics.json").read_text())["compile"] == {}
    assert losses(runs["on"]) == pytest.approx(losses(runs["off"]), rel=1e-4)


def test_padding_free_run_resumes_bit_identically(sample_data, tmp_path):
    from tests.test_resume import start, wait_for

    common = ["--data", sample_data["shards"], *RUN, "--train.padding_free", "on", "--model.dropout", 0.1,
              "--save-every", 3, "--train.log_every", 1]
    whole, cut = tmp_path / "whole", tmp_path / "resumed"
    cli("pretrain", "--output", whole, *common)
    proc = start(["pretrain", "--output", cut, *common])
    wait_for(cut / "checkpoints" / "step-00000003" / "COMPLETE")
    proc.kill()  # kill -9 somewhere after step 3
    proc.wait()
    assert not (cut / "model").exists()
    assert json.loads((cut / "run_info.json").read_text())["config"]["train"]["padding_free"] == "on"
    cli("pretrain", "--output", cut, *common)
    assert (whole / "model" / "model.safetensors").read_bytes() == (cut / "model" / "model.safetensors").read_bytes()
