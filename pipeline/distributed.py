"""Everything distributed lives here: the Accelerator, DeepSpeed's "auto" values, ranks,
barriers and the agreement of all ranks to stop on a preemption signal.

Facts this encodes (measured on CPU-only machines, accelerate 1.15, deepspeed 0.19):
without a GPU the process group must be gloo; ``ACCELERATE_USE_CPU=true`` silently turns a
DeepSpeed launch into plain DDP; DeepSpeed compiles a shared-memory comm op at first start
on CPU (about a minute) unless it is marked incompatible first.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from pipeline.errors import PipelineError


def using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(precision: str, accumulation: int, timeout_minutes: int = 30) -> Accelerator:
    """The Accelerator for this launch: gloo without a GPU, NCCL with one."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if using_deepspeed():
        if os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true":
            raise PipelineError("ACCELERATE_USE_CPU=true turns a DeepSpeed launch into plain DDP; "
                                "unset it for --use_deepspeed launches")
        if not torch.cuda.is_available():
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not using_deepspeed() and not torch.cuda.is_available():
        # Without it a --multi_gpu launch on CPU starts unsynchronized processes (type NO).
        os.environ["ACCELERATE_USE_CPU"] = "true"
    launched = world > 1 or using_deepspeed()
    handlers = [InitProcessGroupKwargs(backend=backend, timeout=timedelta(minutes=timeout_minutes))] if launched else []
    accelerator = Accelerator(mixed_precision=None if precision == "no" else precision,
                              gradient_accumulation_steps=accumulation, kwargs_handlers=handlers,
                              step_scheduler_with_optimizer=False)
    if world > 1 and accelerator.distributed_type == DistributedType.NO:
        raise PipelineError(f"launched {world} processes but Accelerate set up no distributed training, so the ranks "
                            f"would train unsynchronized; use an accelerate_configs/ file or --multi_gpu/--use_deepspeed")
    return accelerator


def fill_deepspeed_auto(accelerator: Accelerator, micro_batch: int, accumulation: int,
                        clip: float, precision: str) -> int:
    """Fill the DeepSpeed JSON's "auto" values from the run config (their one owner).

    Returns the ZeRO stage, or -1 without DeepSpeed.
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return -1
    ds = plugin.deepspeed_config
    values = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": accumulation,
              "train_batch_size": micro_batch * accumulation * accelerator.num_processes,
              "gradient_clipping": clip}
    for key, value in values.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    for kind in ("bf16", "fp16"):
        if isinstance(ds.get(kind), dict) and ds[kind].get("enabled") == "auto":
            ds[kind]["enabled"] = precision == kind
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def deepspeed_stage() -> int:
    """The ZeRO stage the launcher asked for (its config file), or -1, without starting anything."""
    if not using_deepspeed():
        return -1
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not path or not os.path.exists(path):
        return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0"))
    import json

    with open(path) as fh:
        return int(json.load(fh).get("zero_optimization", {}).get("stage", 0))


def launch_rank() -> int:
    """This process's global rank as set by the launcher, before any Accelerator exists."""
    return int(os.environ.get("RANK", "0"))


def offloads_optimizer(accelerator: Accelerator) -> bool:
    """Whether the DeepSpeed config moves optimizer states to the host (ZeRO offload)."""
    plugin = accelerator.state.deepspeed_plugin
    zero = plugin.deepspeed_config.get("zero_optimization", {}) if plugin else {}
    return zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")


def distributed_type(accelerator: Accelerator) -> str:
    return str(accelerator.distributed_type).split(".")[-1]


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def broadcast_object(accelerator: Accelerator, obj):
    """The main process's ``obj`` (a small picklable value) on every rank."""
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def all_reduce_sum(accelerator: Accelerator, values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (one small collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        dist.all_reduce(t)
    return t.tolist()


class StopFlag:
    """Set by SIGUSR1/SIGTERM/SIGINT; ``agreed`` makes every rank stop at the same step boundary.

    Ctrl-C (SIGINT) is a preemption too: checkpoint, ``preempted``, exit 75, so the steps since
    the last save are kept; a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.raised = 0
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.raised == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = signum

    @staticmethod
    def ignore_in_worker(_worker_id: int = 0) -> None:
        """DataLoader ``worker_init_fn``: SLURM and ``kill -- -PGID`` signal the whole process
        group; a worker dying of SIGTERM would crash the rank before it can checkpoint."""
        for sig in StopFlag.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def agreed(self, accelerator: Accelerator) -> bool:
        return all_reduce_sum(accelerator, [float(self.raised != 0)])[0] > 0
