"""Model cards: the ``README.md`` of every export, with the Hub's metadata header.

The Hub reads the YAML header (language, license, pipeline tag, datasets, metrics) for search
and widgets; the body says how the model was made and how well it did, in numbers.
"""

from __future__ import annotations

import yaml

LICENSES = ("cc-by-sa-4.0", "apache-2.0", "mit", "cc-by-4.0", "other")
WIKI_NOTE = ("Trained on text of the Korean Wikipedia, which is licensed CC BY-SA 4.0; "
             "check the terms that apply to your use of the weights.")


def _header(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, allow_unicode=True, sort_keys=False) + "---\n"


def _table(rows: list[tuple[str, object]]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    for k, v in rows:
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return lines


def pretrain_card(*, name: str, license: str, bert_cfg, recipe: dict, step: int, tokens: int, eval_metrics: dict,
                  init_from: str | None = None, probe: dict | None = None, curves: str | None = None) -> str:
    """The card of a pretraining export (final model or a checkpoint's ``hf/``)."""
    meta = {"language": ["ko"], "license": license, "library_name": "transformers", "pipeline_tag": "fill-mask",
            "tags": ["bert", "korean", "kowiki-bert", "masked-lm", "next-sentence-prediction"],
            "datasets": ["wikipedia"], "metrics": ["perplexity", "accuracy"]}
    size = (f"{bert_cfg.num_hidden_layers} layers, hidden {bert_cfg.hidden_size}, {bert_cfg.num_attention_heads} heads, "
            f"vocabulary {bert_cfg.vocab_size:,} WordPiece pieces, {bert_cfg.max_position_embeddings} positions")
    lines = [_header(meta), f"# {name}", "",
             "A Korean BERT (`BertForPreTraining`: masked language modelling + next sentence prediction) pretrained "
             f"with kowiki-bert on the Korean Wikipedia. {size}.", "",
             "## Use", "", "```python", "from transformers import pipeline", "",
             'fill = pipeline("fill-mask", model="PATH_OR_REPO_ID")', 'fill("이순신은 [MASK] 중기의 무신이다.")', "```", "",
             "The tokenizer is a cased WordPiece (`do_lower_case: false`, `strip_accents: false`): lowercasing and "
             "accent stripping would decompose Hangul. It loads as `BertTokenizerFast`/`BertTokenizer` under "
             "transformers 4.x and 5.x.", "",
             "## Training", ""]
    lines += _table([("steps", f"{step:,}"), ("tokens seen", f"{tokens:,}")] + [(k, v) for k, v in recipe.items()]
                    + ([("initialized from", f"`{init_from}`")] if init_from else []))
    if eval_metrics:
        lines += ["", "## Evaluation (held-out shards)", ""]
        lines += _table([("MLM loss", eval_metrics.get("mlm_loss")), ("perplexity", eval_metrics.get("perplexity")),
                         ("MLM accuracy", eval_metrics.get("mlm_accuracy")), ("NSP accuracy", eval_metrics.get("nsp_accuracy"))])
    if probe:
        lines += ["", "## Downstream probe (short fine-tune during pretraining)", ""]
        lines += _table([(f"{probe['task']} {probe['metric']} at step {s}", v) for s, v in probe["scores"]])
    if curves:
        lines += ["", "## Curves", "", f"![pretraining loss and accuracy]({curves})"]
    lines += ["", "## Data and license", "", WIKI_NOTE, ""]
    return "\n".join(lines)


def finetune_card(*, name: str, license: str, task: str, base_model: str, labels: list[str] | None, metrics: dict,
                  eval_file: str, official: bool, settings: dict, curve: str | None = None) -> str:
    """The card of a fine-tuned classifier or regressor."""
    regression = labels is None
    meta = {"language": ["ko"], "license": license, "library_name": "transformers",
            "pipeline_tag": "text-classification", "tags": ["bert", "korean", "kowiki-bert", task],
            "metrics": [metrics.get("main_metric", "accuracy")]}
    lines = [_header(meta), f"# {name}", "",
             f"`{base_model}` fine-tuned on **{task}** with kowiki-bert"
             + (" (regression: one score)." if regression else f" (labels: {', '.join(labels)})."), "",
             "## Use", "", "```python", "from transformers import pipeline", "",
             'clf = pipeline("text-classification", model="PATH_OR_REPO_ID")', 'clf("정말 재미있는 영화였어요")', "```", "",
             "## Evaluation", "",
             f"On `{eval_file}`" + (" (the task's official evaluation set)." if official else
                                    " (not the task's official test set: not comparable with published scores)."), ""]
    lines += _table([(k, v) for k, v in metrics.items() if isinstance(v, float)])
    lines += ["", "## Training", ""] + _table(list(settings.items()))
    if curve:
        lines += ["", f"![learning curve]({curve})"]
    return "\n".join(lines + [""])
