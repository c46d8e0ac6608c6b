"""The fine-tune report (Markdown table per epoch) and its learning-curve plot."""

from __future__ import annotations

from pathlib import Path

# Published results users compare with (model card / paper figures, dev or test sets).
REFERENCES = {
    "nsmc": "KoBERT 90.1%, KcBERT-base 89.6%, KoELECTRA-base-v3 90.6% accuracy",
    "klue-nli": "KLUE-BERT-base 81.6 accuracy",
    "klue-sts": "KLUE-BERT-base 90.9 Pearson",
}


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(path: Path, cfg, spec, results: list[dict], metrics: dict) -> None:
    lines = [f"# Fine-tune report: {cfg.task}", "",
             f"- model: `{cfg.model}` (init: {cfg.init})", f"- train: `{cfg.train}`", f"- eval: `{cfg.eval}`",
             f"- epochs {cfg.epochs}, lr {cfg.lr}, batch {cfg.batch_size}, max_seq_len {cfg.max_seq_len}, seeds {cfg.seeds}",
             f"- main metric: {spec.main_metric}", ""]
    if cfg.task in REFERENCES:
        lines += [f"Published reference points: {REFERENCES[cfg.task]}.", ""]
    lines += ["## Final (best epoch)", ""]
    std = metrics.get("std", {})
    for k, v in metrics.items():
        if isinstance(v, float):
            lines.append(f"- {k}: {v:.4f}" + (f" ± {std[k]:.4f}" if k in std else ""))
    for r in results:
        keys = list(r["history"][0])
        lines += ["", f"## Seed {r['seed']} (best epoch {r['best']['epoch']})", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(row[k]) for k in keys) + " |" for row in r["history"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_curve(path: Path, results: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        epochs = [h["epoch"] for h in r["history"]]
        ax.plot(epochs, [h["train_loss"] for h in r["history"]], "o-", label=f"train (seed {r['seed']})")
        ax.plot(epochs, [h["eval_loss"] for h in r["history"]], "s--", label=f"eval (seed {r['seed']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: learning curve")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
