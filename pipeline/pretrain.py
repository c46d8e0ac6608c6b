"""Pretrain stage: BertForPreTraining (MLM+NSP) from the shards, with Accelerate/DeepSpeed.

Run as ``kowiki-bert pretrain ...`` (one process) or ``accelerate launch [--config_file
accelerate_configs/X.yaml] -m pipeline.pretrain ...``. The code reads top to bottom:
setup (launch, config checks) -> build (data, model, optimizer) -> resume -> loop -> export.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import hub, publish, tracking, yardstick
from pipeline.card import pretrain_card
from pipeline.config import fail, option, to_dict
from pipeline.errors import PipelineError
from pipeline.presets import PRESETS
from pipeline.progress import duration
from pipeline.publish import PublishArgs
from pipeline.report import write_pretrain_curves
from pipeline.shards import atomic_write_json, check_not_inputs, output_fingerprint, verify_checksums
from pipeline.tokenizer import tokenizer_hash

# torch, transformers, accelerate and the modules built on them are imported where they are
# used, so that '--help' and config errors answer at once instead of after seconds of imports.

# the probe's default LR by model width (benchmarks/README.md: on BERT-tiny, 2,000 rows x 2 epochs at
# 3e-4 separate a step-0 model from a trained one by 28 points in 10 s; 1,000 x 1 at 5e-5 by 18)
PROBE_LR, PROBE_LR_SMALL, PROBE_SMALL_HIDDEN = 5e-5, 3e-4, 256

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on SIGUSR1/SIGTERM after a checkpoint; requeue to resume


@dataclass
class ModelArgs:
    size: str = option("tiny", "size preset", choices=tuple(PRESETS))
    hidden: int = option(0, "hidden size instead of the preset's (0: the preset's)", bounds="[0, inf)")
    layers: int = option(0, "transformer layers instead of the preset's (0: the preset's)", bounds="[0, inf)")
    heads: int = option(0, "attention heads instead of the preset's (0: the preset's)", bounds="[0, inf)")
    intermediate: int = option(0, "feed-forward size (0: 4 x hidden)", bounds="[0, inf)")
    dropout: float = option(0.1, "hidden and attention dropout while pretraining (Cramming: 0 pays at short budgets)",
                            bounds="[0, 1)")
    export_dropout: float = option(0.1, "dropout written into the exported config, which fine-tuning and the probe use, "
                                        "whatever model.dropout pretrained with", bounds="[0, 1)")
    unigram_bias: bool = option(False, "start the MLM output bias at the training shards' log unigram frequencies, so "
                                       "a fresh model does not spend its first thousands of steps learning them")
    attention: str = option("sdpa", "attention kernel (sdpa: PyTorch fused attention)", choices=("sdpa", "eager"))
    compile: str = option("auto", "torch.compile the model after accelerate.prepare (auto: on CUDA)", choices=("auto", "on", "off"))


@dataclass
class OptimArgs:
    name: str = option("adamw", "optimizer (lamb for very large batches)", choices=("adamw", "lamb"))
    lr: float = option(5e-4, "peak learning rate", bounds="(0, inf)")
    weight_decay: float = option(0.01, "decoupled weight decay (not on biases and LayerNorm)", bounds="[0, inf)")
    beta1: float = option(0.9, "Adam beta1", bounds="[0, 1)")
    beta2: float = option(0.98, "Adam beta2", bounds="[0, 1)")
    eps: float = option(1e-6, "Adam epsilon", bounds="[0, inf)")
    warmup_ratio: float = option(0.01, "share of max_steps spent warming up linearly", bounds="[0, 1)")
    schedule: str = option("linear", "decay after warmup", choices=("linear", "cosine"))
    min_lr_ratio: float = option(0.0, "final LR as a share of the peak", bounds="[0, 1]")
    clip_grad_norm: float = option(1.0, "clip the global gradient norm to this (0: off)", bounds="[0, inf)")


@dataclass
class TrainArgs:
    max_steps: int = option(1000, "optimizer steps to train", bounds="[1, inf)")
    seq_len: int = option(0, "sequence length this recipe is for (0: whatever the shards have); checked against the "
                             "shards, and what --dry-run assumes before they exist", bounds="[0, inf)")
    global_batch_size: int = option(256, "sequences per optimizer step, kept whatever the number of processes", bounds="[1, inf)")
    micro_batch_size: int = option(32, "sequences per process per forward pass", bounds="[1, inf)")
    precision: str = option("auto", "mixed precision (auto: bf16 on GPUs that have it, else no)", choices=("auto", "no", "bf16", "fp16"))
    mlm_probability: float = option(0.15, "share of real tokens masked", bounds="(0, 1)")
    whole_word_mask: bool = option(False, "mask all pieces of a word together")
    mask_share: float = option(0.8, "share of the chosen tokens replaced by [MASK] (BERT: 0.8; 1.0: all-[MASK])", bounds="[0, 1]")
    random_share: float = option(0.1, "share of the chosen tokens replaced by a random token (the rest stay as they are)",
                                 bounds="[0, 1]")
    num_workers: int = option(-1, "data-loading worker processes per rank (-1: 4 on a GPU, 1 on CPU)", bounds="[-1, inf)")
    padding_free: str = option("auto", "compute real tokens only: the batch as one stream of its tokens and attention "
                                       "per sequence (FlashAttention varlen on CUDA); auto: on (it paid on CPU too: "
                                       "benchmarks/README.md)", choices=("auto", "on", "off"))
    pad_buckets: int = option(3, "pad batches to one of this many lengths (max_seq_len, half, quarter...) so compiled steps see few shapes; 0: to the longest example", bounds="[0, 8]")
    log_every: int = option(10, "steps between TensorBoard scalars", bounds="[1, inf)")
    max_bad_steps: int = option(20, "stop after this many consecutive non-finite steps", bounds="[0, inf)")


@dataclass
class EvalArgs:
    every: int = option(500, "steps between evaluations on the held-out shards (0: only at the end)", bounds="[0, inf)")
    batches: int = option(20, "batches per evaluation", bounds="[1, inf)")
    batch_size: int = option(32, "sequences per evaluation batch", bounds="[1, inf)")
    finetune: str = option("", "downstream probe at every evaluation, TASK:TRAIN_FILE:EVAL_FILE (e.g. nsmc:train.tsv:test.tsv): "
                               "a short fine-tune of the current weights on the main process, its score logged")
    finetune_examples: int = option(2000, "probe: training rows used (the label budget)", bounds="[1, inf)")
    finetune_eval_examples: int = option(1000, "probe: evaluation rows used", bounds="[1, inf)")
    finetune_epochs: int = option(2, "probe: fine-tuning epochs", bounds="[1, inf)")
    finetune_lr: float = option(0.0, f"probe: peak learning rate (0: {PROBE_LR_SMALL:g} up to hidden {PROBE_SMALL_HIDDEN}, "
                                     f"where 5e-5 moves a small model little, else {PROBE_LR:g})", bounds="[0, inf)")


@dataclass
class CheckpointArgs:
    save_every: int = option(1000, "steps between checkpoints (0: only at the end and on preemption)", bounds="[0, inf)")
    keep_last: int = option(3, "checkpoints kept", bounds="[1, inf)")
    keep_every: int = option(0, "also keep every step that is a multiple of this (milestones; 0: none)", bounds="[0, inf)")
    export_hf: bool = option(True, "write a Hugging Face export beside each checkpoint")


@dataclass
class Config:
    data: str = option(help="directory written by 'kowiki-bert shard'")
    output: str = option(help="run directory: checkpoints/, tensorboard/, model/, run_info.json")
    seed: int = option(0, "seed of initialization, data order and masking", bounds="[0, inf)")
    resume: str = option("auto", "auto: latest valid checkpoint in output; never; or a checkpoint path")
    dry_run: bool = option(False, "print world size, batch arithmetic, tokens, FLOPs and memory per step, then exit")
    init_from: str = option("", "start this run from these weights (fresh optimizer and schedule): a pretrain output, a "
                                "checkpoint step-N directory, a Hugging Face model directory or a Hub id")
    model: ModelArgs = field(default_factory=ModelArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    publish: PublishArgs = field(default_factory=PublishArgs)

    def __post_init__(self):
        t = self.train
        if t.max_steps < 1:
            fail("train.max_steps", f"is {t.max_steps}", "use 1 or more")
        if t.global_batch_size % t.micro_batch_size:
            fail("train.global_batch_size", f"{t.global_batch_size} is not a multiple of train.micro_batch_size={t.micro_batch_size}",
                 "make it one")
        if not 0 < t.mlm_probability < 1:
            fail("train.mlm_probability", f"is {t.mlm_probability}", "use a value in (0, 1)")
        hidden, _, heads = PRESETS[self.model.size]
        hidden, heads = self.model.hidden or hidden, self.model.heads or heads
        if hidden % heads:
            fail("model.hidden", f"{hidden} is not a multiple of {heads} attention heads", "change model.hidden or model.heads")
        if t.mask_share + t.random_share > 1 + 1e-9:
            fail("train.random_share", f"{t.random_share} with train.mask_share {t.mask_share} exceeds 1",
                 "make the two shares sum to at most 1 (the rest of the chosen tokens stay as they are)")
        if self.model.unigram_bias and self.init_from:
            fail("model.unigram_bias", "starts a fresh model's output bias; --init-from weights keep the bias they trained",
                 "set model.unigram_bias false with --init-from")
        if self.optim.lr <= 0 or not 0 <= self.optim.warmup_ratio < 1:
            fail("optim.lr", "must be > 0 with optim.warmup_ratio in [0, 1)", "fix the value")


ALIASES = {"--data": "data", "--output": "output", "--model-size": "model.size", "--max-steps": "train.max_steps",
           "--save-every": "checkpoint.save_every", "--seed": "seed", "--resume": "resume",
           "--precision": "train.precision", "--global-batch-size": "train.global_batch_size",
           "--micro-batch-size": "train.micro_batch_size", "--lr": "optim.lr", "--dry-run": "dry_run",
           "--init-from": "init_from", **publish.ALIASES}


def setup(cfg: Config):
    """Launch topology, batch arithmetic, precision and the DeepSpeed "auto" values."""
    import torch

    from pipeline.distributed import fill_deepspeed_auto, make_accelerator

    precision = resolved_precision(cfg.train.precision)
    if torch.cuda.is_available():  # TF32 for whatever still runs in fp32 (Ampere and later)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    probe = make_accelerator(precision, 1)
    world = probe.num_processes
    if world == 1 and probe.is_main_process and asked_for_more():
        print("pretrain: warning: accelerate launch was asked for more than one process but started one (its simple "
              "launcher: --cpu or --num_processes without a multi-process mode); this run trains on 1 process. For N "
              "CPU processes use --config_file accelerate_configs/cpu_multiprocess.yaml --num_processes N",
              file=sys.stderr)
    per_step = cfg.train.micro_batch_size * world
    if cfg.train.global_batch_size % per_step:
        raise PipelineError(f"train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
                            f"micro_batch_size x processes = {per_step}; change one of them")
    accum = cfg.train.global_batch_size // per_step
    probe.gradient_accumulation_steps = accum
    probe.gradient_state.plugin_kwargs["num_steps"] = accum
    stage = fill_deepspeed_auto(probe, cfg.train.micro_batch_size, accum, cfg.optim.clip_grad_norm, precision)
    if stage >= 0 and cfg.optim.name == "lamb":
        raise PipelineError("optim.name lamb is refused under DeepSpeed: ZeRO hands the optimizer flattened partitions, "
                            "so LAMB's per-layer trust ratios would be wrong; use optim.name adamw with DeepSpeed, "
                            "or LAMB with a plain (DDP) launch")
    return probe, accum, stage


def asked_for_more() -> bool:
    """accelerate's single-process launcher sets MASTER_PORT only when it was asked for more
    than one process or machine, and never RANK/WORLD_SIZE (torchrun sets those)."""
    env = os.environ
    return "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env and "WORLD_SIZE" not in env


def resolved_precision(precision: str) -> str:
    """"auto": bf16 where the GPU has it, else full precision."""
    import torch

    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def compile_model(model, cfg: Config, accelerator, stage: int):
    """``torch.compile`` after ``accelerator.prepare`` (so DDP overlaps gradient communication
    with the backward), on by default on CUDA: one static graph per pad bucket
    (``dynamic=False``; a padding-free stream keeps its token count dynamic instead). Under
    DeepSpeed the engine compiles its module in place (ZeRO-3's parameter hooks break graphs:
    auto leaves it eager, ``on`` compiles it anyway)."""
    import torch

    from pipeline.distributed import is_deepspeed

    on = cfg.model.compile == "on" or (cfg.model.compile == "auto" and accelerator.device.type == "cuda" and stage < 3)
    if not on:
        return model
    kwargs = {"dynamic": None if padding_free(cfg, accelerator) else False}
    if is_deepspeed(accelerator):
        model.compile(compile_kwargs=kwargs)
        return model
    return torch.compile(model, **kwargs)


def padding_free(cfg: Config, accelerator) -> bool:
    """Whether batches are padding-free streams. auto is on: with CUDA, FlashAttention's varlen
    kernel makes attention as cheap as the rest; on CPU the exact reference attention re-pads
    q/k/v and still measured 1.09-1.56x the padded step's real tokens/s (benchmarks/README.md)."""
    return cfg.train.padding_free != "off"


