"""Fine-tune stage: a BERT directory on a Korean downstream task, with metrics and a report.

Any local Hugging Face BERT directory with a tokenizer works as ``--model`` (ours or another);
``--init random`` trains the same architecture from scratch, the control that shows what
pretraining bought. Several ``--seed`` values give mean +- std.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import hub, publish, tracking
from pipeline.card import finetune_card
from pipeline.config import fail, load_config, option, to_dict
from pipeline.errors import PipelineError
from pipeline.publish import PublishArgs
from pipeline.report import write_curve, write_report
from pipeline.shards import (
    MANIFEST,
    atomic_write_json,
    check_not_inputs,
    differences,
    file_sha256,
    recover_swap,
    swap_dir,
    tree_sha256,
)
from pipeline.tasks import TASKS, is_official, label_ids, load_rows

# torch, transformers and accelerate are imported where they are used, so that '--help' and
# config errors answer at once.


@dataclass
class Config:
    model: str = option(help="Hugging Face BERT directory with its tokenizer (e.g. pretrain's OUTPUT/model)")
    task: str = option(help="task and file layout", choices=tuple(TASKS))
    train: str = option(help="training file")
    eval: str = option(help="evaluation file")
    output: str = option(help="directory for metrics.json, report.md, learning_curve.png and model/")
    init: str = option("pretrained", "start from the pretrained weights or from random ones", choices=("pretrained", "random"))
    seeds: list[int] = option(default_factory=lambda: [42], help="one or more seeds, comma-separated; several give mean +- std", bounds="[0, inf)")
    epochs: int = option(3, "training epochs", bounds="[1, inf)")
    lr: float = option(5e-5, "peak learning rate", bounds="(0, inf)")
    batch_size: int = option(32, "sequences per optimizer step (over all processes)", bounds="[1, inf)")
    eval_batch_size: int = option(128, "sequences per evaluation batch", bounds="[1, inf)")
    max_seq_len: int = option(128, "truncate inputs to this many tokens", bounds="[8, inf)")
    warmup_ratio: float = option(0.1, "share of steps with linear warmup", bounds="[0, 1)")
    weight_decay: float = option(0.01, "decoupled weight decay", bounds="[0, inf)")
    clip_grad_norm: float = option(1.0, "gradient clipping (0: off)", bounds="[0, inf)")
    precision: str = option("no", "mixed precision", choices=("no", "bf16", "fp16"))
    early_stopping: int = option(0, "stop after this many epochs without improvement (0: off)", bounds="[0, inf)")
    max_train_examples: int = option(0, "train on a seeded sample of this many rows (0: all)", bounds="[0, inf)")
    max_eval_examples: int = option(0, "evaluate on the first this many rows (0: all)", bounds="[0, inf)")
    text_column: str = option("text", "generic task: column of the (first) sentence")
    pair_column: str = option("", "generic task: column of the second sentence, if pairs")
    label_column: str = option("label", "generic task: column of the label")
    overwrite: bool = option(False, "replace an output fine-tuned from another model, data or settings (the new one "
                                    "is built beside it and swapped in when complete)")
    publish: PublishArgs = field(default_factory=PublishArgs)

    def __post_init__(self):
        if self.epochs < 1:
            fail("epochs", f"is {self.epochs}", "use 1 or more")
        if not self.seeds:
            fail("seeds", "is empty", "give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            fail("seeds", f"repeats a seed ({','.join(map(str, self.seeds))})", "give each seed once")
        if self.batch_size < 1 or self.lr <= 0:
            fail("batch_size", "batch_size and lr must be positive", "fix them")


ALIASES = {"--model": "model", "--task": "task", "--train": "train", "--eval": "eval", "--output": "output",
           "--epochs": "epochs", "--seed": "seeds", "--init": "init", "--text-column": "text_column",
           "--pair-column": "pair_column", "--label-column": "label_column", **publish.ALIASES}


def prepare_data(cfg: Config, tokenizer):
    """Read, check and tokenize both files before any training starts."""
    spec = TASKS[cfg.task]
    kw = dict(text_column=cfg.text_column, pair_column=cfg.pair_column, label_column=cfg.label_column)
    train_rows, eval_rows = load_rows(cfg.task, cfg.train, **kw), load_rows(cfg.task, cfg.eval, **kw)
    names, y_train, y_eval = label_ids(spec, train_rows, eval_rows, cfg.eval)
    keep = list(range(len(train_rows.text)))
    if cfg.max_train_examples and len(keep) > cfg.max_train_examples:
        keep = sorted(random.Random(0).sample(keep, cfg.max_train_examples))
    n_eval = min(len(eval_rows.text), cfg.max_eval_examples or len(eval_rows.text))

    def encode(rows, idx, labels):
        pair = [rows.pair[i] for i in idx] if rows.pair else None
        enc = tokenizer([rows.text[i] for i in idx], pair, truncation=True, max_length=cfg.max_seq_len)
        return [{**{k: enc[k][j] for k in enc}, "labels": labels[i]} for j, i in enumerate(idx)]

    binary = eval_rows.binary[:n_eval] if eval_rows.binary else None
    return spec, spec.shown_names(names), encode(train_rows, keep, y_train), encode(eval_rows, range(n_eval), y_eval), binary


def build_model(cfg: Config, num_labels: int, regression: bool):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    kw = dict(num_labels=num_labels, problem_type="regression" if regression else "single_label_classification")
    if cfg.init == "random":
        return AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(cfg.model, **kw))
    return AutoModelForSequenceClassification.from_pretrained(cfg.model, **kw)


def collate_fn(tokenizer, regression: bool):
    import torch
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)

    def collate(rows):
        batch = pad([{k: v for k, v in r.items() if k != "labels"} for r in rows])
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.float if regression else torch.long)
        return batch

    return collate


def evaluate(model, loader, regression: bool, binary, num_labels: int, gather=lambda t: t) -> dict:
    """Metrics over the loader; ``gather`` collects every rank's part (Accelerate's
    ``gather_for_metrics``) when the loader is sharded."""
    import torch

    from pipeline.scoring import classification_metrics, regression_metrics

    model.eval()
    preds, labels = [], []
    for batch in loader:
        with torch.no_grad():
            logits = model(**batch).logits
        logits, y = gather((logits.float(), batch["labels"]))
        preds.append(logits.cpu())
        labels.append(y.cpu())
    model.train()
    logits, y = torch.cat(preds), torch.cat(labels)
    if regression:
        pred = logits.squeeze(-1)
        metrics = regression_metrics(y.numpy(), pred.numpy(), binary)
        metrics["loss"] = float(torch.nn.functional.mse_loss(pred, y))
    else:
        metrics = classification_metrics(y.numpy(), logits.argmax(-1).numpy(), num_labels)
        metrics["loss"] = float(torch.nn.functional.cross_entropy(logits, y))
    return metrics


def train_epoch(model, loader, optimizer, scheduler, backward, clip: float, clip_fn, desc: str = "", show: bool = False) -> float:
    """One pass over ``loader``; the mean training loss."""
    from tqdm import tqdm

    loss_sum, n = 0.0, 0
    for batch in tqdm(loader, desc=desc, disable=not show or None, file=sys.stderr, leave=False):
        loss = model(**batch).loss
        backward(loss)
        if clip:
            clip_fn(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, n = loss_sum + float(loss.detach()), n + 1
        if not math.isfinite(loss_sum):
            raise PipelineError(f"fine-tuning diverged: the training loss is {loss_sum} after {n} steps; lower --lr "
                                "(or --precision no instead of fp16)")
    return loss_sum / max(n, 1)


def optimizer_and_schedule(model, cfg: Config, steps: int):
    """AdamW with linear warmup and decay over ``steps``: the fine-tuning recipe."""
    import torch

    from pipeline.optim import build_optimizer, lr_factor

    optimizer = build_optimizer(model, "adamw", cfg.lr, cfg.weight_decay, (0.9, 0.999), 1e-8)
    warmup = int(cfg.warmup_ratio * steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, steps))


def train_seed(accelerator, cfg: Config, seed: int, data, tokenizer, out: Path, trackers=(), step0: int = 0) -> dict:
    """Train one seed; keeps the best epoch's model in ``out/model``; returns its history."""
    import torch
    from accelerate.utils import set_seed

    from pipeline.distributed import fill_deepspeed_auto
    from pipeline.export import full_state_dict, save_hf

    spec, names, train, evals, binary = data
    num_labels = 1 if spec.regression else len(names)
    set_seed(seed)
    model = build_model(cfg, num_labels, spec.regression)
    if names:
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}
    per_device = max(1, cfg.batch_size // accelerator.num_processes)
    collate = collate_fn(tokenizer, spec.regression)
    g = torch.Generator().manual_seed(seed)
    train_dl = torch.utils.data.DataLoader(train, batch_size=per_device, shuffle=True, collate_fn=collate, generator=g)
    eval_dl = torch.utils.data.DataLoader(evals, batch_size=cfg.eval_batch_size, collate_fn=collate)
    fill_deepspeed_auto(accelerator, per_device, 1, cfg.clip_grad_norm, cfg.precision)
    optimizer, scheduler = optimizer_and_schedule(model.to(accelerator.device), cfg, cfg.epochs * math.ceil(len(train) / cfg.batch_size))
    model, optimizer, train_dl, eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)
    history, best, best_value, stale = [], None, -math.inf, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        train_loss = train_epoch(model, train_dl, optimizer, scheduler, accelerator.backward, cfg.clip_grad_norm,
                                 accelerator.clip_grad_norm_, f"finetune seed {seed} epoch {epoch}", accelerator.is_main_process)
        metrics = evaluate(model, eval_dl, spec.regression, binary, num_labels, accelerator.gather_for_metrics)
        row = {"epoch": epoch, "train_loss": train_loss, "eval_loss": metrics.pop("loss"),
               **metrics, "seconds": time.time() - t0}
        history.append(row)
        prefix = f"seed-{seed}/" if len(cfg.seeds) > 1 else ""
        tracking.log(trackers, {f"{prefix}{k}": v for k, v in row.items() if k != "seconds"}, step0 + epoch)
        if accelerator.is_main_process:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"finetune: seed {seed} epoch {epoch}: train loss {row['train_loss']:.4f}, eval loss {row['eval_loss']:.4f}, {shown}",
                  file=sys.stderr)
        if metrics[spec.main_metric] > best_value:
            best_value, best, stale = metrics[spec.main_metric], row, 0
            inner = accelerator.unwrap_model(model)
            weights = full_state_dict(accelerator, inner)
            if accelerator.is_main_process:
                save_hf(weights, inner.config, tokenizer, out / "model", type(inner))
        else:
            stale += 1
            if cfg.early_stopping and stale >= cfg.early_stopping:
                break
    accelerator.free_memory(model, optimizer, train_dl, eval_dl)
    return {"seed": seed, "history": history, "best": best}


