"""Typed configs, the CLI contract, and every config file shipped in the repository."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline import cli as cli_module
from pipeline.config import ConfigError, load_config
from pipeline.cli import STAGES, parse_stage_args
from tests.conftest import ROOT, cli

import dataclasses
import importlib

from pipeline.config import leaf_fields


def stage(name):
    return importlib.import_module(STAGES[name][0])


def test_dotted_overrides_and_shorthands():
    cfg = parse_stage_args(stage("pretrain"), ["--data", "d", "--output", "o", "--model-size", "mini",
                                               "--max-steps", "7", "--optim.lr", "3e-4", "--train.whole_word_mask"], "t")
    assert (cfg.model.size, cfg.train.max_steps, cfg.optim.lr, cfg.train.whole_word_mask) == ("mini", 7, 3e-4, True)


def test_yaml_then_cli_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: d\noutput: o\ntrain:\n  max_steps: 9\n  precision: bf16\n")
    cfg = parse_stage_args(stage("pretrain"), ["--config", str(f), "--max-steps", "11"], "t")
    assert cfg.train.max_steps == 11 and cfg.train.precision == "bf16"


def test_unknown_key_names_closest(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: d\noutput: o\ntrain:\n  max_step: 9\n")
    with pytest.raises(ConfigError, match="train.max_step.*did you mean 'max_steps'"):
        parse_stage_args(stage("pretrain"), ["--config", str(f)], "t")
    with pytest.raises(ConfigError, match="did you mean"):
        parse_stage_args(stage("pretrain"), ["--data", "d", "--output", "o", "--optim.learning_rate", "1"], "t")


def test_validation_names_field_and_fix():
    with pytest.raises(ConfigError, match="model.size.*'huge' is not one of"):
        parse_stage_args(stage("pretrain"), ["--data", "d", "--output", "o", "--model-size", "huge"], "t")
    with pytest.raises(ConfigError, match="global_batch_size.*multiple"):
        parse_stage_args(stage("pretrain"), ["--data", "d", "--output", "o", "--global-batch-size", "10",
                                             "--micro-batch-size", "4"], "t")
    with pytest.raises(ConfigError, match="cannot read 'abc' as int"):
        parse_stage_args(stage("extract"), ["--input", "i", "--output", "o", "--num-proc", "abc"], "t")
    with pytest.raises(ConfigError, match="'input' is required; pass --input"):
        parse_stage_args(stage("extract"), ["--output", "o"], "t")


def test_cli_error_is_one_line_not_traceback(tmp_path):
    proc = cli("pretrain", "--data", tmp_path, "--output", tmp_path / "o", "--max-stepz", "3", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "did you mean" in proc.stderr
    assert cli("nonsense", check=False).returncode == 2


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main([name, "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_python_dash_m_entry_points():
    for module in ("extract", "tokenizer", "shard", "pretrain", "finetune", "fill_mask", "run"):
        text = (ROOT / "pipeline" / f"{module}.py").read_text()
        assert 'if __name__ == "__main__":' in text and "stage_main" in text


def shipped_yaml():
    folders = [ROOT / "accelerate_configs", ROOT / "pipeline" / "configs", ROOT / "slurm", ROOT / "ds_configs"]
    return sorted(p for folder in folders for p in folder.glob("*.yaml"))


@pytest.mark.parametrize("path", shipped_yaml(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_parses(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    if path.parent.name == "accelerate_configs":
        assert data["distributed_type"] in ("NO", "MULTI_GPU", "MULTI_CPU", "DEEPSPEED")
        assert "mixed_precision" not in data or data["distributed_type"] != "DEEPSPEED"
        if data["distributed_type"] == "DEEPSPEED":
            assert (ROOT / data["deepspeed_config"]["deepspeed_config_file"]).is_file()
    elif path.parent.name == "configs":
        module = stage(path.stem.split("_")[0])
        # paths come from the command line, as a user passes them
        required = {name: "x" for name, (_, f) in leaf_fields(module.Config).items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                    and name not in data}
        load_config(module.Config, path, required)


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero3_offload"])
def test_deepspeed_json_is_valid_once_auto_is_filled(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    data = json.loads((ROOT / "ds_configs" / f"{name}.json").read_text())
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert data[key] == "auto", f"{key} must be owned by the run config"
    assert data["bf16"]["enabled"] == "auto" and data["fp16"]["enabled"] == "auto"
    data.update(train_batch_size=64, train_micro_batch_size_per_gpu=32, gradient_accumulation_steps=2, gradient_clipping=1.0)
    bad = json.loads(json.dumps(data))
    bad["zero_optimization"]["stage_typo"] = 1  # the schema of each section rejects unknown keys
    with pytest.raises(Exception, match="stage_typo"):
        DeepSpeedConfig(bad)
    data["bf16"]["enabled"], data["fp16"]["enabled"] = True, False
    cfg = DeepSpeedConfig(data)
    assert cfg.zero_optimization_stage == int(name[4])
    assert cfg.grad_accum_dtype == "fp32"  # bf16 accumulation over many micro-batches loses updates
