"""One optimizer step of pretraining, and the device-side tallies it keeps between log steps.

Nothing here reads a device tensor back to the host: losses, hits, counts, the gradient norm
and the run of non-finite steps accumulate on the device, and ``Meter.flush`` reads them all
with one all-reduce at log and checkpoint steps. A non-finite step is skipped on the device
(fused AdamW and our LAMB take a ``found_inf`` flag, as under a GradScaler; under fp16 the
scaler skips it), so the guard needs no sync either.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pipeline.distributed import is_deepspeed
from pipeline.unpadded import PACKED_INPUTS

TALLIES = ("mlm_sum", "mlm_correct", "mlm_count", "nsp_sum", "nsp_correct", "nsp_count")
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "next_sentence_label", "mlm_positions", "mlm_labels")


class Meter:
    """Sums since the last flush: model tallies and skipped steps on the device, tokens and
    FLOPs (known from the host-side batches) on the host."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums = torch.zeros(len(TALLIES) + 1, dtype=torch.float64, device=device)  # + skipped steps
        self.bad_run = torch.zeros((), dtype=torch.float64, device=device)  # consecutive non-finite steps
        self.worst_run = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm = torch.full((), float("nan"), dtype=torch.float64, device=device)
        self.tokens = self.flops = 0.0

    def add(self, res: dict) -> None:
        self.sums[:len(TALLIES)] += torch.stack([res[k].detach().double() for k in TALLIES])

    def add_host(self, tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.flops += flops

    def add_step(self, finite: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        bad = (~finite).double()
        self.sums[-1] += bad
        self.bad_run = (self.bad_run + 1) * bad
        self.worst_run = torch.maximum(self.worst_run, self.bad_run)
        if grad_norm is not None:
            self.grad_norm = grad_norm.detach().double()

    def flush(self, accelerator, stop: bool) -> dict:
        """All ranks' sums since the last flush (one all-reduce, one host read), then reset."""
        host = torch.tensor([self.tokens, self.flops, float(stop)], dtype=torch.float64, device=self.device)
        packed = torch.cat([self.sums, self.worst_run[None], self.grad_norm[None], host])
        if accelerator.num_processes > 1:
            dist.all_reduce(packed)
        values = packed.tolist()
        n, world = len(TALLIES), accelerator.num_processes
        out = dict(zip(TALLIES, values[:n]))
        # Every rank sees the same (all-reduced) gradient, so each counts the same skipped
        # steps: divide the sum, or one skipped step would read as the world size.
        out.update(skipped=round(values[n] / world), worst_run=values[n + 1] / world, grad_norm=values[n + 2] / world,
                   tokens=values[n + 3], flops=values[n + 4], stop=values[n + 5] > 0)
        self.sums.zero_()
        self.worst_run = self.bad_run.clone()  # a run of bad steps goes on across flushes
        self.tokens = self.flops = 0.0
        return out


def masked_count(accelerator, batches: list[dict]) -> torch.Tensor:
    """Masked tokens of this step over all ranks, counted on the device from the device-side
    labels and left there (an async all-reduce): no host value is copied in."""
    t = sum((b["mlm_labels"] != -100).sum() for b in batches).float()
    if accelerator.num_processes > 1:
        dist.all_reduce(t)
    return t


def skip_if_not_finite(accelerator, optimizer, finite: torch.Tensor) -> None:
    """Have the optimizer skip this step on the device when the gradient is not finite.

    Under fp16 the GradScaler does it (it sets ``found_inf`` itself) and DeepSpeed has its
    own overflow check, so both are left alone.
    """
    if accelerator.scaler is not None or is_deepspeed(accelerator):
        return
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.found_inf = (~finite).float()


def host_counts(micro: list[dict]) -> tuple[int, int, int]:
    """(masked tokens, real tokens, padded length) of host-side batches: read before they go
    to the device, so counting costs no sync."""
    return (sum(int((b["mlm_labels"] != -100).sum()) for b in micro),
            sum(int(b["attention_mask"].sum()) for b in micro), micro[0]["attention_mask"].shape[1])


def model_inputs(batch: dict) -> tuple[str, ...]:
    """The fields the model takes: a padded batch's, or a padding-free stream's."""
    return PACKED_INPUTS if "cu_seqlens" in batch else MODEL_INPUTS


def train_step(accelerator, model, forward, optimizer, micro: list[dict], meter: Meter, params: list,
               clip: float, global_batch: int) -> torch.Tensor | None:
    """Forward, backward and optimizer step over ``micro`` (this rank's accumulation batches);
    returns the gradient norm, left on the device.

    ``model`` is the prepared module (its ``no_sync`` drives accumulation), ``forward`` the
    same module compiled, or itself.
    """
    world, accum = accelerator.num_processes, len(micro)
    batches = [{k: b[k].to(accelerator.device, non_blocking=True) for k in model_inputs(b)} for b in micro]
    mlm_den = masked_count(accelerator, batches).clamp(min=1) / (world * accum)
    nsp_den = global_batch / (world * accum)
    grad_norm, finite = None, torch.ones((), dtype=torch.bool, device=accelerator.device)
    for inputs in batches:
        with accelerator.accumulate(model):
            res = forward(**inputs, mlm_denominator=mlm_den, nsp_denominator=nsp_den)
            accelerator.backward(res["loss"])
            finite = finite & torch.isfinite(res["loss"].detach())
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(params, clip or float("inf"))
                if grad_norm is not None and not torch.is_tensor(grad_norm):  # DeepSpeed's own norm, a float
                    grad_norm = torch.full((), float(grad_norm), device=accelerator.device)
                if grad_norm is not None:
                    finite = finite & torch.isfinite(grad_norm)
                skip_if_not_finite(accelerator, optimizer, finite)
                optimizer.step()  # always: under fp16 the scaler's update() must run every step
                optimizer.zero_grad(set_to_none=True)
        meter.add(res)
    meter.add_step(finite, grad_norm)
    return grad_norm