def summarize(results: list[dict], spec) -> dict:
    """Final metrics of the best epoch; with several seeds, their mean and std."""
    import numpy as np

    keys = [k for k in results[0]["best"] if k not in ("epoch", "train_loss", "seconds")]
    per_seed = {r["seed"]: {k: r["best"][k] for k in keys} for r in results}
    if len(results) == 1:
        return dict(next(iter(per_seed.values())), best_epoch=results[0]["best"]["epoch"], main_metric=spec.main_metric)
    mean = {k: float(np.mean([m[k] for m in per_seed.values()])) for k in keys}
    std = {k: float(np.std([m[k] for m in per_seed.values()], ddof=1)) for k in keys}
    return dict(mean, std=std, per_seed=per_seed, main_metric=spec.main_metric)


def _max_positions(model_dir: Path) -> int:
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(str(model_dir)), "max_position_embeddings", 512))


def run(cfg: Config) -> dict:
    """Fine-tune and evaluate, as the output's one writer (the main process holds the lock)."""
    from pipeline import lock
    from pipeline.distributed import launch_rank

    if launch_rank() != 0:
        return _run(cfg)
    with lock.writer(Path(cfg.output), "finetune"):
        return _run(cfg)


def _run(cfg: Config) -> dict:
    from pipeline.data import load_tokenizer
    from pipeline.distributed import broadcast_object, make_accelerator

    model_dir = Path(cfg.model)
    if not (model_dir / "config.json").exists():
        raise PipelineError(f"{model_dir}: no config.json; pass a Hugging Face model directory (e.g. pretrain's OUTPUT/model)")
    tokenizer = load_tokenizer(model_dir)
    positions = _max_positions(model_dir)
    if cfg.max_seq_len > positions:
        raise PipelineError(f"max_seq_len {cfg.max_seq_len} is above the {positions} positions of {model_dir}; "
                            f"pass --max-seq-len {positions} or less")
    cfg.publish.check()
    final = Path(cfg.output)
    identity = output_identity(cfg)
    data = prepare_data(cfg, tokenizer)
    accelerator = make_accelerator(cfg.precision, 1)
    out = staging(final, identity, cfg.overwrite, input_paths(cfg)) if accelerator.is_main_process else None
    out = Path(broadcast_object(accelerator, str(out)))
    try:
        return train_and_publish(cfg, accelerator, data, tokenizer, out, final, identity)
    except BaseException:
        if accelerator.is_main_process:  # the half-built staging folder is ours; the finished output is untouched
            shutil.rmtree(out, ignore_errors=True)
        raise


