"""Fill-mask probe: the top candidates for each ``[MASK]`` of a sentence, with scores."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import fail, option
from pipeline.data import load_tokenizer
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

    path = Path(path)
    if not (path / "config.json").exists():
        raise PipelineError(f"{path}: no config.json; pass a Hugging Face model directory such as OUTPUT/model")
    return AutoModelForMaskedLM.from_pretrained(str(path)).eval(), load_tokenizer(path)


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each ``[MASK]`` in ``text``, the ``top_k`` (token, probability) pairs."""
    enc = tokenizer(text, return_tensors="pt")
    positions = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    if len(positions) == 0:
        raise PipelineError(f"no {tokenizer.mask_token} in {text!r}; put {tokenizer.mask_token} where a word should be guessed")
    probs = model(**enc).logits[0, positions].softmax(-1)
    top = probs.topk(top_k, dim=-1)
    return [[(tokenizer.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(ps, ids)]
            for ps, ids in zip(top.values, top.indices)]


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
            shown = "  ".join(f"{tok} ({p:.3f})" for tok, p in candidates)
            print(f"  [MASK] {n}: {shown}")
    return results


if __name__ == "__main__":
    from pipeline.cli import stage_main

    sys.exit(stage_main("pipeline.fill_mask", prog="fill-mask"))
