"""``kowiki-bert pretrain --dry-run``: the launch arithmetic, resolved before a GPU is held.

World size, accumulation, batch sizes, tokens and FLOPs per step and a memory estimate per
GPU, from the config, the launcher's ``WORLD_SIZE`` and the shards' manifest (or BERT's
defaults when the shards do not exist yet). It creates no process group and touches no GPU,
so every launch line can be checked on a laptop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.model import bert_config, count_params, resolve_source, train_flops

GIB = 1024**3
# The time estimate is labelled as one: dense bf16 peaks (NVIDIA's data sheets) at an assumed
# model-FLOPs utilization. 40% is what tuned BERT pretraining reaches on A100/H100 (MosaicBERT,
# NVIDIA's DeepLearningExamples report 35-50%); a run's own log prints its measured MFU.
ASSUMED_MFU = 0.40
ESTIMATE_GPUS = (("A100", 312e12), ("H100", 989e12))


def plan(cfg, world: int | None = None, zero_stage: int = -1) -> dict:
    """The resolved launch of ``cfg`` (a pretrain Config) on ``world`` processes."""
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    t = cfg.train
    per_step = t.micro_batch_size * world
    if t.global_batch_size % per_step:
        raise PipelineError(f"train.global_batch_size={t.global_batch_size} is not a multiple of micro_batch_size x "
                            f"processes = {t.micro_batch_size} x {world}; change one of them")
    manifest_file = Path(cfg.data) / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    seq, vocab = manifest.get("max_seq_len", t.seq_len or 128), manifest.get("vocab_size", 32000)
    source = source_config(cfg.init_from)
    from pipeline.pretrain import model_dims

    dims = {k: v for k, v in model_dims(cfg).items() if v}
    bert = source or bert_config(cfg.model.size, vocab, max(512, seq), dims=dims)
    architecture = (f"of --init-from {cfg.init_from}" if source else f"model.size {cfg.model.size}"
                    + "".join(f", {k} {v}" for k, v in dims.items())
                    + (f" (--init-from {cfg.init_from} is not on disk yet)" if cfg.init_from else ""))
    slots = -(-max(1, round(seq * t.mlm_probability)) // 8) * 8
    tokens = t.global_batch_size * seq
    dense, embed = count_params(bert)
    flops = train_flops(bert, tokens, seq, round(t.global_batch_size * seq * t.mlm_probability))
    return {"world_size": world, "gradient_accumulation_steps": t.global_batch_size // per_step,
            "micro_batch_size": t.micro_batch_size, "global_batch_size": t.global_batch_size, "seq_len": seq,
            "assumed_shape": not manifest, "tokens_per_step": tokens, "parameters": dense + embed,
            "architecture": architecture,
            "flops_per_step": flops, "max_steps": t.max_steps,
            "hours": {gpu: flops * t.max_steps / (world * peak * ASSUMED_MFU) / 3600 for gpu, peak in ESTIMATE_GPUS},
            "memory_gib_per_gpu": memory_per_gpu(bert, t.micro_batch_size, seq, slots, world, zero_stage)}


def source_config(init_from: str):
    """The architecture ``--init-from`` will bring, when it is on disk already."""
    if not init_from:
        return None
    try:
        file = Path(resolve_source(init_from)) / "config.json"
    except PipelineError:
        return None
    if not file.exists():
        return None
    from transformers import BertConfig

    return BertConfig.from_json_file(str(file))


def memory_per_gpu(bert, micro: int, seq: int, slots: int, world: int, zero_stage: int) -> dict:
    """Bytes per GPU, in GiB: fp32 weights, gradients and Adam moments (16 B a parameter, the
    ZeRO stage dividing what it partitions) plus 16-bit activations (Korthikanti et al. 2022:
    34·s·b·h + 5·a·s²·b bytes per layer) and the fp32 MLM logits of the masked slots."""
    dense, embed = count_params(bert)
    p = dense + embed
    weights, grads, adam = 4 * p, 4 * p, 8 * p
    if zero_stage >= 1:
        adam /= world
    if zero_stage >= 2:
        grads /= world
    if zero_stage >= 3:
        weights /= world
    h, a, layers = bert.hidden_size, bert.num_attention_heads, bert.num_hidden_layers
    activations = layers * (34 * seq * micro * h + 5 * a * seq * seq * micro) + 2 * 4 * micro * slots * bert.vocab_size
    return {"weights": weights / GIB, "gradients": grads / GIB, "optimizer": adam / GIB,
            "activations": activations / GIB, "total": (weights + grads + adam + activations) / GIB}


def show(p: dict) -> str:
    mem = p["memory_gib_per_gpu"]
    shape = f" (no shards yet: assuming seq {p['seq_len']}, vocab 32000)" if p["assumed_shape"] else ""
    return (f"pretrain dry run: {p['world_size']} process(es) x micro-batch {p['micro_batch_size']} x "
            f"{p['gradient_accumulation_steps']} accumulation = global batch {p['global_batch_size']} sequences{shape}\n"
            f"  seq {p['seq_len']}: {p['tokens_per_step']:,} tokens and {p['flops_per_step'] / 1e15:.2f} PFLOP per step; "
            f"{p['parameters'] / 1e6:.1f}M parameters, architecture {p['architecture']}\n"
            f"  memory per GPU, estimated: {mem['total']:.1f} GiB (weights {mem['weights']:.2f}, gradients "
            f"{mem['gradients']:.2f}, optimizer {mem['optimizer']:.2f}, activations {mem['activations']:.2f})\n"
            f"  time for {p['max_steps']:,} steps, estimated at {ASSUMED_MFU:.0%} MFU: "
            + ", ".join(f"{hours(h)} on {p['world_size']} {gpu} ({h * p['world_size']:,.{0 if h * p['world_size'] >= 10 else 1}f} "
                        "GPU-hours)" for gpu, h in p["hours"].items()))


def hours(h: float) -> str:
    return f"{h:.1f} h" if h >= 1 else f"{h * 60:.0f} min"
