"""A non-finite step changes nothing and counts once: for each optimizer (fused AdamW, our
LAMB, DeepSpeed's ZeRO with torch AdamW and with CPU Adam under offload), precisions and 1 or 2
ranks, a real launch poisons rank 0's loss for one step and checks weights and optimizer state
bit for bit (tests/poisoned_step.py)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

pytestmark = pytest.mark.slow

CPU2 = ["--config_file", ROOT / "accelerate_configs" / "cpu_multiprocess.yaml", "--num_processes", 2]


def zero(name):
    return ["--use_deepspeed", "--deepspeed_config_file", ROOT / "ds_configs" / f"{name}.json", "--num_processes", 2]


CASES = {  # id: (launch arguments or None for a plain process, optimizers, precision, inner optimizer classes)
    "adamw,lamb-1": (None, "adamw,lamb", "no", ["AdamW", "Lamb"]),
    "adamw,lamb-bf16-2": (CPU2, "adamw,lamb", "bf16", ["AdamW", "Lamb"]),
    "zero2-adamw-2": (zero("zero2"), "adamw", "no", ["AdamW"]),
    "zero3-offload-cpuadam-2": (zero("zero3_offload"), "adamw", "no", ["DeepSpeedCPUAdam"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_poisoned_step_changes_nothing_and_counts_once(sample_data, case):
    launch_args, optim, precision, inner = CASES[case]
    script = [ROOT / "tests" / "poisoned_step.py", "--data", sample_data["shards"], "--optim", optim, "--precision", precision]
    head = [sys.executable] if launch_args is None else [sys.executable, "-m", "accelerate.commands.launch", *launch_args]
    proc = subprocess.run([*map(str, head), *map(str, script)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=child_env(PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["optimizer"] for r in results] == inner, proc.stdout
    for result in results:
        assert result["world"] == (1 if launch_args is None else 2), result
        assert result["weights_unchanged"] and result["optimizer_unchanged"] and result["optimizer_tensors"] > 0, result
        assert result["trained_after"] and result["finite_after"], result
        assert (result["skipped"], result["worst_run"]) == (1, 1), result