def train_and_publish(cfg: Config, accelerator, data, tokenizer, out: Path, final: Path, identity: dict) -> dict:
    """Train every seed into the staging folder ``out``, write the reports, swap it in for ``final``."""
    spec = data[0]
    trackers = []
    if accelerator.is_main_process:
        print(f"finetune: {cfg.task}, {len(data[2])} train / {len(data[3])} eval rows, init {cfg.init}, "
              f"seeds {cfg.seeds}", file=sys.stderr)
        trackers, _ = tracking.start(cfg.publish.log_with, out, cfg.publish.project, f"finetune-{cfg.task}-{out.name}", to_dict(cfg), None)
    results = []
    for n, seed in enumerate(cfg.seeds):
        seed_out = out if len(cfg.seeds) == 1 else out / f"seed-{seed}"
        results.append(train_seed(accelerator, cfg, seed, data, tokenizer, seed_out, trackers, n * cfg.epochs))
    tracking.finish(trackers)
    metrics = summarize(results, spec)
    official = is_official(spec, cfg.eval, len(data[3])) and not cfg.max_eval_examples
    if accelerator.is_main_process:
        if len(cfg.seeds) > 1:  # the best seed's model is the stage's model
            top = max(results, key=lambda r: r["best"][spec.main_metric])
            shutil.rmtree(out / "model", ignore_errors=True)
            shutil.copytree(out / f"seed-{top['seed']}" / "model", out / "model")
        atomic_write_json(out / "metrics.json", metrics)
        atomic_write_json(out / MANIFEST, {"kind": "finetune", "identity": identity})
        atomic_write_json(out / "history.json", {"config": to_dict(cfg), "seeds": results})
        write_report(out / "report.md", cfg, spec, results, metrics, official)
        write_curve(out / "learning_curve.png", results, cfg.task, spec.main_metric)
        write_card(out, cfg, spec, data[1], metrics, official)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        where = f"epoch {metrics['best_epoch']}" if "best_epoch" in metrics else "mean over seeds"
        swap_dir(out, final)  # the old output stays until the new one is complete
        print(f"finetune: best by {spec.main_metric} ({where}): {shown} -> {final}", file=sys.stderr)
        if cfg.publish.push_to_hub:
            url = hub.push(final / "model", cfg.publish.push_to_hub, cfg.publish.hub_private, f"kowiki-bert finetune {cfg.task}")
            print(f"finetune: pushed {final / 'model'} to {url}", file=sys.stderr)
    accelerator.wait_for_everyone()
    return metrics


