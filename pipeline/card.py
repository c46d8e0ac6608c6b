"""Model cards: the ``README.md`` of every export, with the Hub's metadata header.

The Hub reads the YAML header (language, license, pipeline tag, datasets, metrics) for search
and widgets; the body says how the model was made and how well it did, in numbers.
"""

from __future__ import annotations

from pathlib import Path

import yaml

LICENSES = ("auto", "cc-by-sa-4.0", "apache-2.0", "mit", "cc-by-4.0", "cc0-1.0", "other")
WIKI_NOTE = ("Trained on text of the Korean Wikipedia, which is licensed CC BY-SA 4.0; "
             "check the terms that apply to your use of the weights.")


def is_wikipedia(corpus: dict | None) -> bool:
    """A Wikipedia dump (MediaWiki XML or WikiExtractor output of one) named as Wikimedia names them."""
    return bool(corpus) and corpus["format"] in ("mediawiki", "wikiextractor") and corpus["source"].startswith("kowiki")


def card_license(license: str, corpus: dict | None) -> str:
    """``--license``, or for "auto" the corpus's own: CC BY-SA 4.0 for Wikipedia, else "other"
    (the card then asks for ``--license``): a card never claims a license it cannot know."""
    if license != "auto":
        return license
    return "cc-by-sa-4.0" if is_wikipedia(corpus) else "other"


def license_of(model_dir: str) -> str:
    """The license a model's own card states (a fine-tune inherits it under "auto"), or "other"."""
    try:
        text = (Path(model_dir) / "README.md").read_text(encoding="utf-8")
        return str(yaml.safe_load(text.split("---\n", 2)[1]).get("license") or "other")
    except (OSError, IndexError, AttributeError, yaml.YAMLError):
        return "other"


def describe_corpus(corpus: dict | None) -> str:
    if not corpus:
        return "a corpus whose shards do not record their source"
    counts = ", ".join(x for x in (f"{corpus['documents']:,} documents" if corpus.get("documents") else "",
                                   f"{corpus['tokens']:,} training tokens" if corpus.get("tokens") else "") if x)
    what = "the Korean Wikipedia" if is_wikipedia(corpus) else f"the {corpus['format']} corpus"
    return f"{what} (`{corpus['source']}`" + (f"; {counts})" if counts else ")")


def _header(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, allow_unicode=True, sort_keys=False) + "---\n"


def _table(rows: list[tuple[str, object]]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    for k, v in rows:
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return lines


def pretrain_card(*, name: str, license: str, bert_cfg, recipe: dict, step: int, tokens: int, eval_metrics: dict,
                  init_from: str | None = None, probe: dict | None = None, curves: str | None = None,
                  corpus: dict | None = None, notes: list[str] | None = None, escape_step: int | None = None) -> str:
    """The card of a pretraining export (final model or a checkpoint's ``hf/``): the corpus
    and license it states are the run's own (shard manifest, ``--license``, ``--init-from``)."""
    license = card_license(license, corpus)
    meta = {"language": ["ko"], "license": license, "library_name": "transformers", "pipeline_tag": "fill-mask",
            "tags": ["bert", "korean", "kowiki-bert", "masked-lm", "next-sentence-prediction"],
            **({"datasets": ["wikipedia"]} if is_wikipedia(corpus) else {}),
            **({"base_model": init_from} if init_from and not init_from.startswith(("/", ".")) else {}),
            "metrics": ["perplexity", "accuracy"]}
    size = (f"{bert_cfg.num_hidden_layers} layers, hidden {bert_cfg.hidden_size}, {bert_cfg.num_attention_heads} heads, "
            f"vocabulary {bert_cfg.vocab_size:,} WordPiece pieces, {bert_cfg.max_position_embeddings} positions")
    lines = [_header(meta), f"# {name}", "",
             "A Korean BERT (`BertForPreTraining`: masked language modelling + next sentence prediction) "
             + (f"continued from `{init_from}` and pretrained " if init_from else "pretrained ")
             + f"with kowiki-bert on {describe_corpus(corpus)}. {size}.", ""]
    lines += [f"**Note:** {note}" for note in notes or []] + ([""] if notes else [])
    lines += ["## Use", "", "```python", "from transformers import pipeline", "",
              'fill = pipeline("fill-mask", model="PATH_OR_REPO_ID")', 'fill("이순신은 [MASK] 중기의 무신이다.")', "```", "",
              "The tokenizer is a cased WordPiece (`do_lower_case: false`, `strip_accents: false`): lowercasing and "
              "accent stripping would decompose Hangul. It loads as `BertTokenizerFast`/`BertTokenizer` under "
              "transformers 4.x and 5.x.", "",
              "## Training", ""]
    lines += _table([("steps", f"{step:,}"), ("tokens seen", f"{tokens:,}")] + [(k, v) for k, v in recipe.items()]
                    + ([("initialized from", f"`{init_from}`")] if init_from else []))
    if eval_metrics:
        lines += ["", "## Evaluation (held-out shards)", "",
                  "Fixed yardstick: 15% of real tokens masked 80/10/10 with one fixed seed, whatever the training "
                  "recipe. The context-free baseline is the loss of predicting masked tokens from unigram frequencies "
                  "and the visible corruption alone; the escape step is the first evaluation 0.5 nats below it.", ""]
        rows = [("MLM loss", eval_metrics.get("mlm_loss")), ("perplexity", eval_metrics.get("perplexity")),
                ("MLM accuracy", eval_metrics.get("mlm_accuracy")),
                ("context-free MLM loss", eval_metrics.get("context_free_mlm_loss")),
                ("escape step", None if eval_metrics.get("context_free_mlm_loss") is None
                 else f"{escape_step:,}" if escape_step is not None else "not reached"),
                ("NSP accuracy", eval_metrics.get("nsp_accuracy")),
                ("NotNext share of the eval pairs", eval_metrics.get("nsp_not_next_share"))]
        lines += _table([(k, v) for k, v in rows if v is not None])
    if probe:
        lines += ["", "## Downstream probe (short fine-tune during pretraining)", ""]
        lines += _table([(f"{probe['task']} {probe['metric']} at step {s}", v) for s, v in probe["scores"]])
    if curves:
        lines += ["", "## Curves", "", f"![pretraining loss and accuracy]({curves})"]
    if is_wikipedia(corpus):
        data = WIKI_NOTE
    elif license == "other":
        data = (f"Trained on `{corpus['source'] if corpus else 'an unrecorded corpus'}`, whose license kowiki-bert cannot "
                "know: state it with `--license` before publishing.")
    else:
        data = f"Trained on `{corpus['source'] if corpus else 'an unrecorded corpus'}`; released under {license}."
    if init_from:
        data += f" The weights continue `{init_from}`: its license applies too."
    lines += ["", "## Data and license", "", data, ""]
    return "\n".join(lines)


def finetune_card(*, name: str, license: str, task: str, base_model: str, labels: list[str] | None, metrics: dict,
                  eval_file: str, official: bool, settings: dict, curve: str | None = None) -> str:
    """The card of a fine-tuned classifier or regressor."""
    regression = labels is None
    license = license_of(base_model) if license == "auto" else license
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
