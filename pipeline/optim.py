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

    Written with ``torch._foreach`` ops over all tensors of a group, with Python scalars or
    device tensors as operands (never a 0-dim tensor where the op wants a number, which makes
    PyTorch read it back with ``.item()``). A ``found_inf`` attribute (set per step, as a
    GradScaler does for fused Adam) makes the step a no-op on the device: the new moments,
    step counts and weights are computed, then *selected* with ``torch.where``, so a NaN or
    inf gradient can never leak into the kept state (``0 * inf`` is NaN; selection is exact).
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
            device = params[0].device
            bad = torch.zeros((), dtype=torch.bool, device=device) if found_inf is None else found_inf.to(device) > 0
            self._step_group(group, params, bad)
        return loss

    def _step_group(self, group: dict, params: list, bad: torch.Tensor) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=torch.zeros((), device=p.device),
                                     exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                     exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        m, v, steps = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]
        new_m = torch._foreach_lerp(m, grads, 1 - beta1)
        new_v = torch._foreach_mul(v, beta2)
        torch._foreach_addcmul_(new_v, grads, grads, value=1 - beta2)
        t = steps[0] + 1
        m_hat = torch._foreach_div(new_m, 1 - torch.pow(beta1, t))
        denom = torch._foreach_sqrt(torch._foreach_div(new_v, 1 - torch.pow(beta2, t)))
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(m_hat, denom)
        torch._foreach_add_(update, params, alpha=group["weight_decay"])
        w_norm, u_norm = torch._foreach_norm(params), torch._foreach_norm(update)
        scale = [torch.where((w > 0) & (u > 0), w / u, torch.ones_like(w)) * -group["lr"] for w, u in zip(w_norm, u_norm)]
        new_p = torch._foreach_add(params, torch._foreach_mul(update, scale))
        for kept, new in ((m, new_m), (v, new_v), (params, new_p)):
            for old, fresh in zip(kept, new):
                old.copy_(torch.where(bad, old, fresh))
        for s in steps:
            s.copy_(torch.where(bad, s, t))


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
