"""Real 2-process launches on CPU: DDP over gloo and DeepSpeed ZeRO-2/3. The launches that
misbehave do so silently, so every test asserts the world size and type it really got."""

import json
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForMaskedLM, BertForPreTraining

from pipeline.checkpoint import checksums
from tests.conftest import ROOT, child_env, cli, launch
from tests.tb import scalars

pytestmark = pytest.mark.slow


def stage_args(data, out, steps, *extra):
    return ["--data", data, "--output", out, "--max-steps", steps, "--model-size", "tiny", "--global-batch-size", 16,
            "--micro-batch-size", 4, "--lr", "2e-3", "--eval.every", 0, "--eval.batches", 2, "--train.log_every", 5,
            "--train.num_workers", 0, "--save-every", 10, *extra]


def run_info(out):
    return json.loads((out / "run_info.json").read_text())


def test_ddp_two_ranks_train_together(sample_data, tmp_path):
    out = tmp_path / "ddp"
    launch(["--multi_gpu", "--num_processes", 2], stage_args(sample_data["shards"], out, 40),
           env=child_env(ACCELERATE_USE_CPU="true"))
    info = run_info(out)
    assert (info["world_size"], info["distributed_type"], info["backend"]) == (2, "MULTI_CPU", "gloo")
    assert info["gradient_accumulation_steps"] == 2 and info["micro_batch_size"] == 4
    logged = scalars(out / "tensorboard")
    losses = [v for _, v in logged["loss/total"]]
    assert losses[-1] < losses[0] - 0.5, losses
    for tag in ("loss/mlm", "loss/nsp", "accuracy/mlm", "accuracy/nsp", "optim/lr", "optim/grad_norm",
                "perf/tokens_per_second", "perf/flops_per_second", "eval/perplexity"):
        assert tag in logged
    for cls in (BertForPreTraining, BertForMaskedLM):
        cls.from_pretrained(str(out / "model"))
    AutoModelForSequenceClassification.from_pretrained(str(out / "model"), num_labels=2)
    probe = cli("fill-mask", "--model", out / "model", "이순신은 [MASK] 중기의 무신이다.")
    assert "[MASK] 1:" in probe.stdout


def test_shipped_cpu_config_gives_two_ranks(sample_data, tmp_path):
    out = tmp_path / "cfg"
    launch(["--config_file", ROOT / "accelerate_configs" / "cpu_multiprocess.yaml"],
           stage_args(sample_data["shards"], out, 4, "--checkpoint.export_hf", "false"))
    info = run_info(out)
    assert (info["world_size"], info["distributed_type"]) == (2, "MULTI_CPU")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_zero_two_ranks_train_and_resume(sample_data, tmp_path, stage):
    out = tmp_path / f"zero{stage}"
    ds = ["--use_deepspeed", "--deepspeed_config_file", ROOT / "ds_configs" / f"zero{stage}.json", "--num_processes", 2]
    launch(ds, stage_args(sample_data["shards"], out, 10))
    info = run_info(out)
    assert (info["world_size"], info["distributed_type"], info["deepspeed_stage"]) == (2, "DEEPSPEED", stage)
    assert (out / "checkpoints" / "step-00000010" / "deepspeed").is_dir()
    resumed = launch(ds, stage_args(sample_data["shards"], out, 14))
    assert "resumed from" in resumed.stderr and "at step 10" in resumed.stderr
    lr = [s for s, _ in scalars(out / "tensorboard")["optim/lr"]]
    assert lr == [5, 10, 14]
    model = BertForMaskedLM.from_pretrained(str(out / "model"))
    assert model.bert.embeddings.word_embeddings.weight.abs().sum() > 0
    # gathered fp32 weights, not ZeRO-3's empty partitions
    assert model.bert.embeddings.word_embeddings.weight.shape[1] == 128


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_deepspeed_checkpoint_files_load_weights_only(sample_data, tmp_path):
    """DeepSpeed's own loader unpickles anything; a tampered engine file must be refused, not run."""
    out = tmp_path / "zero2"
    ds = ["--use_deepspeed", "--deepspeed_config_file", ROOT / "ds_configs" / "zero2.json", "--num_processes", 2]
    launch(ds, stage_args(sample_data["shards"], out, 10, "--checkpoint.export_hf", "false"))
    ckpt = out / "checkpoints" / "step-00000010"
    marker = tmp_path / "code-ran"
    states = ckpt / "deepspeed" / "state" / "mp_rank_00_model_states.pt"
    state = torch.load(states, weights_only=False)
    state["ds_version"] = _RunsCode(marker)
    torch.save(state, states)
    # the attacker also rewrote the checksums: only weights_only stands in the way
    (ckpt / "checksums.json").write_text(json.dumps(checksums(ckpt)))
    with pytest.raises(AssertionError) as failed:
        launch(ds, stage_args(sample_data["shards"], out, 12, "--checkpoint.export_hf", "false"))
    assert "mp_rank_00_model_states.pt holds objects that are not plain tensors" in str(failed.value)
    assert not marker.exists()


def test_deepspeed_with_accelerate_use_cpu_is_refused(sample_data, tmp_path):
    ds = ["--use_deepspeed", "--deepspeed_config_file", ROOT / "ds_configs" / "zero2.json", "--num_processes", 2]
    with pytest.raises(AssertionError, match="ACCELERATE_USE_CPU=true turns a DeepSpeed launch into plain DDP"):
        launch(ds, stage_args(sample_data["shards"], tmp_path / "x", 2), env=child_env(ACCELERATE_USE_CPU="true"))


def test_zero3_offload_steps_with_deepspeed_cpu_adam(sample_data, tmp_path):
    out = tmp_path / "offload"
    ds = ["--use_deepspeed", "--deepspeed_config_file", ROOT / "ds_configs" / "zero3_offload.json", "--num_processes", 2]
    launch(ds, stage_args(sample_data["shards"], out, 4, "--checkpoint.export_hf", "false"))
    info = run_info(out)
    assert (info["deepspeed_stage"], info["optimizer"]) == (3, "DeepSpeedCPUAdam")
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


def test_lamb_under_zero_is_refused_in_one_line(sample_data, tmp_path):
    ds = ["--use_deepspeed", "--deepspeed_config_file", ROOT / "ds_configs" / "zero2.json", "--num_processes", 1]
    with pytest.raises(AssertionError) as failed:
        launch(ds, stage_args(sample_data["shards"], tmp_path / "lamb", 2, "--optim.name", "lamb"))
    assert "error: optim.name lamb is refused under DeepSpeed" in str(failed.value)
    assert "Traceback" not in str(failed.value).split("exited")[1].split("error:")[0]
