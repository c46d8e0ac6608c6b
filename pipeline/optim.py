"""Optimizers and the learning-rate schedule of pretraining and fine-tuning."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, shape: str = "linear", min_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR at ``step``: linear warmup, then linear or cosine decay.

    A pure function of the step, so a resumed run's schedule cannot drift or reset.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 1.0 - progress if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights, as in BERT."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019): Adam with a per-layer trust ratio, for very large batches.

    Written with ``torch._foreach`` ops over all tensors of a group and no host reads; a
    ``found_inf`` attribute (set per step, as a GradScaler does for fused Adam) turns the
    step into a no-op on the device.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            keep = torch.ones((), device=params[0].device) if found_inf is None else 1.0 - found_inf.to(params[0].device)
            self._step_group(group, params, keep)
        return loss

    def _step_group(self, group: dict, params: list, keep: torch.Tensor) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=torch.zeros((), device=p.device),
                                     exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                     exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_add_([s["step"] for s in states], keep)
        torch._foreach_lerp_(m, grads, (1 - beta1) * keep)  # a skipped step leaves m, v unchanged
        torch._foreach_mul_(v, 1 - (1 - beta2) * keep)
        torch._foreach_addcmul_(v, torch._foreach_mul(grads, (1 - beta2) * keep), grads)
        t = states[0]["step"].clamp(min=1)
        m_hat = torch._foreach_div(m, 1 - beta1 ** t)
        denom = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(v, 1 - beta2 ** t)), group["eps"])
        update = torch._foreach_add(torch._foreach_div(m_hat, denom), params, alpha=group["weight_decay"])
        w_norm, u_norm = torch._foreach_norm(params), torch._foreach_norm(update)
        scale = [torch.where((w > 0) & (u > 0), w / u, torch.ones_like(w)) * (-group["lr"]) * keep
                 for w, u in zip(w_norm, u_norm)]
        torch._foreach_add_(params, torch._foreach_mul(update, scale))


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float, offload: bool = False) -> torch.optim.Optimizer:
    """AdamW (fused) or LAMB; with ZeRO's optimizer offload, DeepSpeed's CPU Adam (several
    times faster than torch's AdamW stepping on the host)."""
    groups = param_groups(model, weight_decay)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    # Fused: one kernel per step on GPU and CPU, and it skips a step flagged by ``found_inf``.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
