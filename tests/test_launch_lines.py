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
