"""Recipe search at a fixed step budget: named pretraining variants, one table.

    python benchmarks/recipe.py SHARDS OUT [--steps 3000] [--eval-every 250] [--variants a,b,...]
                                [--seed 0] [-- extra pretrain options for every variant]

Each variant is `kowiki-bert pretrain --config pipeline/configs/pretrain_tiny_cpu.yaml` with
BERT's own settings (15% masking, 80/10/10, dropout 0.1, zero output bias) and then its own
overrides, run to the same number of steps (the LR schedule follows the budget), evaluated
under the fixed yardstick (pipeline/yardstick.py). A finished variant is read, not rerun, so the
search resumes where it stopped. Writes OUT/recipe.json and prints the table (markdown):
escape step, eval MLM loss and its gap to the context-free baseline at each evaluation, NSP
accuracy beside the NotNext share, median tokens/s. Results are compared at equal steps, so
other load on the machine changes tokens/s only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BERT = ["--model.dropout", "0.1", "--train.mlm_probability", "0.15", "--model.unigram_bias", "false"]
VARIANTS = {
    "bert": [],  # the CPU recipe before the search: 15%, 80/10/10, dropout 0.1
    "no-dropout": ["--model.dropout", "0"],  # Cramming: no dropout at short budgets
    "all-mask": ["--train.mask_share", "1.0", "--train.random_share", "0"],  # Wettig et al.
    "mask-30": ["--train.mlm_probability", "0.3"],  # MosaicBERT / Wettig et al.
    "no-dropout-mask-30": ["--model.dropout", "0", "--train.mlm_probability", "0.3"],
    "no-dropout-lr-2e-3": ["--model.dropout", "0", "--lr", "2e-3"],
    # the CPU recipe now (pretrain_tiny_cpu.yaml as written): the above and the output bias at the log unigram
    "cpu-recipe": ["--model.dropout", "0", "--train.mlm_probability", "0.3", "--model.unigram_bias", "true"],
}


def run_variant(name: str, shards: Path, out: Path, steps: int, every: int, seed: int, extra: list[str]) -> dict:
    folder = out / name
    status = folder / "status.json"
    if not (status.exists() and json.loads(status.read_text())["state"] == "finished"):
        cmd = [sys.executable, "-m", "pipeline.cli", "pretrain", "--config", str(ROOT / "pipeline/configs/pretrain_tiny_cpu.yaml"),
               "--data", str(shards), "--output", str(folder), "--max-steps", str(steps), "--eval.every", str(every),
               "--seed", str(seed), "--checkpoint.export_hf", "false", *BERT, *VARIANTS[name], *extra]
        with open(out / f"{name}.log", "a") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
                raise SystemExit(f"recipe: variant {name} failed; see {out / f'{name}.log'}")
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["step"]: r for r in rows if "eval/mlm_loss" in r}
    speed = [r["perf/tokens_per_second"] for r in rows if "perf/tokens_per_second" in r]
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"escape_step": metrics.get("escape_step"), "tokens_per_second": statistics.median(speed) if speed else None,
            "seconds": metrics.get("seconds"),
            "eval": {s: {"mlm_loss": r["eval/mlm_loss"], "gap": r.get("eval/context_free_gap"),
                         "nsp_accuracy": r["eval/nsp_accuracy"], "not_next": r.get("eval/nsp_not_next_share")}
                     for s, r in sorted(evals.items())},
            "context_free": next((r.get("eval/context_free_mlm_loss") for r in evals.values()), None)}


def table(results: dict) -> str:
    steps = sorted({s for r in results.values() for s in r["eval"]})
    shown = [s for s in steps if s % max(steps[-1] // 6, 1) == 0 or s == steps[-1]][-6:]
    head = ["variant", "escape step", *[f"MLM loss @{s}" for s in shown], "NSP acc (NotNext) at end", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in results.items():
        last = r["eval"][max(r["eval"])]
        lines.append("| " + " | ".join([name, str(r["escape_step"] or "not reached"),
                                        *[f"{r['eval'][s]['mlm_loss']:.3f}" if s in r["eval"] else "" for s in shown],
                                        f"{last['nsp_accuracy']:.3f} ({last['not_next'] or float('nan'):.3f})",
                                        f"{r['tokens_per_second']:,.0f}" if r["tokens_per_second"] else ""]) + " |")
    base = next((r["context_free"] for r in results.values() if r["context_free"]), None)
    return "\n".join(lines) + (f"\n\nContext-free baseline of these shards under the yardstick: {base:.3f} nats." if base else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        results[name] = run_variant(name, args.shards, args.out, args.steps, args.eval_every, args.seed, extra)
        (args.out / "recipe.json").write_text(json.dumps(results, indent=1))
        print(f"recipe: {name} done", file=sys.stderr, flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
