"""Launched by tests/test_skipped_steps.py (``accelerate launch ... tests/poisoned_step.py``):
the real setup, optimizer and step of ``pipeline.pretrain`` for three steps, the second with
an infinite loss on rank 0 only. Prints, on rank 0, one JSON line: whether the poisoned step
left weights and optimizer state bit-identical, whether the next step trained, and what the
meter counted."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def tensors(obj) -> list[torch.Tensor]:
    """Every tensor inside a (nested) state dict, cloned, in a fixed order."""
    if torch.is_tensor(obj):
        return [obj.detach().cpu().clone()]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in tensors(x)]
    return []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--optim", default="adamw", help="comma-separated: each is checked in turn, same process")
    ap.add_argument("--precision", default="no")
    args = ap.parse_args()
    for optim in args.optim.split(","):
        check(args.data, optim, args.precision)
    return 0


def check(data: str, optim: str, precision: str) -> None:
    from pipeline.data import MLMNSPCollator, load_pretraining_dataset, load_tokenizer
    from pipeline.distributed import offloads_optimizer
    from pipeline.export import full_state_dict
    from pipeline.model import bert_config, build_model
    from pipeline.optim import build_optimizer
    from pipeline.pretrain import Config, innermost, setup
    from pipeline.step import Meter, train_step

    cfg = Config(data=data, output="unused")
    cfg.optim.name, cfg.train.precision = optim, precision
    cfg.train.micro_batch_size, cfg.train.global_batch_size = 4, 8
    accelerator, accum, _ = setup(cfg)
    tok = load_tokenizer(f"{data}/tokenizer")
    ds = load_pretraining_dataset(data)
    collate = MLMNSPCollator(tok, seed=0, max_seq_len=128, buckets=(32, 64, 128))
    torch.manual_seed(0)
    model = build_model(bert_config("tiny", len(tok), dropout=0.0))
    optimizer = build_optimizer(model, optim, 1e-3, 0.01, (0.9, 0.98), 1e-6, offloads_optimizer(accelerator))
    model, optimizer = accelerator.prepare(model, optimizer)
    meter, params = Meter(accelerator.device), [p for p in model.parameters() if p.requires_grad]
    rank, world = accelerator.process_index, accelerator.num_processes
    poison = {"on": False}

    def forward(**inputs):
        out = model(**inputs)
        if poison["on"] and rank == 0:
            out["loss"] = out["loss"] * float("inf")
        return out

    def step(k: int) -> None:
        micro = [collate([ds[i] for i in range((k * accum * world + a * world + rank) * 4, (k * accum * world + a * world + rank + 1) * 4)])
                 for a in range(accum)]
        train_step(accelerator, model, forward, optimizer, micro, meter, params, 1.0, cfg.train.global_batch_size)

    def state() -> tuple[dict | None, list[torch.Tensor]]:
        inner = getattr(optimizer, "optimizer", optimizer)
        return full_state_dict(accelerator, accelerator.unwrap_model(model).bert), tensors(inner.state_dict())

    step(0)
    w0, o0 = state()
    poison["on"] = True
    step(1)
    poison["on"] = False
    w1, o1 = state()
    step(2)
    w2, o2 = state()
    totals = meter.flush(accelerator, False)
    same = torch.tensor([float(len(o0) == len(o1) and all(torch.equal(a, b) for a, b in zip(o0, o1)))])
    if world > 1:  # each rank holds its own partition of the optimizer state under ZeRO
        torch.distributed.all_reduce(same, op=torch.distributed.ReduceOp.MIN)
    opt_same = bool(same.item())
    if accelerator.is_main_process:
        print(json.dumps({
            "world": world, "optimizer": innermost(optimizer), "precision": str(accelerator.mixed_precision),
            "weights_unchanged": all(torch.equal(w0[k], w1[k]) for k in w0), "optimizer_unchanged": opt_same,
            "optimizer_tensors": len(o0), "trained_after": any(not torch.equal(w1[k], w2[k]) for k in w1),
            "finite_after": all(bool(torch.isfinite(v).all()) for v in w2.values())
                             and all(bool(torch.isfinite(t).all()) for t in o2 if t.is_floating_point()),
            "skipped": totals["skipped"], "worst_run": totals["worst_run"]}), flush=True)
    accelerator.wait_for_everyone()




if __name__ == "__main__":
    sys.exit(main())
