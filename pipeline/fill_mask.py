"""Fill-mask probe: the top candidates for each ``[MASK]`` of a sentence, with scores."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import fail, option
from pipeline.errors import PipelineError


@dataclass
class Config:
    model: str = option(help="Hugging Face model directory (e.g. OUTPUT/model of pretrain)")
    texts: list[str] = option(default_factory=list, help="sentences with [MASK]")
    top_k: int = option(5, "candidates shown per mask", bounds="[1, inf)")

    def __post_init__(self):
        if not self.texts:
            fail("texts", "no sentence given", "pass one or more sentences containing [MASK]")
        if self.top_k < 1:
            fail("top_k", f"is {self.top_k}", "use 1 or more")


ALIASES = {"--model": "model", "--top-k": "top_k"}
POSITIONAL = "texts"


def load_masked_lm(path: str | Path):
    from transformers import AutoModelForMaskedLM

    from pipeline.data import load_tokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise PipelineError(f"{path}: no config.json; pass a Hugging Face model directory such as OUTPUT/model")
    model, info = AutoModelForMaskedLM.from_pretrained(str(path), output_loading_info=True)
    head = [k for k in info["missing_keys"] if k.startswith("cls.") and not k.endswith(("decoder.weight", "decoder.bias"))]
    if head:  # e.g. a fine-tuned classifier: its MLM head would be random numbers
        raise PipelineError(f"{path} has no masked-LM head ({head[0]} missing; it is a "
                            f"{', '.join(model.config.architectures or ['model'])} folder); pass a pretrained model "
                            "such as pretrain's OUTPUT/model")
    return model.eval(), load_tokenizer(path)


def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[list[dict]]:
    """For each ``[MASK]`` in ``text``, the ``top_k`` answers of transformers' fill-mask pipeline
    (``token_str``, ``score``, ``sequence``: the sentence filled in) plus ``word``: the text
    written in, without WordPiece's ``##`` (a ``##`` piece joins the word before it)."""
    from transformers import pipeline

    if tokenizer.mask_token not in text:
        raise PipelineError(f"no {tokenizer.mask_token} in {text!r}; put {tokenizer.mask_token} where a word should be guessed")
    n, limit = len(tokenizer(text)["input_ids"]), model.config.max_position_embeddings
    if n > limit:
        raise PipelineError(f"the text is {n} tokens, more than the model's {limit} positions; shorten it around the "
                            f"{tokenizer.mask_token}")
    answers = pipeline("fill-mask", model=model, tokenizer=tokenizer, device=model.device)(text, top_k=top_k)
    answers = answers if isinstance(answers[0], list) else [answers]  # one list per mask
    for candidates in answers:
        for a in candidates:
            piece = tokenizer.convert_ids_to_tokens(a["token"])
            a["word"] = piece[2:] if piece.startswith("##") else a["token_str"].strip()
    return answers


def run(cfg: Config) -> list:
    model, tokenizer = load_masked_lm(cfg.model)
    if cfg.top_k > model.config.vocab_size:
        raise PipelineError(f"top_k {cfg.top_k} is more than the {model.config.vocab_size} pieces of the vocabulary; "
                            f"pass --top-k {min(10, model.config.vocab_size)} or so")
    results = []
    for text in cfg.texts:
        answers = fill_mask(model, tokenizer, text, cfg.top_k)
        results.append(answers)
        print(text)
        for n, candidates in enumerate(answers, 1):
            # quoted, with a percentage: a candidate that is itself punctuation ("(") stays readable
            print(f"  [MASK] {n}: " + "  ".join(f"\"{a['word']}\" {a['score']:.1%}" for a in candidates))
        if len(answers) == 1:
            print(f"  best: {answers[0][0]['sequence']}")
    return results


if __name__ == "__main__":
    from pipeline.cli import stage_main

    sys.exit(stage_main("pipeline.fill_mask", prog="fill-mask"))
