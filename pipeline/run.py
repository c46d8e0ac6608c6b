"""``kowiki-bert run``: every stage end to end on the sample shipped in the package.

The same stage functions as a full run, called with settings sized for a laptop CPU:
extract the multistream bz2 sample dump, train a WordPiece vocabulary, shard NSP examples,
pretrain a tiny BERT, fine-tune it on the sample reviews, and probe it with fill-mask.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipeline import extract, fill_mask, finetune, pretrain, shard, tokenizer
from pipeline.config import load_config, option
from pipeline.presets import PRESETS
from pipeline.progress import elapsed
from pipeline.sample.build import DUMP, REVIEWS_EVAL, REVIEWS_TRAIN

PROBE = "이순신은 [MASK] 중기의 무신이다."


@dataclass
class Config:
    output: str = option("runs/sample", "directory for every stage's output")
    model_size: str = option("tiny", "size preset of the pretrained model", choices=tuple(PRESETS))
    max_steps: int = option(300, "pretraining steps", bounds="[1, inf)")
    finetune_epochs: int = option(4, "fine-tuning epochs on the sample reviews", bounds="[1, inf)")
    seed: int = option(0, "seed of every stage", bounds="[0, inf)")
    num_proc: int = option(1, "worker processes of the data stages", bounds="[1, inf)")


ALIASES = {"--output": "output", "--model-size": "model_size", "--max-steps": "max_steps", "--seed": "seed"}


def stage_configs(cfg: Config) -> dict:
    """Each stage's config, as its own dataclass, for the sample."""
    out = Path(cfg.output)
    return {
        "extract": load_config(extract.Config, None, {
            "input": str(DUMP), "output": str(out / "corpus"), "num_proc": cfg.num_proc, "overwrite": True}),
        "tokenizer": load_config(tokenizer.Config, None, {
            "corpus": str(out / "corpus"), "output": str(out / "tokenizer"), "vocab_size": 2000,
            "min_frequency": 1, "heldout_documents": 2, "seed": cfg.seed, "overwrite": True}),
        "shard": load_config(shard.Config, None, {
            "corpus": str(out / "corpus"), "tokenizer": str(out / "tokenizer"), "output": str(out / "shards"),
            "max_seq_len": 128, "dupe_factor": 20, "valid_fraction": 0.2, "num_proc": cfg.num_proc,
            "docs_per_shard": 16, "chunk_docs": 16, "seed": cfg.seed, "overwrite": True}),
        "pretrain": load_config(pretrain.Config, None, {
            "data": str(out / "shards"), "output": str(out / "pretrain"), "seed": cfg.seed, "resume": "never",
            "model.size": cfg.model_size, "train.max_steps": cfg.max_steps, "train.global_batch_size": 32,
            "train.micro_batch_size": 32, "train.num_workers": 0, "train.log_every": 10, "optim.lr": 1e-3,
            "optim.warmup_ratio": 0.05, "eval.every": 100, "eval.batches": 4,
            "checkpoint.save_every": 100, "checkpoint.keep_last": 2}),
        "finetune": load_config(finetune.Config, None, {
            "model": str(out / "pretrain" / "model"), "task": "nsmc", "train": str(REVIEWS_TRAIN),
            "eval": str(REVIEWS_EVAL), "output": str(out / "finetune"), "epochs": cfg.finetune_epochs,
            "lr": 5e-4, "batch_size": 16, "seeds": [cfg.seed]}),
        "fill-mask": load_config(fill_mask.Config, None, {"model": str(out / "pretrain" / "model"), "texts": [PROBE]}),
    }


def run(cfg: Config) -> int:
    stages = {"extract": extract, "tokenizer": tokenizer, "shard": shard, "pretrain": pretrain,
              "finetune": finetune, "fill-mask": fill_mask}
    configs = stage_configs(cfg)
    times = {}
    for n, (name, module) in enumerate(stages.items(), 1):
        print(f"\n=== [{n}/{len(stages)}] {name} ===", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = module.run(configs[name])
        if isinstance(result, int) and result:
            return result
        times[name] = time.perf_counter() - t0
        print(f"=== {name} done in {elapsed(times[name])} ===", file=sys.stderr, flush=True)
    out = Path(cfg.output).resolve()
    started = time.time() - psutil.Process().create_time()  # the process's wall time: start-up and imports too
    print(f"\nAll stages finished in {elapsed(started)} ("
          + ", ".join(f"{k} {elapsed(v)}" for k, v in times.items())
          + f", start-up {elapsed(max(started - sum(times.values()), 0))}).\n"
          f"  pretrained model + tokenizer: {out / 'pretrain' / 'model'}\n"
          f"  model card and curves:        {out / 'pretrain' / 'model' / 'README.md'} (curves.png)\n"
          f"  TensorBoard logs:             tensorboard --logdir {out / 'pretrain' / 'tensorboard'}\n"
          f"  checkpoints:                  {out / 'pretrain' / 'checkpoints'}\n"
          f"  fine-tune report:             {out / 'finetune' / 'report.md'} (metrics.json, learning_curve.png)\n"
          f"  fill-mask demo:               kowiki-bert fill-mask --model {out / 'pretrain' / 'model'} \"{PROBE}\"\n"
          "The embedded sample (20 articles, 480 reviews) is a smoke test of every stage, too small to learn Korean "
          "from: its held-out loss and fill-mask answers show that, and the model card says so. For a real model "
          "run the stages on a kowiki dump (README, 'On your cluster').")
    return 0


if __name__ == "__main__":
    from pipeline.cli import stage_main

    sys.exit(stage_main("pipeline.run", prog="run"))
