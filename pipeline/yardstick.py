"""The fixed yardstick held-out evaluation measures with, whatever the training recipe.

Evaluation always masks 15% of the real tokens of the same held-out examples with the same
seed and BERT's 80/10/10 corruption, so the eval MLM loss of two recipes (another masking rate,
all-[MASK] corruption, whole words) compares. Beside it every evaluation reports the
**context-free baseline** of the data: the loss of the best predictor that ignores context,
which knows only the unigram frequencies of the training shards and what the corruption
shows at the position (a kept token is probably the answer; a random one probably is not).
A model whose loss sits there has learned frequencies, not language; the **escape step** is
the first evaluation at least ``ESCAPE_MARGIN`` nats below it.
"""

from __future__ import annotations

import numpy as np

EVAL_MLM_PROBABILITY = 0.15
EVAL_SEED = 20_240_615  # any fixed number: never the run's seed, so two seeds are judged alike
EVAL_SHARES = (0.8, 0.1)  # [MASK], random token; the rest is kept (BERT's 80/10/10)
ESCAPE_MARGIN = 0.5  # nats below the baseline: well past eval noise, short of real learning
UNIGRAM_TOKENS = 50_000_000  # training tokens counted for the unigram (spread over the shards)


def eval_collator(tokenizer, max_seq_len: int, buckets=None):
    """The collator of every evaluation: fixed rate, seed, corruption; no whole-word masking."""
    from pipeline.data import MLMNSPCollator

    return MLMNSPCollator(tokenizer, EVAL_MLM_PROBABILITY, EVAL_SEED, whole_word=False, max_seq_len=max_seq_len,
                          buckets=buckets, shares=EVAL_SHARES)


def context_free_loss(p: np.ndarray, q: np.ndarray, mask: float = EVAL_SHARES[0], random: float = EVAL_SHARES[1]) -> float:
    """Expected loss (nats) of the Bayes-optimal context-free predictor on masked tokens.

    ``p``: the predictor's unigram over the R tokens a random replacement draws from (all
    non-special ids; smoothed, no zeros); ``q``: how often each is the answer in the eval data.
    At a chosen position the input shows [MASK] (share ``mask``), the token itself (``keep``)
    or a uniform random token (``random``); the predictor's posterior over the answer w given
    what it sees t is p(w) (k 1{w=t} + r/R) / (k p(t) + r/R), or p(w) under [MASK].
    """
    keep, r = 1.0 - mask - random, random / len(p)
    log_p = np.log(p)
    # answer w shown as itself (kept, or drawn by the random replacement)
    as_itself = (keep + r) * -(log_p + np.log(keep + r) - np.log(keep * p + r)) if keep + r > 0 else 0.0
    # answer w shown as another token t != w (only by the random replacement)
    # (the sum over t of log(k p(t) + r/R) is shared by every w)
    others = r * ((len(p) - 1) * (-log_p - np.log(r)) + np.log(keep * p + r).sum() - np.log(keep * p + r)) if r > 0 else 0.0
    per_token = mask * -log_p + as_itself + others
    return float((q / q.sum() * per_token).sum())


def smoothed_unigram(counts: np.ndarray) -> np.ndarray:
    """Add-half frequencies: a token the training split never had still gets a finite loss."""
    counts = counts.astype(np.float64) + 0.5
    return counts / counts.sum()


def baseline(train, examples: list[dict], collator) -> dict:
    """The data's context-free baseline under the eval masking, and the NotNext share of the
    eval pairs (NSP accuracy at that share is a majority guess, not a learned task)."""
    from pipeline.nsp import NOT_NEXT

    ids = collator.random_ids
    p = smoothed_unigram(train.token_counts(collator.vocab_size, UNIGRAM_TOKENS)[ids])
    seen = np.concatenate([e["input_ids"] for e in examples]) if examples else np.zeros(0, np.int64)
    q = np.bincount(np.searchsorted(ids, seen[np.isin(seen, ids)]), minlength=len(ids)).astype(np.float64)
    labels = np.array([e["next_sentence_label"] for e in examples])
    return {"context_free_mlm_loss": context_free_loss(p, q) if q.sum() else float("nan"),
            "unigram_mlm_loss": context_free_loss(p, q, 1.0, 0.0) if q.sum() else float("nan"),
            "not_next_share": float((labels == NOT_NEXT).mean()) if len(labels) else float("nan")}


def escaped(mlm_loss: float, context_free: float) -> bool:
    return mlm_loss < context_free - ESCAPE_MARGIN
