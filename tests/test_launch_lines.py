"""Every pretraining launch line in the README and slurm/ resolves, as written, at its own world
size (``--dry-run``: batch arithmetic, tokens, FLOPs, memory; no process group, no GPU)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline import cli as console
from tests.conftest import ROOT, cli


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = " ".join(command.split())
            bare = re.sub(r"^(\w+=\S+ )+", "", command)  # VAR=value prefixes
            if bare.startswith(("accelerate launch", "kowiki-bert pretrain")) or "slurm/submit.sh " in bare \
                    or bare.startswith("sbatch") and "pretrain.sbatch" in bare:
                commands.append(command)
    return commands


def slurm_commands() -> list[str]:
    usage = re.findall(r"^#\s+(sbatch .*pretrain\.sbatch.*)$", (ROOT / "slurm" / "pretrain.sbatch").read_text(), re.M)
    return [u.replace("[pretrain options]", "").strip() for u in usage]


def resolve(command: str) -> tuple[int, list[str], dict]:
    """(world size, pretrain arguments, launcher environment) of a launch line."""
    words = shlex.split(command)
    prefix = {}
    while re.match(r"^\w+=", words[0]):
        prefix.update([words.pop(0).split("=", 1)])
    env, world, args = {}, 1, []
    config_file = prefix.get("ACCELERATE_CONFIG")
    if "--config_file" in words:
        config_file = words[words.index("--config_file") + 1]
    config = yaml.safe_load(here(config_file).read_text()) if config_file else {}
    ds_file = config.get("deepspeed_config", {}).get("deepspeed_config_file")
    if words[0] == "accelerate":
        world = int(words[words.index("--num_processes") + 1]) if "--num_processes" in words else config.get("num_processes", 1)
        if "--deepspeed_config_file" in words:
            ds_file = words[words.index("--deepspeed_config_file") + 1]
        args = words[words.index("pipeline.pretrain") + 1:]
    elif words[0] == "kowiki-bert":
        args = words[2:]
    elif words[0].endswith("slurm/submit.sh"):
        nodes = int(words[words.index("--nodes") + 1]) if "--nodes" in words else 1
        gpus = int(words[words.index("--gpus-per-node") + 1]) if "--gpus-per-node" in words else 8
        world = nodes * (1 if "--cpu" in words[:words.index("--")] else gpus)
        args = ["--data", "work/shards", "--output", "work/pretrain"] + (words[words.index("--") + 1:] if "--" in words else [])
    else:  # sbatch --nodes=N --gpus-per-node=G slurm/pretrain.sbatch SHARDS OUTPUT
        opts = dict(w.lstrip("-").split("=", 1) for w in words if w.startswith("--") and "=" in w)
        world = int(opts.get("nodes", 1)) * int(opts.get("gpus-per-node", 1))
        at = next(i for i, w in enumerate(words) if w.endswith("pretrain.sbatch"))
        args = ["--data", words[at + 1], "--output", words[at + 2], *words[at + 3:]]
    if ds_file:
        env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(here(ds_file))}
    return world, args, env


def here(path: str) -> Path:
    """A path in a launch line: from the user's directory (the repository cloned into it as
    kowiki-bert/, as the README's cluster section has it) or from the repository itself."""
    return Path(path) if Path(path).exists() else ROOT / path


LINES = readme_commands() + slurm_commands()


def test_the_launch_lines_are_found():
    assert sum("accelerate launch" in c for c in LINES) >= 1 and any("submit.sh" in c for c in LINES)
    assert any("pretrain.sbatch" in c for c in LINES)