# What a fine-tune output holds: the stage's files, its seed folders and its trackers' stores.
OWN = re.compile(r"^(?:manifest\.json|metrics\.json|history\.json|report\.md|learning_curve\.png|model|seed-\d+|"
                 r"tensorboard|wandb|mlruns)$")


# What an exported model folder holds (pipeline.export.save_hf); anything else is the user's.
MODEL_FILES = re.compile(r"^(?:config\.json|model\.safetensors|generation_config\.json|tokenizer\.json|vocab\.txt|"
                         r"tokenizer_config\.json|special_tokens_map\.json|README\.md|learning_curve\.png)$")


def output_identity(cfg: Config) -> dict:
    """What a fine-tune output is built from: the model's and the data files' content, and
    every setting that changes the result."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("model", "train", "eval", "output", "overwrite", "publish")}
    return {"model": tree_sha256(Path(cfg.model)), "train": file_sha256(Path(cfg.train)), "eval": file_sha256(Path(cfg.eval)),
            "settings": settings}


def input_paths(cfg: Config) -> list[str]:
    return [cfg.model, cfg.train, cfg.eval]


def staging(final: Path, identity: dict, overwrite: bool, inputs: list[str]) -> Path:
    """A new folder beside ``final`` to build in; ``final`` is checked first: never one of the
    inputs' folders, never a folder of someone else's files, another build only with
    ``overwrite``."""
    check_not_inputs(final, inputs)
    recover_swap(final)
    if final.exists() and not final.is_dir():
        raise PipelineError(f"--output {final} is a file; pass a directory")
    if final.is_dir():
        foreign = sorted(p.name for p in final.iterdir() if not OWN.match(p.name))
        foreign += sorted(f"{p.parent.name}/{p.name}" for d in [final / "model", *final.glob("seed-*/model")] if d.is_dir()
                          for p in d.iterdir() if not MODEL_FILES.match(p.name))
        if foreign:
            raise PipelineError(f"{final} holds files 'kowiki-bert finetune' did not write ({', '.join(foreign[:3])}"
                                f"{', ...' if len(foreign) > 3 else ''}); pass an empty or new --output")
        old = _recorded_identity(final)
        if old is not None and old != identity and not overwrite:
            why = "; ".join(differences(old, identity))
            raise PipelineError(f"{final} holds a fine-tune of other inputs or settings ({why}); pass a new --output, or "
                                f"--overwrite true to replace it (the old one stays until the new one is complete)")
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a killed run's (we hold the output's lock)
        shutil.rmtree(stale, ignore_errors=True)
    build = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    build.mkdir(parents=True)
    return build


def _recorded_identity(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return None


def write_card(out: Path, cfg: Config, spec, names, metrics: dict, official: bool) -> None:
    """The model's README.md, with its learning curve beside it."""
    shutil.copyfile(out / "learning_curve.png", out / "model" / "learning_curve.png")
    settings = {"epochs": cfg.epochs, "learning rate": cfg.lr, "batch size": cfg.batch_size,
                "max sequence length": cfg.max_seq_len, "seeds": ", ".join(map(str, cfg.seeds)), "init": cfg.init}
    text = finetune_card(name=cfg.publish.push_to_hub.split("/")[-1] or f"kowiki-bert {Path(cfg.model).parent.name} {cfg.task}", license=cfg.publish.license, task=cfg.task,
                         base_model=cfg.model, labels=names, metrics=metrics, eval_file=Path(cfg.eval).name,
                         official=official, settings=settings, curve="learning_curve.png")
    (out / "model" / "README.md").write_text(text, encoding="utf-8")