def warm_up(accelerator, model, forward, collator, eval_collator, cfg: Config, accum: int) -> dict:
    """Run every shape training (and, when compiled under DeepSpeed, evaluation) will see once
    before step 1, so compilation happens here and not in the middle of training: the first
    step's time and the throughput window stay honest. Weights, gradients and the RNG are as
    before. Returns the graphs compiled and the seconds it took."""
    import torch
    from torch._dynamo.utils import counters

    from pipeline.distributed import is_deepspeed
    from pipeline.step import model_inputs
    from pipeline.unpadded import mark_dynamic

    if forward is model and not getattr(accelerator.unwrap_model(model), "_compiled_call_impl", None):
        return {}
    t0, graphs = time.perf_counter(), counters["stats"]["unique_graphs"]
    deepspeed = is_deepspeed(accelerator)
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    # the same kinds of denominators train_step passes (a tensor; a float, which compiled code specializes on)
    dens = {"mlm_denominator": torch.ones((), device=accelerator.device),
            "nsp_denominator": cfg.train.global_batch_size / (accelerator.num_processes * accum)}
    with torch.random.fork_rng(devices=devices):
        for examples in collator.shape_examples(cfg.train.micro_batch_size):
            batch = mark_dynamic({k: v.to(accelerator.device) for k, v in collator(examples).items()})
            out = forward(**{k: batch[k] for k in model_inputs(batch)}, **dens)
            if not deepspeed:  # the engine's backward would step ZeRO's buffers; its backward compiles at step 1
                out["loss"].backward()
        if not deepspeed:
            model.zero_grad(set_to_none=True)
        if deepspeed:  # evaluation runs through the compiled module too
            model.train(False)
            with torch.no_grad():
                for examples in eval_collator.shape_examples(cfg.eval.batch_size):
                    batch = eval_collator(examples)
                    forward(**{k: batch[k].to(accelerator.device) for k in model_inputs(batch)})
            model.train(True)
    return {"graphs": counters["stats"]["unique_graphs"] - graphs, "seconds": round(time.perf_counter() - t0, 3),
            "graphs_so_far": counters["stats"]["unique_graphs"]}