@pytest.mark.parametrize("command", LINES, ids=[c[:60] for c in LINES])
def test_launch_line_resolves_at_its_world_size(command, capsys, monkeypatch, tmp_path):
    (tmp_path / "kowiki-bert").symlink_to(ROOT)
    monkeypatch.chdir(tmp_path)
    world, args, env = resolve(command)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = console.main(["pretrain", *args, "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"dry run: {world} process(es)" in captured.out


def test_a_line_that_does_not_divide_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "32")
    code = console.main(["pretrain", "--data", "d", "--output", "o", "--model-size", "base", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("error: train.global_batch_size=256 is not a multiple of micro_batch_size x processes = "
                                 "32 x 32; change one of them")


def test_dry_run_of_a_recipe_assumes_its_own_length_before_shards_exist(tmp_path):
    proc = cli("pretrain", "--config", ROOT / "pipeline" / "configs" / "pretrain_base_phase2.yaml", "--data", tmp_path / "none",
               "--output", tmp_path / "out", "--dry-run")
    assert "assuming seq 512" in proc.stdout and "seq 512: 524,288 tokens" in proc.stdout, proc.stdout


def test_recipe_length_is_checked_against_the_shards(sample_data, tmp_path):
    proc = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "out", "--train.seq_len", 512,
               "--max-steps", 1, check=False)
    assert proc.returncode != 0 and "train.seq_len 512" in proc.stderr and "--max-seq-len 128" in proc.stderr, proc.stderr


def test_dry_run_prints_once_and_refuses_what_the_real_start_refuses(sample_data, tiny_model, tmp_path):
    from tests.conftest import PRETRAIN_FAST, launch

    same = ["--data", sample_data["shards"], "--output", tiny_model, "--max-steps", 30, "--save-every", 15,
            "--train.log_every", 5, *PRETRAIN_FAST, "--dry-run"]
    two = launch(["--config_file", ROOT / "accelerate_configs" / "cpu_multiprocess.yaml"], same)
    assert two.stdout.count("pretrain dry run:") == 1, two.stdout
    assert f"resumes from {tiny_model}/checkpoints/step-00000030" in two.stdout
    for change, says in ((["--lr", "2e-3"], "with other settings (optim.lr: 0.001 -> 0.002)"),
                         (["--seed", "7"], "holds checkpoints of another run"),
                         (["--output", tmp_path / "new", "--init-from", tmp_path / "no-model"], "no-model")):
        proc = cli("pretrain", *same, *change, check=False)
        assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "new").exists()


def test_a_launch_that_starts_fewer_processes_than_asked_says_so(sample_data, tmp_path):
    from tests.conftest import PRETRAIN_FAST, launch

    proc = launch(["--cpu", "--num_processes", 2], ["--data", sample_data["shards"], "--output", tmp_path / "one",
                                                    "--max-steps", 1, *PRETRAIN_FAST, "--checkpoint.export_hf", "false"])
    assert "was asked for more than one process but started one" in proc.stderr


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero3_offload"])
def test_each_zero_stage_has_a_launch_config_for_slurm(name):
    """ACCELERATE_CONFIG=accelerate_configs/deepspeed_<name>.yaml is how SLURM jobs choose DeepSpeed."""
    import json

    config = yaml.safe_load((ROOT / "accelerate_configs" / f"deepspeed_{name}.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    ds = json.loads((ROOT / config["deepspeed_config"]["deepspeed_config_file"]).read_text())
    assert ds["zero_optimization"]["stage"] == int(name[4])
    assert ("offload_optimizer" in ds["zero_optimization"]) == name.endswith("offload")


def test_dry_run_piped_into_head_ends_quietly(tmp_path):
    import subprocess
    import sys

    from tests.conftest import child_env

    line = (f"{sys.executable} -m pipeline.cli pretrain --config {ROOT}/pipeline/configs/pretrain_base.yaml --data none "
            "--output out --dry-run | head -1")
    proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, cwd=tmp_path, env=child_env(WORLD_SIZE="8"))
    assert proc.stdout.startswith("pretrain dry run: 8 process(es)") and "Traceback" not in proc.stderr, proc.stderr


def test_a_refusal_under_torchrun_is_named_in_its_failure_summary(sample_data, tmp_path):
    from tests.conftest import launch

    with pytest.raises(AssertionError) as failed:
        launch(["--config_file", ROOT / "accelerate_configs" / "cpu_multiprocess.yaml"],
               ["--data", sample_data["shards"], "--output", tmp_path / "o", "--max-steps", 1, "--optim.lr", "-1"])
    summary = str(failed.value).split("Root Cause")[-1]
    assert "traceback : error: config field 'optim.lr': -1.0 is out of range" in summary, summary
