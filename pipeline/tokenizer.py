"""Tokenizer stage: train a Korean WordPiece vocabulary on the extracted documents.

No lowercasing and no accent stripping: BERT's accent stripping runs NFD, which splits every
Hangul syllable into conjoining jamo. The normalizer is NFC plus BERT's cleanup.

Training is not bit-reproducible: ``tokenizers``' trainer numbers the ``##`` pieces in hash-map
order, which changes merge tie-breaks between runs (huggingface/tokenizers#1794). So a rerun
with the same corpus and settings keeps the existing vocabulary (``manifest.json`` records what
it was built from) and a resubmitted chain continues; the shard manifest records the
tokenizer's hash, and every later stage is exact given it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from pipeline.config import fail, option
from pipeline.corpus import load_documents
from pipeline.errors import PipelineError
from pipeline.shards import (
    MANIFEST,
    atomic_write_json,
    check_not_inputs,
    differences,
    output_fingerprint,
    read_manifest,
    recover_swap,
    swap_dir,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class Config:
    corpus: str = option(help="directory written by 'kowiki-bert extract'")
    output: str = option(help="directory for the Hugging Face tokenizer")
    vocab_size: int = option(32000, "WordPiece vocabulary size, special tokens included", bounds="[105, 1048576]")
    min_frequency: int = option(2, "ignore pieces seen fewer times", bounds="[1, inf)")
    limit_alphabet: int = option(3000, "most frequent characters kept as the base alphabet (Hangul needs ~2,500)", bounds="[1, inf)")
    max_documents: int = option(300000, "train on a seeded sample of this many documents (0: all)", bounds="[0, inf)")
    heldout_documents: int = option(500, "documents kept out of training to report UNK rate and tokens per word", bounds="[0, inf)")
    seed: int = option(0, "seed of the document sample and hold-out", bounds="[0, inf)")
    overwrite: bool = option(False, "train anew over an output built from another corpus or settings (swapped in when complete)")

    def __post_init__(self):
        if self.vocab_size < len(SPECIAL_TOKENS) + 100:
            fail("vocab_size", f"{self.vocab_size} is too small", "use at least a few thousand")
        if self.max_documents < 0 or self.heldout_documents < 0:
            fail("max_documents", "is negative", "use 0 or more")


ALIASES = {"--corpus": "corpus", "--output": "output", "--vocab-size": "vocab_size"}
_OUTPUT_FIELDS = ("vocab_size", "min_frequency", "limit_alphabet", "max_documents", "heldout_documents", "seed")


def build_tokenizer() -> Tokenizer:
    """An untrained BERT-style WordPiece pipeline that leaves Hangul intact."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False),
    ])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _split(n: int, cfg: Config) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(cfg.seed).shuffle(order)
    held = sorted(order[:min(cfg.heldout_documents, n // 10)])
    train = order[len(held):]
    if cfg.max_documents and len(train) > cfg.max_documents:
        train = train[:cfg.max_documents]
    return sorted(train), held


def _sentences(docs, indices, batch: int = 1000):
    for start in range(0, len(indices), batch):
        for doc in docs.select(indices[start:start + batch])["sentences"]:
            yield from doc


def evaluate(tok: Tokenizer, sentences: list[str]) -> dict:
    """UNK rate and tokens per whitespace word on held-out text."""
    unk = tok.token_to_id("[UNK]")
    encs = tok.encode_batch(sentences, add_special_tokens=False)
    tokens = sum(len(e.ids) for e in encs)
    unks = sum(e.ids.count(unk) for e in encs)
    words = sum(len(s.split()) for s in sentences)
    return {"heldout_sentences": len(sentences), "tokens": tokens,
            "unk_rate": unks / max(tokens, 1), "tokens_per_word": tokens / max(words, 1)}


def jamo_share(vocab: dict[str, int]) -> float:
    """Share of vocabulary entries holding conjoining jamo: high means Hangul was decomposed."""
    bad = sum(any("\u1100" <= c <= "\u11ff" for c in piece) for piece in vocab)
    return bad / max(len(vocab), 1)


def with_bert_template(tok: Tokenizer) -> Tokenizer:
    """``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types, as BERT's tokenizers add them."""
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return tok


# What BERT users expect in tokenizer_config.json: a BERT class that transformers 4.x and 5.x
# both know, and no lowercasing or accent stripping (their NFD would split Hangul into jamo).
PORTABLE_CONFIG = {"tokenizer_class": "BertTokenizer", "do_lower_case": False, "strip_accents": False,
                   "tokenize_chinese_chars": True, "do_basic_tokenize": True, "never_split": None,
                   "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                   "mask_token": "[MASK]", "model_max_length": 512, "clean_up_tokenization_spaces": False,
                   "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def write_tokenizer(tok, out: Path) -> None:
    """Save a WordPiece tokenizer so that it loads alike under transformers 4.x and 5.x.

    ``tokenizer.json`` is the exact pipeline (fast tokenizers), ``vocab.txt`` serves the slow
    ``BertTokenizer`` (whose basic tokenizer applies NFC too), and the config names
    ``BertTokenizer``, not transformers 5's ``TokenizersBackend`` that 4.x cannot load.
    ``tok`` is a ``tokenizers.Tokenizer`` or a fast transformers tokenizer.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backend = getattr(tok, "backend_tokenizer", tok)
    vocab = sorted(backend.get_vocab().items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise PipelineError("tokenizer: the vocabulary ids are not 0..n-1, so no vocab.txt can list them; report this as a bug")
    backend.save(str(out / "tokenizer.json"))
    (out / "vocab.txt").write_text("".join(f"{piece}\n" for piece, _ in vocab), encoding="utf-8")
    atomic_write_json(out / "tokenizer_config.json", PORTABLE_CONFIG)
    atomic_write_json(out / "special_tokens_map.json", {k: v for k, v in PORTABLE_CONFIG.items() if k.endswith("_token")})


def tokenizer_hash(path: str | Path) -> str:
    """Identity of a saved tokenizer: the hash of its ``tokenizer.json``."""
    file = Path(path) / "tokenizer.json"
    if not file.exists():
        raise PipelineError(f"{path}: no tokenizer.json; pass a directory written by 'kowiki-bert tokenizer'")
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]


def read_tokenizer_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return manifest if manifest.get("kind") == "tokenizer" else None
    except (OSError, ValueError, AttributeError):
        return None


def check_tokenizer_dir(path: str | Path) -> str:
    """The hash of a complete tokenizer: this stage's output (refusing partial or edited ones),
    or another model's WordPiece tokenizer (``tokenizer.json`` with BERT's special tokens), for
    continued pretraining of that model."""
    path = Path(path)
    digest = tokenizer_hash(path)
    manifest = read_tokenizer_manifest(path)
    if manifest is None and (path / MANIFEST).exists():
        raise PipelineError(f"{path}: {MANIFEST} is unreadable, so it is not a complete 'kowiki-bert tokenizer' output; "
                            "run 'kowiki-bert tokenizer' (again) for it")
    if manifest is None and ((path / "report.json").exists() or not (path / "tokenizer_config.json").exists()):
        raise PipelineError(f"{path}: no {MANIFEST}, so it is not a complete 'kowiki-bert tokenizer' output (nor a Hugging "
                            "Face tokenizer folder with tokenizer_config.json); run 'kowiki-bert tokenizer' (again) for it")
    if manifest is None:  # another model's tokenizer, e.g. to continue pretraining that model
        vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise PipelineError(f"{path}/tokenizer.json lacks BERT's special tokens {', '.join(missing)}; pass a BERT "
                                "WordPiece tokenizer or one made by 'kowiki-bert tokenizer'")
        return digest
    if manifest["tokenizer_hash"] != digest:
        raise PipelineError(f"{path}/tokenizer.json changed after 'kowiki-bert tokenizer' wrote it "
                            f"(hash {digest}, recorded {manifest['tokenizer_hash']}); run the tokenizer stage again")
    return digest


def _reusable(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """The existing output if it was built from the same corpus and settings; refuses to touch
    a folder of someone else's files, or another build without ``overwrite``."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise PipelineError(f"--output {out} is a file; pass a directory")
    manifest = read_tokenizer_manifest(out)
    entries = sorted(p.name for p in out.iterdir())
    foreign = [e for e in entries if e not in (manifest or {}).get("files", []) + [MANIFEST]]
    if foreign:
        raise PipelineError(f"{out} holds files 'kowiki-bert tokenizer' did not write ({', '.join(foreign[:3])}); "
                            "pass an empty or new --output")
    if manifest is None:
        return None
    if manifest["identity"] == identity and tokenizer_hash(out) == manifest["tokenizer_hash"]:
        return manifest
    if not overwrite:
        why = "; ".join(differences(manifest["identity"], identity)) or "tokenizer.json was edited"
        raise PipelineError(f"{out} holds a tokenizer built from another corpus or settings ({why}); pass a new "
                            "--output, or --overwrite true to train a new one (shards made with the old one are then refused)")
    return None


def run(cfg: Config) -> dict:
    """Train (or keep) the vocabulary, as the output's one writer."""
    from pipeline import lock

    with lock.writer(Path(cfg.output), "tokenizer"):
        return _run(cfg)


def _run(cfg: Config) -> dict:
    corpus_manifest = read_manifest(Path(cfg.corpus), "corpus", "run 'kowiki-bert extract' (again) to finish it")
    identity = {"settings": {k: getattr(cfg, k) for k in _OUTPUT_FIELDS}, "corpus": output_fingerprint(corpus_manifest)}
    out = Path(cfg.output)
    check_not_inputs(out, [cfg.corpus])
    recover_swap(out)
    kept = _reusable(out, identity, cfg.overwrite)
    if kept:  # training again would give another vocabulary (see the module docstring)
        print(f"tokenizer: kept the vocabulary in {out}: same corpus and settings (hash {kept['tokenizer_hash']})",
              file=sys.stderr)
        return kept["report"]
    docs = load_documents(cfg.corpus)
    if len(docs) == 0:
        raise PipelineError(f"{cfg.corpus}: the corpus has no documents; extract a larger input")
    train_idx, held_idx = _split(len(docs), cfg)
    tok = build_tokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=SPECIAL_TOKENS,
        limit_alphabet=cfg.limit_alphabet, continuing_subword_prefix="##", show_progress=sys.stderr.isatty())
    print(f"tokenizer: training WordPiece ({cfg.vocab_size} pieces) on {len(train_idx)} documents", file=sys.stderr)
    tok.train_from_iterator(_sentences(docs, train_idx), trainer=trainer, length=None)
    if tok.token_to_id("[PAD]") != 0:
        raise PipelineError("tokenizer: [PAD] did not get id 0; report this as a bug")
    report = evaluate(tok, list(_sentences(docs, held_idx)) or docs[0]["sentences"])
    report.update(vocab_size=tok.get_vocab_size(), jamo_share=jamo_share(tok.get_vocab()),
                  train_documents=len(train_idx), heldout_documents=len(held_idx))
    save(tok, report, identity, out)
    print(f"tokenizer: vocab {report['vocab_size']}, held-out UNK rate {report['unk_rate']:.3%}, "
          f"{report['tokens_per_word']:.2f} tokens/word, jamo pieces {report['jamo_share']:.2%} -> {out}",
          file=sys.stderr)
    return report


def save(tok: Tokenizer, report: dict, identity: dict, out: Path) -> None:
    """Write beside ``out``, manifest last, then swap in: ``out`` is always a whole tokenizer."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tokenizer(with_bert_template(tok), tmp)
    atomic_write_json(tmp / "report.json", report)
    files = sorted(p.name for p in tmp.iterdir())
    atomic_write_json(tmp / MANIFEST, {"kind": "tokenizer", "identity": identity, "tokenizer_hash": tokenizer_hash(tmp),
                                       "vocab_size": tok.get_vocab_size(), "files": files, "report": report})
    out.parent.mkdir(parents=True, exist_ok=True)
    swap_dir(tmp, out)


if __name__ == "__main__":
    from pipeline.cli import stage_main

    sys.exit(stage_main(__name__))
