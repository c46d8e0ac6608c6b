"""The fine-tune report (Markdown table per epoch) and its learning-curve plot."""

from __future__ import annotations

from pathlib import Path


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(path: Path, cfg, spec, results: list[dict], metrics: dict, official: bool) -> None:
    """``official``: the eval file is the task's published evaluation set, so the published
    scores are shown beside ours; on any other file they would read as a comparison they are not."""
    lines = [f"# Fine-tune report: {cfg.task}", "",
             f"- model: `{cfg.model}` (init: {cfg.init})", f"- train: `{cfg.train}`", f"- eval: `{cfg.eval}`",
             f"- epochs {cfg.epochs}, lr {cfg.lr}, batch {cfg.batch_size}, max_seq_len {cfg.max_seq_len}, seeds {cfg.seeds}",
             f"- main metric: {spec.main_metric}", ""]
    if official and spec.references:
        lines += [f"Published reference points on this evaluation set: {spec.references}.", ""]
    elif spec.references:
        lines += [f"The eval file is not the task's official evaluation set, so published {cfg.task} scores are not "
                  "comparable and are not shown.", ""]
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


def write_curve(path: Path, results: list[dict], title: str, main_metric: str) -> None:
    """Train/eval loss and the main metric per epoch, one line per seed, whole-epoch ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        epochs = [h["epoch"] for h in r["history"]]
        loss_ax.plot(epochs, [h["train_loss"] for h in r["history"]], "o-", label=f"train (seed {r['seed']})")
        loss_ax.plot(epochs, [h["eval_loss"] for h in r["history"]], "s--", label=f"eval (seed {r['seed']})")
        metric_ax.plot(epochs, [h[main_metric] for h in r["history"]], "o-", label=f"seed {r['seed']}")
    for ax, name in ((loss_ax, "loss"), (metric_ax, f"eval {main_metric}")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_pretrain_curves(path: Path, rows: list[dict]) -> bool:
    """Pretraining loss and accuracy against steps (train at log steps, eval at eval steps);
    False when nothing was logged."""
    train = [r for r in rows if "loss/total" in r]
    evals = [r for r in rows if "eval/mlm_loss" in r]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    series = [(loss_ax, train, "loss/mlm", "train MLM", "-"), (loss_ax, train, "loss/nsp", "train NSP", "-"),
              (loss_ax, evals, "eval/mlm_loss", "eval MLM", "o--"), (loss_ax, evals, "eval/nsp_loss", "eval NSP", "o--"),
              (acc_ax, train, "accuracy/mlm", "train MLM", "-"), (acc_ax, train, "accuracy/nsp", "train NSP", "-"),
              (acc_ax, evals, "eval/mlm_accuracy", "eval MLM", "o--"), (acc_ax, evals, "eval/nsp_accuracy", "eval NSP", "o--")]
    for ax, part, key, label, style in series:
        if part:
            ax.plot([r["step"] for r in part], [r[key] for r in part], style, label=label)
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle("pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
