"""Pretraining throughput: our training step vs a naive Hugging Face baseline, in one run.

ours:  ``PreTrainingModel`` (MLM head on masked positions only), SDPA attention, batches padded
       to their longest example by ``MLMNSPCollator``, fused AdamW on GPU.
naive: stock ``BertForPreTraining`` with eager attention over batches padded to max_seq_len by
       the stock ``DataCollatorForLanguageModeling`` (its NSP labels passed alongside).

On CPU it trains a tiny model and reports achieved FLOP/s; with CUDA it also runs BERT-base at
sequence length 128 in bf16 and reports MFU against the device's dense bf16 peak. Each variant
runs in its own process so the peak-memory figures do not mix.

    python benchmarks/pretrain.py [--data SHARDS_DIR] [--steps 30] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.measure import table  # noqa: E402


def sample_shards() -> Path:
    from pipeline import extract, shard, tokenizer
    from pipeline.run import Config, stage_configs

    out = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    configs = stage_configs(Config(output=str(out)))
    for name, module in (("extract", extract), ("tokenizer", tokenizer), ("shard", shard)):
        module.run(configs[name])
    return out / "shards"


def batches(data: Path, variant: str, batch: int, steps: int, seq_len: int):
    from transformers import DataCollatorForLanguageModeling

    from pipeline.data import MLMNSPCollator, load_pretraining_dataset, load_tokenizer

    ds = load_pretraining_dataset(data)
    tok = load_tokenizer(data / "tokenizer")
    ours = MLMNSPCollator(tok, seed=0)
    stock = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    out = []
    for s in range(steps):
        exs = [ds[(s * batch + i) % len(ds)] for i in range(batch)]
        if variant == "ours":
            out.append(ours(exs))
            continue
        padded = tok.pad([{k: e[k].tolist() for k in ("input_ids", "token_type_ids", "attention_mask")} for e in exs],
                         padding="max_length", max_length=seq_len, return_tensors="pt")
        b = stock([{k: padded[k][i] for k in padded} for i in range(batch)])
        b["token_type_ids"] = padded["token_type_ids"]
        b["next_sentence_label"] = torch.tensor([e["next_sentence_label"] for e in exs])
        out.append(b)
    return tok, out


def child(args) -> None:
    """Time one variant; prints a JSON line."""
    from transformers import BertForPreTraining

    from pipeline.model import PreTrainingModel, bert_config, device_peak_flops, train_flops
    from pipeline.optim import build_optimizer

    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    tok, data = batches(Path(args.data), args.variant, args.batch, args.steps + args.warmup, args.seq_len)
    cfg = bert_config(args.size, len(tok), attention="sdpa" if args.variant == "ours" else "eager", dropout=0.1)
    torch.manual_seed(0)
    bert = BertForPreTraining(cfg)
    model = (PreTrainingModel(bert) if args.variant == "ours" else bert).to(device)
    if args.compile and args.variant == "ours":
        model = torch.compile(model)
    opt = build_optimizer(model, "adamw", 1e-4, 0.01, (0.9, 0.98), 1e-6)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    flops = tokens = 0
    for i, b in enumerate(data):
        if i == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        with amp:
            loss = model(**b)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            real = int(b["attention_mask"].sum())
            masked = int((b["labels"] != -100).sum())
            tokens += real
            # executed model FLOPs: what each variant really computes (padding and full head included)
            shape = b["input_ids"].shape
            flops += train_flops(cfg, shape[0] * shape[1], shape[1], masked, full_head=args.variant != "ours")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = device_peak_flops(device)
    print(json.dumps({"tokens_per_s": tokens / seconds, "flops_per_s": flops / seconds,
                      "mfu": flops / seconds / peak if peak else None,
                      "gpu_peak_mem": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}))


def run_variant(args, variant: str, device: str, size: str, bf16: bool) -> dict:
    from benchmarks.measure import ROOT

    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--device", device, "--size", size,
           "--data", str(args.data), "--steps", str(args.steps), "--batch", str(args.batch), "--warmup", str(args.warmup),
           "--seq-len", str(args.seq_len)] + (["--bf16"] if bf16 else []) + (["--compile"] if args.compile else [])
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a shard-stage output (default: shards built from the embedded sample)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="torch.compile our model")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="ours")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    if args.child:
        return child(args)
    args.data = args.data or sample_shards()
    setups = [("cpu", "tiny", False)]
    if torch.cuda.is_available():
        setups.append(("cuda", "base", True))
    rows = []
    for device, size, bf16 in setups:
        res = {v: run_variant(args, v, device, size, bf16) for v in ("naive", "ours")}
        for v in ("naive", "ours"):
            r = res[v]
            mem = r["gpu_peak_mem"] if device == "cuda" else r["rss"]
            rows.append([f"{v} ({device}, {size}{', bf16' if bf16 else ''})", f"{r['tokens_per_s']:.0f}",
                         f"{r['flops_per_s'] / 1e9:.1f}", f"{r['mfu']:.1%}" if r["mfu"] else "n/a (CPU)",
                         f"{mem / 2**20:.0f}"])
        rows.append([f"  ratio ours/naive ({device})", f"{res['ours']['tokens_per_s'] / res['naive']['tokens_per_s']:.2f}x",
                     "", "", ""])
    print(table(rows, ["variant", "tokens/s (real)", "GFLOP/s executed", "MFU", "peak mem MiB"]))
    if not torch.cuda.is_available():
        print("\nGPU figures (BERT-base, seq 128, bf16, MFU vs dense bf16 peak) need a CUDA device: pending here.")


if __name__ == "__main__":
    main()
