"""Next-sentence-prediction pairs, built as BERT's ``create_pretraining_data.py`` builds them.

Within a document, segments (sentences) fill a chunk up to a target length (a shorter random
target with probability ``short_seq_prob``); the chunk splits at a random segment boundary into
A and B. With probability 0.5 (always when the chunk holds one segment) B comes from another,
random document instead (label 1, NotNext), and the unused segments go back to be reused.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

IS_NEXT, NOT_NEXT = 0, 1


@dataclass
class Pair:
    a: list[int]
    b: list[int]
    label: int


def truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """Trim the longer side, from the front or the back at random, until the pair fits."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _random_b(docs: list[list[list[int]]], this: int, target: int, rng: random.Random) -> list[int]:
    other = rng.randrange(len(docs) - 1)
    other += other >= this  # any document but this one
    doc = docs[other]
    start = rng.randrange(len(doc))
    b: list[int] = []
    for seg in doc[start:]:
        b.extend(seg)
        if len(b) >= target:
            break
    return b


def document_pairs(docs: list[list[list[int]]], index: int, max_seq_len: int,
                   short_seq_prob: float, rng: random.Random) -> list[Pair]:
    """All NSP pairs of ``docs[index]``; ``docs`` supplies random NotNext segments."""
    doc = docs[index]
    max_tokens = max_seq_len - 3  # [CLS] A [SEP] B [SEP]
    target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
    pairs, chunk, length, i = [], [], 0, 0
    while i < len(doc):
        chunk.append(doc[i])
        length += len(doc[i])
        if i == len(doc) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for seg in chunk[:a_end] for t in seg]
            if (len(chunk) == 1 or rng.random() < 0.5) and len(docs) > 1:
                label = NOT_NEXT
                b = _random_b(docs, index, max(target - len(a), 1), rng)
                i -= len(chunk) - a_end  # put the unused segments back
            else:
                label = IS_NEXT
                b = [t for seg in chunk[a_end:] for t in seg]
            truncate_pair(a, b, max_tokens, rng)
            if a and b:
                pairs.append(Pair(a, b, label))
            chunk, length = [], 0
        i += 1
    return pairs