def recompiles(state: dict) -> int:
    """Graphs compiled since ``warm_up`` (0 is the goal: a compile mid-run stalls every rank)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"] - state["compile"]["graphs_so_far"] if state.get("compile") else 0


def buckets(cfg: Config, manifest: dict) -> tuple[int, ...] | None:
    """The few padded lengths batches take (max_seq_len, half of it, ...), or None: pad to
    the longest example."""
    n, top = cfg.train.pad_buckets, manifest["max_seq_len"]
    return tuple(sorted({max(8, top >> i) for i in range(n)})) if n else None


def loader_workers(cfg: Config, accelerator) -> int:
    """Data-loading processes per rank: "auto" (-1) is 4 on a GPU, 1 on CPU."""
    if cfg.train.num_workers >= 0:
        return cfg.train.num_workers
    return 4 if accelerator.device.type == "cuda" else 1


def log_metrics(log, bar, window: dict, seconds: float, steps: int, scheduler, state: dict, cfg: Config,
                peak: float | None, world: int) -> dict:
    """Tracker scalars and the progress bar, or a console line when stderr is a file (a
    SLURM log, where tqdm stays silent), for the ``steps`` since the last log."""
    if log is None:
        return {}
    mlm, nsp = max(window["mlm_count"], 1), max(window["nsp_count"], 1)
    m = {"loss/total": window["mlm_sum"] / mlm + window["nsp_sum"] / nsp, "loss/mlm": window["mlm_sum"] / mlm,
         "loss/nsp": window["nsp_sum"] / nsp, "accuracy/mlm": window["mlm_correct"] / mlm,
         "accuracy/nsp": window["nsp_correct"] / nsp, "optim/lr": scheduler.get_last_lr()[0],
         "optim/grad_norm": window["grad_norm"], "optim/skipped_steps": state["skipped_steps"],
         "perf/tokens_per_second": window["tokens"] / max(seconds, 1e-9),
         "perf/flops_per_second": window["flops"] / max(seconds, 1e-9)}
    if peak:
        m["perf/mfu"] = m["perf/flops_per_second"] / (peak * world)
    log(m, state["step"])
    bar.set_postfix(loss=f"{m['loss/total']:.3f}", mlm_acc=f"{m['accuracy/mlm']:.3f}", lr=f"{m['optim/lr']:.2e}")
    if not sys.stderr.isatty():
        eta = duration(seconds / max(steps, 1) * (cfg.train.max_steps - state["step"]))
        mfu = f", MFU {m['perf/mfu']:.1%}" if "perf/mfu" in m else ""
        print(f"pretrain: step {state['step']}/{cfg.train.max_steps}, loss {m['loss/total']:.4f} (MLM {m['loss/mlm']:.4f}, "
              f"NSP {m['loss/nsp']:.4f}), MLM acc {m['accuracy/mlm']:.3f}, NSP acc {m['accuracy/nsp']:.3f}, "
              f"lr {m['optim/lr']:.2e}, {m['perf/tokens_per_second']:,.0f} tokens/s{mfu}, ETA {eta}", file=sys.stderr, flush=True)
    return m


def innermost(optimizer) -> str:
    """The optimizer class that does the update, under Accelerate's and ZeRO's wrappers."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return type(optimizer).__name__


def run_info(accelerator, cfg: Config, accum: int, stage: int, optimizer_name: str) -> dict:
    import importlib.metadata

    import accelerate
    import torch
    import transformers

    from pipeline.distributed import distributed_type

    try:  # a GPU image may lack DeepSpeed: only its launches need it
        ds_version = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        ds_version = None
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"world_size": accelerator.num_processes, "distributed_type": distributed_type(accelerator),
            "backend": str(getattr(accelerator.state, "backend", None)),
            "mixed_precision": str(accelerator.mixed_precision), "deepspeed_stage": stage if stage >= 0 else None,
            "global_batch_size": cfg.train.global_batch_size, "micro_batch_size": cfg.train.micro_batch_size,
            "gradient_accumulation_steps": accum, "device": str(accelerator.device), "optimizer": optimizer_name,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "accelerate": accelerate.__version__, "deepspeed": ds_version},
            "git_revision": rev, "config": to_dict(cfg)}


