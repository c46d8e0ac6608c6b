"""Pretraining throughput and loss: our real training step vs the Hugging Face ways, one run.

trainer:  HF ``Trainer`` + ``DataCollatorForLanguageModeling`` on ``BertForPreTraining`` (full
          MLM head, dynamic padding): how the seeds' notebooks pretrain.
naive:    the same model and collator in a plain Accelerate loop, batches collated by DataLoader
          workers as a stock loop does, the loss read at log steps only.
ours:     ``pipeline.step.train_step`` as ``kowiki-bert pretrain`` runs it: ``MLMNSPCollator``
          (static prediction slots, padding buckets), masked-only head, fused AdamW, tallies on
          the device read every ``--log-every`` steps.
compiled: ours under ``torch.compile`` (applied after ``accelerator.prepare``, static shapes).
padfree:  ours with ``padding_free`` batches (real tokens only; varlen attention on CUDA).
padfree-compiled: the same under ``torch.compile`` (token count dynamic).

Every variant trains the same initial weights on the same examples in the same order, in its
own process (peak memory does not mix), and is timed after warm-up steps. Tokens are real
tokens (no padding), and MFU counts the same useful FLOPs for all (MLM head on the masked 15%),
so the ratios are throughput ratios. The loss is the mean MLM+NSP loss of the last steps.

    python benchmarks/pretrain.py [--data SHARDS] [--variants trainer,naive,ours] [--size tiny]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.measure import ROOT, table  # noqa: E402

LAST = 10  # steps whose mean loss is reported


def sample_shards() -> Path:
    """Shards built by the real stages from the embedded sample (needs datasets, mwparserfromhell)."""
    from pipeline import extract, shard, tokenizer
    from pipeline.run import Config, stage_configs

    out = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    configs = stage_configs(Config(output=str(out)))
    for name, module in (("extract", extract), ("tokenizer", tokenizer), ("shard", shard)):
        module.run(configs[name])
    return out / "shards"


def examples(data: Path, batch: int, steps: int) -> list[list[dict]]:
    from pipeline.data import load_pretraining_dataset

    ds = load_pretraining_dataset(data)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    return [[ds[order[(s * batch + i) % len(ds)]] for i in range(batch)] for s in range(steps)]


def hf_batch(tok, collator, exs: list[dict]) -> dict:
    """The stock collator's batch: dynamic padding, 15% masked over the full sequence."""
    b = collator([{"input_ids": e["input_ids"].tolist(), "token_type_ids": e["token_type_ids"].tolist()} for e in exs])
    b["next_sentence_label"] = torch.tensor([e["next_sentence_label"] for e in exs])
    return b


def useful_flops(cfg, real_tokens: int, seq_len: int) -> float:
    from pipeline.model import train_flops

    return train_flops(cfg, real_tokens, seq_len, round(real_tokens * 0.15))


