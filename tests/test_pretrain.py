"""The pretraining loop's pieces and outputs, on a tiny model trained by the real CLI."""

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertForMaskedLM, BertForPreTraining

from pipeline.data import MLMNSPCollator, load_pretraining_dataset, load_tokenizer
from pipeline.model import PreTrainingModel, bert_config
from pipeline.optim import lr_factor
from tests.conftest import PRETRAIN_FAST, cli
from tests.tb import scalars

TAGS = ["loss/total", "loss/mlm", "loss/nsp", "accuracy/mlm", "accuracy/nsp", "optim/lr", "optim/grad_norm",
        "perf/tokens_per_second", "perf/flops_per_second", "eval/mlm_loss", "eval/perplexity", "eval/nsp_accuracy"]


def test_lr_schedule():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1) and lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5) and lr_factor(100, 10, 100) == pytest.approx(0.0)
    assert lr_factor(55, 10, 100, "cosine") == pytest.approx(0.5) and lr_factor(10, 10, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, "cosine", min_ratio=0.1) == pytest.approx(0.1)


def test_masked_only_head_equals_full_head(sample_data):
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    ds = load_pretraining_dataset(sample_data["shards"])
    batch = MLMNSPCollator(tok, seed=0)([ds[i] for i in range(16)])
    torch.manual_seed(0)
    model = PreTrainingModel(BertForPreTraining(bert_config("tiny", len(tok), dropout=0.0))).eval()
    ours = model(**batch)
    full = model.bert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                      attention_mask=batch["attention_mask"], labels=batch["labels"],
                      next_sentence_label=batch["next_sentence_label"])
    assert ours["loss"].item() == pytest.approx(full.loss.item(), rel=1e-5)


def test_accumulation_equals_larger_batch(sample_data, tmp_path):
    common = ["--data", sample_data["shards"], "--max-steps", 3, "--model.dropout", 0, "--checkpoint.export_hf", "false",
              *PRETRAIN_FAST]
    cli("pretrain", *common, "--output", tmp_path / "k1", "--global-batch-size", 16, "--micro-batch-size", 16)
    cli("pretrain", *common, "--output", tmp_path / "k4", "--global-batch-size", 16, "--micro-batch-size", 4)
    a = load_file(str(tmp_path / "k1" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "k4" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    info = json.loads((tmp_path / "k4" / "run_info.json").read_text())
    assert info["gradient_accumulation_steps"] == 4 and info["global_batch_size"] == 16


def test_outputs_tensorboard_and_export(tiny_model):
    assert (tiny_model / "model" / "model.safetensors").exists()
    for cls in (BertForPreTraining, BertForMaskedLM):
        cls.from_pretrained(str(tiny_model / "model"))
    clf = AutoModelForSequenceClassification.from_pretrained(str(tiny_model / "model"), num_labels=3)
    assert clf.config.num_labels == 3
    logged = scalars(tiny_model / "tensorboard")
    for tag in TAGS:
        assert tag in logged, tag
    assert logged["optim/lr"][0][0] == 5 and len(logged["loss/total"]) == 6
    assert all(math.isfinite(v) for _, v in logged["loss/total"])
    info = json.loads((tiny_model / "run_info.json").read_text())
    assert info["world_size"] == 1 and info["distributed_type"] == "NO" and info["config"]["train"]["max_steps"] == 30
    assert set(info["versions"]) == {"torch", "transformers", "accelerate", "deepspeed"}
    assert json.loads((tiny_model / "status.json").read_text())["state"] == "finished"
    steps = sorted(p.name for p in (tiny_model / "checkpoints").iterdir())
    assert steps == ["step-00000015", "step-00000030"]
    for step in steps:
        ck = tiny_model / "checkpoints" / step
        assert (ck / "COMPLETE").exists() and (ck / "hf" / "model.safetensors").exists()
        BertForMaskedLM.from_pretrained(str(ck / "hf"))


def test_fill_mask_probe(tiny_model):
    proc = cli("fill-mask", "--model", tiny_model / "model", "이순신은 [MASK] 중기의 무신이다.", "--top-k", "3")
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "이순신은 [MASK] 중기의 무신이다." and lines[1].startswith("  [MASK] 1:")
    assert lines[1].count("%") == 3  # three candidates, each "word" with its percentage
    bad = cli("fill-mask", "--model", tiny_model / "model", "마스크 없는 문장", check=False)
    assert bad.returncode == 2 and "no [MASK]" in bad.stderr


def test_too_little_data_is_a_clear_error(sample_data, tmp_path):
    proc = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path, "--global-batch-size", 4096,
               "--micro-batch-size", 4096, check=False)
    assert proc.returncode == 2 and "fewer than one global batch" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("pretrain", "--data", tmp_path / "nothing", "--output", tmp_path, check=False)
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_non_finite_steps_are_skipped_then_stop_with_a_message(sample_data, tmp_path):
    # Adam moves every weight by about lr on its first step: at 1e30 the next matmuls overflow
    # float32 on any machine, so every later step is non-finite.
    proc = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path, "--max-steps", 30,
               "--train.max_bad_steps", 3, *PRETRAIN_FAST, "--lr", "1e30", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # checked at log steps (every 10 here), so the run stops at the first log step past 3
    assert re.search(r"training diverged: (\d+) non-finite steps in a row by step 10", proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_bf16_mixed_precision_on_cpu(sample_data, tmp_path):
    cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path, "--max-steps", 4, "--precision", "bf16",
        "--checkpoint.export_hf", "false", *PRETRAIN_FAST)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["mixed_precision"] == "bf16"
    assert all(math.isfinite(v) for _, v in scalars(tmp_path / "tensorboard")["loss/total"])
    BertForMaskedLM.from_pretrained(str(tmp_path / "model"))


def test_lamb_and_fused_adamw_reduce_a_loss():
    from pipeline.optim import build_optimizer

    for name in ("lamb", "adamw"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
        opt = build_optimizer(model, name, 1e-2, 0.01, (0.9, 0.999), 1e-6)
        x, y = torch.randn(64, 8), torch.randn(64, 1)
        first = None
        for _ in range(50):
            loss = torch.nn.functional.mse_loss(model(x), y)
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.7 * first, name
        assert opt.param_groups[1]["weight_decay"] == 0.0  # biases and norms


def test_checkpoint_retention_keeps_last_k_and_milestones(tmp_path):
    from pipeline import checkpoint as ckpt

    for step in range(100, 1100, 100):
        tmp = tmp_path / f".tmp-step-{step:08d}"
        tmp.mkdir()
        (tmp / "state.json").write_text(json.dumps({"run": {"seed": 0}}))
        ckpt.seal(tmp, ckpt.step_dir(tmp_path, step))
    (tmp_path / ".tmp-step-00001100").mkdir()  # a save that was killed
    ckpt.prune(tmp_path, keep_last=2, keep_every=500, run={"seed": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000500", "step-00000900", "step-00001000"]
    (tmp_path / "step-00001000" / "state.json").write_text("changed")
    messages = []
    assert ckpt.latest_valid(tmp_path, log=messages.append).name == "step-00000900"
    assert "does not match its checksum" in messages[0]