def save_checkpoint(accelerator, model, optimizer, scheduler, state: dict, cfg: Config, bert_cfg, tokenizer) -> Path:
    """Write ``checkpoints/step-N`` atomically; every rank takes part."""
    from pipeline import checkpoint as ckpt
    from pipeline.distributed import is_deepspeed
    from pipeline.export import full_state_dict, save_hf

    root = Path(cfg.output) / "checkpoints"
    tmp, final = root / f".tmp-step-{state['step']:08d}", ckpt.step_dir(root, state["step"])
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if is_deepspeed(accelerator):
        model.save_checkpoint(str(tmp / "deepspeed"), tag="state")
    elif accelerator.is_main_process:
        ckpt.save_module(accelerator.unwrap_model(model).bert, tmp / "model.safetensors")
        ckpt.save_torch(optimizer.optimizer.state_dict(), tmp / "optimizer.pt")
        if accelerator.scaler is not None:
            ckpt.save_torch(accelerator.scaler.state_dict(), tmp / "scaler.pt")
    ckpt.save_torch(ckpt.rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if cfg.checkpoint.export_hf:
        weights = full_state_dict(accelerator, accelerator.unwrap_model(model).bert)
        if accelerator.is_main_process:
            save_hf(weights, exported(bert_cfg, cfg), tokenizer, tmp / "hf", card=model_card(cfg, bert_cfg, state))
    if accelerator.is_main_process:
        ckpt.save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_json(tmp / "state.json", state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.seal(tmp, final)
        ckpt.prune(root, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every, state["run"])
        print(f"pretrain: checkpoint {final}", file=sys.stderr, flush=True)
    accelerator.wait_for_everyone()
    return final


def find_resume(accelerator, cfg: Config, run: dict) -> Path | None:
    """The checkpoint to resume from; rank 0 checks it is this run's, every rank gets the answer."""
    from pipeline import checkpoint as ckpt
    from pipeline.distributed import all_reduce_sum

    step = 0.0
    if accelerator.is_main_process:
        path = ckpt.find(Path(cfg.output) / "checkpoints", cfg.resume, run, log=lambda m: print(m, file=sys.stderr))
        step = float(int(path.name.split("-")[1]) + 1) if path else 0.0
    step = int(all_reduce_sum(accelerator, [step])[0])
    if not step:
        return None
    if cfg.resume == "auto":
        return ckpt.step_dir(Path(cfg.output) / "checkpoints", step - 1)
    return Path(cfg.resume)


def run_identity(cfg: Config, bert_cfg, manifest: dict) -> dict:
    """What makes checkpoints one run: resuming or pruning any other run's is refused."""
    dims = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings")
    run = {"seed": cfg.seed, "global_batch_size": cfg.train.global_batch_size,
           "model": dict(size="init-from" if cfg.init_from else cfg.model.size, **{k: getattr(bert_cfg, k) for k in dims}),
           "data": output_fingerprint(manifest), "tokenizer": manifest["tokenizer_hash"]}
    return dict(run, init_from=cfg.init_from) if cfg.init_from else run


def preset_config(cfg: Config, manifest: dict, tokenizer):
    """The architecture of a fresh model: the size preset and any custom dimensions."""
    from pipeline.model import bert_config

    return bert_config(cfg.model.size, manifest["vocab_size"], max(512, manifest["max_seq_len"]), cfg.model.dropout,
                       cfg.model.attention, tokenizer.pad_token_id, model_dims(cfg))


def model_dims(cfg: Config) -> dict:
    m = cfg.model
    return {"hidden": m.hidden, "layers": m.layers, "heads": m.heads, "intermediate": m.intermediate}


def initial_model(cfg: Config, manifest: dict, tokenizer, main: bool, train=None):
    """The model a run starts from (a ``PreTrainingModel`` and its config): a size preset, or
    ``--init-from`` weights (continued pretraining, position embeddings and all), identical
    on every rank."""
    import numpy as np
    import torch

    from pipeline.model import PreTrainingModel, build_model, from_pretrained

    torch.manual_seed(cfg.seed)
    if not cfg.init_from:
        bert_cfg = preset_config(cfg, manifest, tokenizer)
        model = build_model(bert_cfg)
        if cfg.model.unigram_bias:  # Adam moves a bias ~lr per step: from 0 to log p(w) ~ -10 takes 10K steps
            p = yardstick.smoothed_unigram(train.token_counts(bert_cfg.vocab_size, yardstick.UNIGRAM_TOKENS))
            with torch.no_grad():
                model.bert.cls.predictions.bias.copy_(torch.from_numpy(np.log(p)))
        return model, bert_cfg
    bert, fresh = from_pretrained(cfg.init_from, tokenizer, manifest["max_seq_len"], cfg.model.dropout, cfg.model.attention)
    if main:
        print(f"pretrain: initialized from {cfg.init_from} ({bert.config.num_hidden_layers} layers, hidden "
              f"{bert.config.hidden_size}, {bert.config.max_position_embeddings} positions)"
              + (f"; newly initialized: {', '.join(fresh)}" if fresh else ""), file=sys.stderr)
    return PreTrainingModel(bert), bert.config


# Settings a resumed run may change; they apply from the resumed step on (max_steps stretches or
# shortens the LR schedule from there). Any other difference is refused: what the run records
# (run_info.json, the model card) must be what it trained with.
RESUMABLE = ("data", "output", "resume", "dry_run", "train.max_steps", "train.log_every", "train.num_workers",
             "train.max_bad_steps", "train.pad_buckets", "train.padding_free", "train.micro_batch_size",
             "model.compile", "model.attention", "model.export_dropout", "eval.", "checkpoint.", "publish.")


def check_resume_settings(saved: dict | None, now: dict, path: Path) -> None:
    """Refuse to resume with a setting the checkpoint's run did not train with."""
    if not saved:  # a checkpoint from before settings were recorded
        return
    old, new = tracking.flatten(saved), tracking.flatten(now)
    # a setting added after the checkpoint was written trained with its default
    defaults = tracking.flatten(to_dict(Config(data="", output="")))
    old = {**{k: v for k, v in defaults.items() if k not in old}, **old}
    changed = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.startswith(RESUMABLE)]
    if changed:
        raise PipelineError(f"resuming {path} with other settings ({'; '.join(changed[:4])}); a run keeps its settings: "
                            f"pass the old values, or start a new run from it with --init-from {path} and a new --output "
                            f"(settings a resume may change: max_steps, log/eval/checkpoint/tracker options)")


def recipe(cfg: Config, manifest: dict, accelerator) -> dict:
    """How the run trains, as the model card shows it."""
    return {"max sequence length": manifest["max_seq_len"], "global batch (sequences)": cfg.train.global_batch_size,
            "optimizer": f"{cfg.optim.name}, peak LR {cfg.optim.lr:g}, {cfg.optim.schedule} decay, "
                         f"{cfg.optim.warmup_ratio:.0%} warmup", "precision": str(accelerator.mixed_precision),
            "processes": accelerator.num_processes,
            "masking": f"{cfg.train.mlm_probability:.0%}" + (", whole words" if cfg.train.whole_word_mask else "")
                       + f", [MASK]/random/kept {cfg.train.mask_share:.0%}/{cfg.train.random_share:.0%}/"
                         f"{1 - cfg.train.mask_share - cfg.train.random_share:.0%}",
            "dropout": f"{cfg.model.dropout:g} pretraining, {cfg.model.export_dropout:g} in the exported config",
            **({"MLM output bias at start": "log unigram of the training shards"} if cfg.model.unigram_bias and not cfg.init_from else {})}


def exported(bert_cfg, cfg: Config):
    """The config an export carries: the architecture, with the fine-tuning dropout."""
    return bert_cfg.__class__.from_dict({**bert_cfg.to_dict(), "hidden_dropout_prob": cfg.model.export_dropout,
                                         "attention_probs_dropout_prob": cfg.model.export_dropout})


def corpus_of(manifest: dict) -> dict | None:
    """The source the shards were made from, for the card (shards from before it was recorded:
    read from the corpus folder they name, when it is still there)."""
    from pipeline.shards import corpus_summary

    corpus = manifest.get("corpus")
    if corpus is None:
        try:
            corpus = corpus_summary(json.loads((Path(manifest["config"]["corpus"]) / "manifest.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return dict(corpus, tokens=manifest.get("counts", {}).get("train_tokens"))


def model_card(cfg: Config, bert_cfg, state: dict, curves: str | None = None) -> str:
    probe = state.get("probe") if state.get("probe", {}).get("scores") else None
    name = cfg.publish.push_to_hub.split("/")[-1] or f"kowiki-bert {Path(cfg.output).name}"
    return pretrain_card(name=name, license=cfg.publish.license, bert_cfg=bert_cfg, recipe=state["recipe"],
                         step=state["step"], tokens=state["tokens_seen"], eval_metrics=state.get("eval", {}),
                         init_from=cfg.init_from or None, probe=probe, curves=curves, corpus=state.get("corpus"),
                         notes=state.get("notes"), escape_step=state.get("escape_step"))


class RunLog:
    """Every logged value goes to the trackers and to ``train_log.jsonl`` (what the curves are
    drawn from, whatever trackers are on); a resumed run drops the lines past its checkpoint."""

    def __init__(self, cfg: Config, state: dict, out: Path, config: dict):
        self.path = out / "train_log.jsonl"
        kept = [r for r in self.rows() if r["step"] <= state["step"]] if state["step"] and self.path.exists() else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.trackers, state["trackers"] = tracking.start(cfg.publish.log_with, out, cfg.publish.project, out.name, config,
                                                          state.get("trackers"), state["step"] + 1 if state["step"] else None)

    def __call__(self, values: dict, step: int) -> None:
        tracking.log(self.trackers, values, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")

    def rows(self) -> list[dict]:
        """The logged rows; a line torn by a kill mid-write is skipped."""
        rows = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)]

    def close(self) -> None:
        tracking.finish(self.trackers)


def preflight(cfg: Config) -> str:
    """What the real start refuses before step 1, checked by ``--dry-run`` without a process
    group: the shards and their tokenizer, ``--init-from``, and the checkpoints in ``--output``
    (another run's, or this run's with other settings). Shards not built yet are only noted."""
    from pipeline import checkpoint as ckpt
    from pipeline.data import load_tokenizer, pretraining_manifest

    if not (Path(cfg.data) / "manifest.json").exists():
        return f"  checks: {cfg.data} holds no shards yet; the data, --init-from and resume are checked when training starts"
    manifest = pretraining_manifest(cfg.data)
    out = Path(cfg.output).expanduser()
    check_not_inputs(out, [cfg.data] + ([cfg.init_from] if cfg.init_from and Path(cfg.init_from).exists() else []))
    tokenizer = load_tokenizer(Path(cfg.data) / "tokenizer")
    check_tokenizer(cfg.data, manifest, tokenizer)
    train_ds = check_length(cfg, manifest)
    if cfg.init_from:
        _, bert_cfg = initial_model(cfg, manifest, tokenizer, main=False)
    else:
        bert_cfg = preset_config(cfg, manifest, tokenizer)
    path = ckpt.find(out / "checkpoints", cfg.resume, run_identity(cfg, bert_cfg, manifest), log=lambda m: None)
    if path:
        check_resume_settings(json.loads((path / "state.json").read_text()).get("config"), to_dict(cfg), path)
    return (f"  checks passed: {len(train_ds):,} training examples, the shards' tokenizer"
            + (f", --init-from {cfg.init_from}" if cfg.init_from else "")
            + (f"; resumes from {path}" if path else f"; starts at step 0 in {out}"))


def check_length(cfg: Config, manifest: dict):
    """The training split, once the recipe's length and one global batch fit the shards."""
    from pipeline.data import load_pretraining_dataset

    if cfg.train.seq_len and cfg.train.seq_len != manifest["max_seq_len"]:
        raise PipelineError(f"train.seq_len {cfg.train.seq_len} is this recipe's length but {cfg.data} was sharded with "
                            f"--max-seq-len {manifest['max_seq_len']}; shard with --max-seq-len {cfg.train.seq_len} or pass "
                            "--train.seq_len 0")
    train_ds = load_pretraining_dataset(cfg.data, "train")
    if len(train_ds) < cfg.train.global_batch_size:
        raise PipelineError(f"{cfg.data} holds {len(train_ds)} training examples, fewer than one global batch "
                            f"({cfg.train.global_batch_size}); lower train.global_batch_size or shard more text")
    return train_ds


def check_tokenizer(data: str, manifest: dict, tokenizer) -> None:
    tok_dir = Path(data) / "tokenizer"
    digest = tokenizer_hash(tok_dir)
    if digest != manifest["tokenizer_hash"] or len(tokenizer) != manifest["vocab_size"]:
        raise PipelineError(f"{tok_dir} is not the tokenizer the shards were made with (hash {digest}, {len(tokenizer)} "
                            f"pieces; manifest: {manifest['tokenizer_hash']}, {manifest['vocab_size']}); "
                            f"run 'kowiki-bert shard' again to rebuild {data}")


def check_data(accelerator, data: str, manifest: dict, tokenizer) -> None:
    """The shards' own tokenizer and checksums, verified before a step is spent on them."""
    check_tokenizer(data, manifest, tokenizer)
    if accelerator.is_local_main_process:  # one read per node: about 1 s per GB
        t0 = time.time()
        size = verify_checksums(Path(data), manifest, f"re-run 'kowiki-bert shard' with --overwrite true for {data}")
        print(f"pretrain: shard checksums verified ({size / 1e6:.0f} MB in {time.time() - t0:.1f}s)", file=sys.stderr)


def write_status(out: Path, state: str, step: int | None, **extra) -> None:
    """``status.json`` for schedulers; ``attempt`` (KOWIKI_ATTEMPT, set by the SLURM scripts)
    tells this job attempt's status from one an earlier attempt left behind."""
    atomic_write_json(out / "status.json", {"state": state, "step": step,
                                            "attempt": os.environ.get("KOWIKI_ATTEMPT"), "writer": _WRITER, **extra})


_WRITER = f"{socket.gethostname()}:{os.getpid()}:{time.time():.6f}"  # this process, as status.json names it


def owns_status(out: Path) -> bool:
    """Whether ``status.json`` was last written by this process (it started training here)."""
    try:
        return json.loads((out / "status.json").read_text()).get("writer") == _WRITER
    except (OSError, ValueError, AttributeError):
        return False


def load_checkpoint(accelerator, model, optimizer, scheduler, path: Path, cfg: Config) -> dict:
    import torch

    from pipeline import checkpoint as ckpt
    from pipeline.distributed import is_deepspeed

    state = json.loads((path / "state.json").read_text())
    if is_deepspeed(accelerator):
        with ckpt.weights_only_deepspeed_loads(model):
            model.load_checkpoint(str(path / "deepspeed"), tag="state", load_lr_scheduler_states=False)
    else:
        ckpt.load_module(accelerator.unwrap_model(model).bert, path / "model.safetensors")
        optimizer.optimizer.load_state_dict(ckpt.load_torch(path / "optimizer.pt"))
        if accelerator.scaler is not None and (path / "scaler.pt").exists():
            accelerator.scaler.load_state_dict(ckpt.load_torch(path / "scaler.pt"))
    scheduler.load_state_dict(ckpt.load_torch(path / "scheduler.pt"))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if state["world_size"] == accelerator.num_processes and rng_file.exists():
        ckpt.set_rng_state(ckpt.load_torch(rng_file))
    else:  # elastic resume: the data position carries over, dropout streams are re-derived
        torch.manual_seed(hash((cfg.seed, state["step"], accelerator.process_index)) % 2**63)
    return state


def eval_batches(valid, cfg: Config) -> int:
    """Full batches only: the shapes warm_up compiled."""
    return min(cfg.eval.batches, max(1, len(valid) // cfg.eval.batch_size))


def eval_examples(valid, cfg: Config) -> list[dict]:
    """The held-out examples every evaluation reads (the same ones each time)."""
    return [valid[i] for i in range(min(len(valid), eval_batches(valid, cfg) * cfg.eval.batch_size))]


def evaluate(accelerator, model, valid, collator, cfg: Config) -> dict:
    """MLM loss, perplexity and accuracies on the held-out shards (same batches every time)."""
    import torch

    from pipeline.step import MODEL_INPUTS, TALLIES, Meter

    if len(valid) == 0:
        return {}
    bs = cfg.eval.batch_size
    total = eval_batches(valid, cfg)
    per_rank = math.ceil(total / accelerator.num_processes)
    meter = Meter(accelerator.device)
    model.train(False)
    for j in range(per_rank):  # every rank runs the same number of forwards (ZeRO-3 needs it)
        b = accelerator.process_index + j * accelerator.num_processes
        batch = collator([valid[i] for i in range(b % total * bs, min(len(valid), (b % total + 1) * bs))])
        with torch.no_grad():
            out = model(**{k: batch[k].to(accelerator.device) for k in MODEL_INPUTS})
        if b < total:  # the rest only keep ranks in step
            meter.add(out)
    model.train(True)
    sums = meter.flush(accelerator, False)
    mlm_sum, mlm_correct, mlm_count, nsp_sum, nsp_correct, nsp_count = (sums[k] for k in TALLIES)
    mlm_loss = mlm_sum / max(mlm_count, 1)
    return {"mlm_loss": mlm_loss, "perplexity": math.exp(min(mlm_loss, 50)), "mlm_accuracy": mlm_correct / max(mlm_count, 1),
            "nsp_loss": nsp_sum / max(nsp_count, 1), "nsp_accuracy": nsp_correct / max(nsp_count, 1)}


def run(cfg: Config) -> int:
    """Train; a failure leaves ``status.json`` "failed", so no script takes an earlier
    attempt's "finished" or "preempted" for this one's."""
    from pipeline import launch_plan
    from pipeline.distributed import deepspeed_stage, launch_rank

    from pipeline import lock

    if cfg.dry_run:  # once per launch, with the checks the real start makes before step 1
        if launch_rank() == 0:
            print(launch_plan.show(launch_plan.plan(cfg, zero_stage=deepspeed_stage())), flush=True)
            print(preflight(cfg))
        return 0
    if launch_rank() != 0:
        return train(cfg)
    out = Path(cfg.output).expanduser()
    with lock.writer(out, "pretrain"):  # rank 0 of the launch holds the run's folder
        new = not (out / "status.json").exists()
        try:
            return train(cfg)
        except BaseException as err:
            # A folder this start created, or a run it started, says "failed"; a refused start
            # never touches another run's status (what SLURM scripts and afterok chains read).
            if out.is_dir() and (new or owns_status(out)):
                write_status(out, "failed", None, error=(str(err) or type(err).__name__).splitlines()[0])
            raise


def train(cfg: Config) -> int:
    import torch
    from tqdm import tqdm

    from pipeline.data import (
        MLMNSPCollator,
        StepBatches,
        load_pretraining_dataset,
        load_tokenizer,
        pretraining_manifest,
    )
    from pipeline.distributed import StopFlag, is_deepspeed, offloads_optimizer
    from pipeline.export import full_state_dict
    from pipeline.model import device_peak_flops, train_flops
    from pipeline.optim import build_optimizer, lr_factor
    from pipeline.step import Meter, host_counts, train_step

    # --- setup
    accelerator, accum, stage = setup(cfg)
    stop = StopFlag()  # from here on a preemption signal is a request, never a crash
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    out = Path(cfg.output)
    cfg.publish.check()
    manifest = pretraining_manifest(cfg.data)  # a missing --data is named as such, before anything is written
    check_not_inputs(out, [cfg.data] + ([cfg.init_from] if cfg.init_from and Path(cfg.init_from).exists() else []))
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if not main:
        import transformers

        transformers.logging.set_verbosity_error()
    # --- build
    tokenizer = load_tokenizer(Path(cfg.data) / "tokenizer")
    check_data(accelerator, cfg.data, manifest, tokenizer)
    train_ds = check_length(cfg, manifest)
    valid_ds = load_pretraining_dataset(cfg.data, "valid")
    model, bert_cfg = initial_model(cfg, manifest, tokenizer, main, train_ds)
    probe = make_probe(cfg, tokenizer, bert_cfg.hidden_size) if main else None
    run = run_identity(cfg, bert_cfg, manifest)
    torch.manual_seed(cfg.seed * 1_000_003 + rank + 1)  # per-rank dropout streams
    if not is_deepspeed(accelerator):
        model.to(accelerator.device)
    optimizer = build_optimizer(model, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay,
                                (cfg.optim.beta1, cfg.optim.beta2), cfg.optim.eps, offloads_optimizer(accelerator))
    warmup = int(cfg.optim.warmup_ratio * cfg.train.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup, cfg.train.max_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio))
    model, optimizer = accelerator.prepare(model, optimizer)
    # --- resume
    state = {"step": 0, "tokens_seen": 0, "world_size": world, "global_batch_size": cfg.train.global_batch_size,
             "bad_steps": 0, "restarts": 0, "run": run}
    resume_from = find_resume(accelerator, cfg, run)
    if resume_from:
        state = load_checkpoint(accelerator, model, optimizer, scheduler, resume_from, cfg)
        check_resume_settings(state.get("config"), to_dict(cfg), resume_from)
        state.update(world_size=world, restarts=state.get("restarts", 0) + 1, run=run)
        if main:
            print(f"pretrain: resumed from {resume_from} at step {state['step']}", file=sys.stderr)
    state["recipe"], state["config"] = recipe(cfg, manifest, accelerator), to_dict(cfg)
    state["corpus"] = corpus_of(manifest)
    info = run_info(accelerator, cfg, accum, stage, innermost(optimizer))
    log = RunLog(cfg, state, out, info["config"]) if main else None  # continues the run's W&B/MLflow runs
    if main:
        atomic_write_json(out / "run_info.json", dict(info, resumed_from=str(resume_from) if resume_from else None,
                                                      trackers=state["trackers"]))
        write_status(out, "running", state["step"])
    # --- loop
    forward = compile_model(model, cfg, accelerator, stage)
    collator = MLMNSPCollator(tokenizer, cfg.train.mlm_probability, cfg.seed, cfg.train.whole_word_mask,
                              max_seq_len=manifest["max_seq_len"], buckets=buckets(cfg, manifest),
                              padding_free=padding_free(cfg, accelerator), shares=(cfg.train.mask_share, cfg.train.random_share))
    eval_collator = yardstick.eval_collator(tokenizer, manifest["max_seq_len"], buckets(cfg, manifest))
    if main:
        state["baseline"] = yardstick.baseline(train_ds, eval_examples(valid_ds, cfg), eval_collator)
    state["compile"] = warm_up(accelerator, model, forward, collator, eval_collator, cfg, accum)
    if main and state["compile"]:
        print(f"pretrain: compiled {state['compile']['graphs']} graphs before step 1 in {state['compile']['seconds']:.1f}s",
              file=sys.stderr, flush=True)
    workers = loader_workers(cfg, accelerator)
    batches = iter(torch.utils.data.DataLoader(
        StepBatches(train_ds, collator, cfg.seed, cfg.train.global_batch_size, cfg.train.micro_batch_size, accum, rank, world),
        batch_size=None, sampler=range(state["step"] * accum, cfg.train.max_steps * accum),
        num_workers=workers, prefetch_factor=4 if workers else None, pin_memory=accelerator.device.type == "cuda",
        worker_init_fn=StopFlag.ignore_in_worker, generator=torch.Generator().manual_seed(cfg.seed)))  # leaves the global (dropout) RNG untouched
    peak = device_peak_flops(accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=cfg.train.max_steps, initial=state["step"], desc="pretrain", disable=not main or None,
               file=sys.stderr, dynamic_ncols=True)
    meter, window = Meter(accelerator.device), {}
    # A resumed step is saved already: a finished run run again must not re-save (delete, then
    # rewrite) the only checkpoint it has.
    t_log, logged_at, preempted, metrics = time.time(), state["step"], False, {}
    last_saved = state["step"] if resume_from else -1
    while state["step"] < cfg.train.max_steps:
        micro = [next(batches) for _ in range(accum)]
        masked, real, length = host_counts(micro)
        meter.add_host(real, train_flops(bert_cfg, real, length, masked))
        train_step(accelerator, model, forward, optimizer, micro, meter, params, cfg.optim.clip_grad_norm,
                   cfg.train.global_batch_size)
        scheduler.step()
        state["step"] += 1
        bar.update(1)
        last = state["step"] == cfg.train.max_steps
        saving = cfg.checkpoint.save_every and state["step"] % cfg.checkpoint.save_every == 0
        evaluating = cfg.eval.every and state["step"] % cfg.eval.every == 0 and not last
        if state["step"] % cfg.train.log_every and not (last or saving or evaluating):
            continue  # between flushes nothing waits on the device
        totals = meter.flush(accelerator, stop.raised != 0)
        state["tokens_seen"] += int(totals["tokens"])
        state["skipped_steps"] = state.get("skipped_steps", 0) + int(totals["skipped"])
        if totals["worst_run"] > cfg.train.max_bad_steps:
            raise PipelineError(f"training diverged: {int(totals['worst_run'])} non-finite steps in a row by step {state['step']}; "
                                f"lower optim.lr, raise optim.warmup_ratio, or use train.precision bf16 instead of fp16")
        for k, v in totals.items():
            window[k] = window.get(k, 0.0) + v if k not in ("grad_norm", "worst_run", "stop") else v
        if state["step"] % cfg.train.log_every == 0 or last:
            metrics = log_metrics(log, bar, window, time.time() - t_log, state["step"] - logged_at, scheduler, state,
                                  cfg, peak, world)
            window, t_log, logged_at = {}, time.time(), state["step"]
        if evaluating:  # eager (uncompiled) unless DeepSpeed compiled in place: no recompile either way
            paused = time.time()
            evaluate_and_probe(accelerator, model, valid_ds, eval_collator, cfg, state, log, probe, bert_cfg)
            t_log += spent(state, "eval", paused)  # throughput and MFU count training time only
        if totals["stop"]:
            preempted = True
            break
        if saving:
            paused = time.time()
            save_checkpoint(accelerator, model, optimizer, scheduler, state, cfg, bert_cfg, tokenizer)
            last_saved = state["step"]
            t_log += spent(state, "checkpoint", paused)
    bar.close()
    if last_saved != state["step"] and state["step"] > 0:
        save_checkpoint(accelerator, model, optimizer, scheduler, state, cfg, bert_cfg, tokenizer)
    if preempted:
        if main:
            log.close()
            write_status(out, "preempted", state["step"])
            print(f"pretrain: stopped by signal at step {state['step']} after a checkpoint; "
                  f"run again (or requeue) to resume, exit code {EXIT_PREEMPTED}", file=sys.stderr)
        return EXIT_PREEMPTED
    if state["compile"]:
        state["compile"]["during_training"] = recompiles(state)
        if main and state["compile"]["during_training"]:
            print(f"pretrain: warning: {state['compile']['during_training']} graphs were compiled during training "
                  "(a shape or mode warm_up did not cover)", file=sys.stderr, flush=True)
    # --- evaluate and export
    evaluate_and_probe(accelerator, model, valid_ds, eval_collator, cfg, state, log, probe, bert_cfg)
    weights = full_state_dict(accelerator, accelerator.unwrap_model(model).bert)
    if main:
        log.close()
        finish(cfg, state, metrics, weights, bert_cfg, tokenizer, log.rows())
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def spent(state: dict, what: str, since: float) -> float:
    """Seconds since ``since``, added to ``state["seconds"][what]`` (evaluation and
    checkpoint time, reported apart from training time)."""
    seconds = time.time() - since
    totals = state.setdefault("seconds", {})
    totals[what] = round(totals.get(what, 0.0) + seconds, 3)
    return seconds


def make_probe(cfg: Config, tokenizer, hidden: int):
    """The downstream probe, its files read and checked before the first step."""
    if not cfg.eval.finetune:
        return None
    from pipeline.finetune import Probe

    e = cfg.eval
    lr = e.finetune_lr or (PROBE_LR_SMALL if hidden <= PROBE_SMALL_HIDDEN else PROBE_LR)
    return Probe(e.finetune, tokenizer, e.finetune_examples, e.finetune_eval_examples, e.finetune_epochs, lr, cfg.seed)


def evaluate_and_probe(accelerator, model, valid, collator, cfg: Config, state: dict, log, probe, bert_cfg) -> None:
    """Held-out MLM/NSP metrics and, with ``--eval.finetune``, the downstream probe's score;
    logged, printed and kept in ``state`` (so checkpoints and the model card carry them)."""
    from pipeline.export import full_state_dict

    ev = evaluate(accelerator, model, valid, collator, cfg)
    base = state.get("baseline")
    if ev and base:  # beside the yardstick: what context-free prediction scores, and the NotNext share
        ev.update(context_free_mlm_loss=base["context_free_mlm_loss"],
                  context_free_gap=ev["mlm_loss"] - base["context_free_mlm_loss"], nsp_not_next_share=base["not_next_share"])
        if "escape_step" not in state and yardstick.escaped(ev["mlm_loss"], base["context_free_mlm_loss"]):
            state["escape_step"] = state["step"]
            print(f"pretrain: step {state['step']}: held-out MLM loss {ev['mlm_loss']:.3f} is more than "
                  f"{yardstick.ESCAPE_MARGIN} nats below the context-free baseline {base['context_free_mlm_loss']:.3f}: "
                  "the model uses context (escape step)", file=sys.stderr, flush=True)
    state["eval"] = ev
    if ev and "eval_first" not in state:
        state["eval_first"] = dict(ev, step=state["step"])
    if ev and log:
        log({f"eval/{k}": v for k, v in ev.items()}, state["step"])
        print(f"pretrain: eval at step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()),
              file=sys.stderr, flush=True)
    if not cfg.eval.finetune:
        return
    weights = full_state_dict(accelerator, accelerator.unwrap_model(model).bert)  # every rank: a collective under ZeRO
    if probe is not None:
        t0 = time.time()
        score = probe.score(weights, exported(bert_cfg, cfg), accelerator.device)
        record = state.setdefault("probe", {"task": probe.task, "metric": probe.metric, "scores": []})
        record["scores"] = [s for s in record["scores"] if s[0] < state["step"]] + [[state["step"], score]]
        log({f"probe/{probe.task}_{probe.metric}": score}, state["step"])
        print(f"pretrain: probe at step {state['step']}: {probe.task} {probe.metric} {score:.4f} "
              f"({len(probe.data[2])} training rows, {time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
    accelerator.wait_for_everyone()


def learning_note(state: dict, vocab_size: int) -> str | None:
    """A run whose held-out MLM loss rose, or ends above a uniform guess over the vocabulary
    (what a step-0 model scores), learned nothing that carries to new text: said in the console
    and on the card, never left for a user to find in the curves."""
    first, last = state.get("eval_first", {}), state.get("eval", {})
    if "mlm_loss" not in last or not math.isfinite(last["mlm_loss"]):
        return None
    uniform = math.log(vocab_size)
    rose = first.get("step", state["step"]) < state["step"] and last["mlm_loss"] > first["mlm_loss"]
    if last["mlm_loss"] < uniform and not rose:
        return None
    tokens = (state.get("corpus") or {}).get("tokens")
    return (f"held-out MLM loss {last['mlm_loss']:.2f} at step {state['step']:,}"
            + (f" rose from {first['mlm_loss']:.2f} at step {first['step']:,}" if rose else "")
            + f" (a uniform guess over the {vocab_size:,}-piece vocabulary scores {uniform:.2f}): the model memorized "
            + (f"its {tokens:,} training tokens" if tokens else "its training text")
            + " instead of learning the language. This is a smoke run, too small to learn from; shard more text "
              "for a usable model.")


def nsp_note(state: dict) -> str | None:
    """NSP accuracy no better than always answering the eval pairs' majority label: not learned."""
    ev = state.get("eval", {})
    share, accuracy = ev.get("nsp_not_next_share"), ev.get("nsp_accuracy")
    if share is None or accuracy is None or not math.isfinite(share):
        return None
    majority = max(share, 1 - share)
    if accuracy > majority + 0.02:
        return None
    return (f"NSP accuracy {accuracy:.3f} is no better than always answering the majority label ({majority:.3f}: "
            f"NotNext is {share:.1%} of the eval pairs): next sentence prediction was not learned on this data "
            "(consecutive sentences of its documents may not follow each other, or the run was too short).")


def finish(cfg: Config, state: dict, metrics: dict, weights: dict, bert_cfg, tokenizer, rows: list[dict]) -> None:
    """On the main process: the model with its card and curves, metrics.json, status, and the Hub."""
    from pipeline.export import save_hf

    out = Path(cfg.output)
    state["notes"] = [n for n in (learning_note(state, bert_cfg.vocab_size), nsp_note(state)) if n]
    for note in state["notes"]:
        print(f"pretrain: note: {note}", file=sys.stderr)
    curves = out / "curves.png"
    drawn = write_pretrain_curves(curves, rows)
    save_hf(weights, exported(bert_cfg, cfg), tokenizer, out / "model", card=model_card(cfg, bert_cfg, state, "curves.png" if drawn else None),
            files={"curves.png": curves} if drawn else {})
    ev = state.get("eval", {})
    summary = {"step": state["step"], "tokens_seen": state["tokens_seen"], "train": metrics, "eval": ev,
               "escape_step": state.get("escape_step"), "notes": state["notes"],
               "probe": state.get("probe"), "compile": state.get("compile"), "seconds": state.get("seconds")}
    atomic_write_json(out / "metrics.json", summary)
    write_status(out, "finished", state["step"])
    held_out = (f"eval MLM loss {ev['mlm_loss']:.3f} (ppl {ev['perplexity']:.1f}), NSP acc {ev['nsp_accuracy']:.3f}"
                if ev else "no held-out examples to evaluate (the shards' valid split is empty)")
    print(f"pretrain: {state['step']} steps, {held_out} -> {out / 'model'}", file=sys.stderr)
    if cfg.publish.push_to_hub:
        url = hub.push(out / "model", cfg.publish.push_to_hub, cfg.publish.hub_private, f"kowiki-bert pretrain, step {state['step']}")
        print(f"pretrain: pushed {out / 'model'} to {url}", file=sys.stderr)


if __name__ == "__main__":
    from pipeline.cli import stage_main

    sys.exit(stage_main("pipeline.pretrain", prog="pretrain"))