class Probe:
    """Downstream quality during pretraining: a short fine-tune of the current weights on a
    small label budget, scored on the task's main metric (``--eval.finetune TASK:TRAIN:EVAL``).

    It runs on one process, under its own RNG (the training RNG streams are left as they were,
    so resuming stays exact), and never writes a model.
    """

    def __init__(self, spec: str, tokenizer, examples: int, eval_examples: int, epochs: int, lr: float, seed: int):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise PipelineError(f"eval.finetune {spec!r}: write it as TASK:TRAIN_FILE:EVAL_FILE, e.g. nsmc:train.tsv:test.tsv "
                                f"(tasks: {', '.join(TASKS)})")
        task, train, eval_file = parts
        self.cfg = load_config(Config, None, {"model": "(the weights being pretrained)", "task": task, "train": train,
                                              "eval": eval_file, "output": "", "seeds": [seed], "epochs": epochs, "lr": lr,
                                              "max_train_examples": examples, "max_eval_examples": eval_examples})
        self.data = prepare_data(self.cfg, tokenizer)
        self.tokenizer, self.task, self.metric = tokenizer, task, self.data[0].main_metric

    def score(self, bert_state: dict, bert_cfg, device) -> float:
        import torch
        from transformers import BertForSequenceClassification

        spec, names, train, evals, binary = self.data
        cfg = self.cfg
        num_labels = 1 if spec.regression else len(names)
        config = bert_cfg.__class__.from_dict({**bert_cfg.to_dict(), "num_labels": num_labels,
                                               "problem_type": "regression" if spec.regression else "single_label_classification"})
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(cfg.seeds[0])
            model = BertForSequenceClassification(config)
            missing, _ = model.load_state_dict({k: v for k, v in bert_state.items() if k.startswith("bert.")}, strict=False)
            if any(k.startswith("bert.") and not k.endswith(("position_ids", "token_type_ids")) for k in missing):
                raise PipelineError(f"eval.finetune: the pretraining weights lack {missing[:3]}; report this as a bug")
            model.to(device)
            collate = collate_fn(self.tokenizer, spec.regression)
            on_device = lambda loader: ({k: v.to(device) for k, v in b.items()} for b in loader)
            train_dl = torch.utils.data.DataLoader(train, batch_size=min(cfg.batch_size, len(train)), shuffle=True,
                                                   collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seeds[0]))
            eval_dl = torch.utils.data.DataLoader(evals, batch_size=cfg.eval_batch_size, collate_fn=collate)
            optimizer, scheduler = optimizer_and_schedule(model, cfg, cfg.epochs * len(train_dl))
            model.train()
            for _ in range(cfg.epochs):
                train_epoch(model, on_device(train_dl), optimizer, scheduler, lambda loss: loss.backward(),
                            cfg.clip_grad_norm, torch.nn.utils.clip_grad_norm_)
            metrics = evaluate(model, on_device(eval_dl), spec.regression, binary, num_labels)
        return float(metrics[self.metric])


if __name__ == "__main__":
    from pipeline.cli import stage_main

    sys.exit(stage_main("pipeline.finetune", prog="finetune"))