def child(args) -> None:
    """Train one variant; prints a JSON line with its figures."""
    from accelerate import Accelerator
    from transformers import BertForPreTraining, DataCollatorForLanguageModeling

    from pipeline.data import MLMNSPCollator, load_tokenizer
    from pipeline.model import PreTrainingModel, bert_config, device_peak_flops
    from pipeline.optim import build_optimizer

    data = Path(args.data)
    tok = load_tokenizer(data / "tokenizer")
    seq = json.loads((data / "manifest.json").read_text())["max_seq_len"]
    steps = examples(data, args.batch, args.warmup + args.steps)
    precision = "bf16" if args.bf16 else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=args.device == "cpu")
    torch.manual_seed(0)
    cfg = bert_config(args.size, len(tok), max(512, seq), 0.1, "sdpa", tok.pad_token_id)
    bert = BertForPreTraining(cfg)
    ours = args.variant != "naive" and args.variant != "trainer"
    model = PreTrainingModel(bert) if ours else bert
    if args.variant == "trainer":
        return trainer_child(args, tok, bert, cfg, steps, seq)
    opt = build_optimizer(model, "adamw", args.lr, 0.01, (0.9, 0.98), 1e-6) if ours else \
        torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    model, opt = accelerator.prepare(model, opt)
    if ours:
        from pipeline.step import Meter, host_counts, train_step
        from pipeline.unpadded import mark_dynamic

        stream, compiled = args.variant.startswith("padfree"), args.variant.endswith("compiled")
        forward = torch.compile(model, dynamic=None if stream else False) if compiled else model
        collate = MLMNSPCollator(tok, seed=0, max_seq_len=seq, padding_free=stream,
                                 buckets=(seq,) if compiled and not stream else (seq // 4, seq // 2, seq))
        meter, params = Meter(accelerator.device), list(model.parameters())
    else:
        collate = functools.partial(hf_batch, tok, DataCollatorForLanguageModeling(tok, mlm_probability=0.15))
    loader = torch.utils.data.DataLoader(steps, batch_size=None, collate_fn=collate, num_workers=args.workers,
                                         pin_memory=accelerator.device.type == "cuda")
    losses, tokens, flops, t0, pending = [], 0, 0.0, None, []
    for i, b in enumerate(loader):
        if i == args.warmup:
            sync(accelerator.device)
            if accelerator.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        if ours:
            masked, real, _ = host_counts([b])
            if i == 0 and compiled:  # a stream's token count varies: one dynamic graph from the start
                b = mark_dynamic({k: v.to(accelerator.device) for k, v in b.items()})
            train_step(accelerator, model, forward, opt, [b], meter, params, 1.0, args.batch)
            if (i + 1) % args.log_every == 0 or i + 1 == len(steps):
                t = meter.flush(accelerator, False)
                losses.append((i + 1, t["mlm_sum"] / max(t["mlm_count"], 1) + t["nsp_sum"] / max(t["nsp_count"], 1)))
        else:
            real = int(b["attention_mask"].sum())  # host-side, before the copy
            b = {k: v.to(accelerator.device, non_blocking=True) for k, v in b.items()}
            loss = model(**b).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            pending.append((i + 1, loss.detach()))
            if (i + 1) % args.log_every == 0 or i + 1 == len(steps):  # read back at log steps, as a stock loop logs
                losses += [(step, v.item()) for step, v in pending]
                pending = []
        if i >= args.warmup:
            tokens += real
            flops += useful_flops(cfg, real, seq)
    sync(accelerator.device)
    report(args, time.perf_counter() - t0, tokens, flops, losses, accelerator.device, device_peak_flops(accelerator.device))


def trainer_child(args, tok, bert, cfg, steps, seq) -> None:
    """HF Trainer over the same examples; a callback times the steps after warm-up."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from pipeline.model import device_peak_flops

    stock = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    flat = [e for exs in steps for e in exs]
    clock = {"t0": None}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                sync(torch.device(args.device))
                clock["t0"] = time.perf_counter()

    out = tempfile.mkdtemp(prefix="bench-trainer-")
    targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch, max_steps=len(steps),
                              learning_rate=args.lr, adam_beta2=0.98, adam_epsilon=1e-6, weight_decay=0.01,
                              lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
                              dataloader_num_workers=0, use_cpu=args.device == "cpu", bf16=args.bf16, seed=0,
                              disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=bert, args=targs, train_dataset=flat, callbacks=[Clock()],
                      data_collator=lambda exs: hf_batch(tok, stock, exs))
    trainer.train_dataloader_sampler = None
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(flat)  # the same order as the others
    trainer.train()
    sync(torch.device(args.device))
    seconds = time.perf_counter() - clock["t0"]
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    timed = [e for exs in steps[args.warmup:] for e in exs]
    tokens = sum(len(e["input_ids"]) for e in timed)
    device = torch.device(args.device)
    report(args, seconds, tokens, sum(useful_flops(cfg, len(e["input_ids"]), seq) for e in timed), losses, device,
           device_peak_flops(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def report(args, seconds, tokens, flops, losses, device, peak) -> None:
    tail = [loss for step, loss in losses if step > args.warmup + args.steps - LAST]
    print(json.dumps({"tokens_per_s": tokens / seconds, "flops_per_s": flops / seconds,
                      "mfu": flops / seconds / peak if peak else None, "loss": sum(tail) / max(len(tail), 1),
                      "gpu_peak_mem": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}))


def run_variant(args, variant: str) -> dict:
    import psutil

    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--device", args.device, "--size", args.size,
           "--data", str(args.data), "--steps", str(args.steps), "--batch", str(args.batch), "--warmup", str(args.warmup),
           "--lr", str(args.lr), "--log-every", str(args.log_every), "--workers", str(args.workers)] + (["--bf16"] if args.bf16 else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"{variant} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["rss"] = peak
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a shard-stage output (default: shards built from the embedded sample)")
    ap.add_argument("--variants", default="trainer,naive,ours", help="comma-separated; the first is the baseline")
    ap.add_argument("--size", default="tiny", help="model size preset")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=60, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--workers", type=int, default=4 if torch.cuda.is_available() else 1,
                    help="DataLoader worker processes collating batches (every variant but trainer)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    args.data = args.data or sample_shards()
    names = args.variants.split(",")
    res = {v: run_variant(args, v) for v in names}
    base = res[names[0]]
    rows = []
    for v in names:
        r = res[v]
        mem = r["gpu_peak_mem"] if args.device == "cuda" else r["rss"]
        rows.append([v, f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x",
                     f"{r['mfu']:.1%}" if r["mfu"] else "n/a", f"{mem / 2**20:,.0f}", f"{r['loss']:.3f}"])
    where = (torch.cuda.get_device_name() if args.device == "cuda" else "CPU") + f", BERT-{args.size}, batch {args.batch}"
    print(f"{where}{', bf16' if args.bf16 else ''}; {args.steps} timed steps after {args.warmup}; loss = mean of the last {LAST}")
    print(table(rows, ["variant", "tokens/s (real)", f"vs {names[0]}", "MFU", "peak mem MiB", "loss"]))
    return res


if __name__ == "__main__":
    main()
