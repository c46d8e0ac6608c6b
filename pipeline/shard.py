"""Shard stage: documents -> pre-tokenized MLM+NSP examples in compact Arrow shards.

Each example stores only its A and B token ids (uint16 when the vocabulary fits), the length
of A and the NSP label; ``[CLS]``/``[SEP]``, token types and the attention mask are derived at
load time (``pipeline.data``) and masking happens per batch. Shard ``k`` holds the documents
``[k * docs_per_shard, (k+1) * docs_per_shard)`` of the corpus, and each chunk of documents
draws from its own seeded RNG, so the output is the same for any ``num_proc`` or task split.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer

from pipeline import lock, shards
from pipeline.config import fail, option, to_dict
from pipeline.corpus import corpus_files
from pipeline.errors import PipelineError
from pipeline.nsp import NOT_NEXT, document_pairs
from pipeline.parallel import ordered_map
from pipeline.progress import Progress
from pipeline.shards import MANIFEST, read_manifest
from pipeline.tokenizer import TOKENIZER_FILES, check_tokenizer_dir


@dataclass
class Config:
    corpus: str = option(help="directory written by 'kowiki-bert extract'")
    tokenizer: str = option(help="directory written by 'kowiki-bert tokenizer'")
    output: str = option(help="directory for the pretraining shards")
    max_seq_len: int = option(128, "tokens per example, [CLS] and two [SEP] included", bounds="[8, 4096]")
    short_seq_prob: float = option(0.1, "probability of a shorter random target length", bounds="[0, 1]")
    dupe_factor: int = option(1, "pairings per document, each with other random splits", bounds="[1, inf)")
    valid_fraction: float = option(0.01, "share of documents held out for validation", bounds="[0, 1)")
    seed: int = option(12345, "seed of pairing, truncation and the validation split", bounds="[0, inf)")
    num_proc: int = option(1, "worker processes on this machine", bounds="[1, inf)")
    task_index: int = option(0, "this task's index in a SLURM array", bounds="[0, inf)")
    num_tasks: int = option(1, "number of tasks; task i writes shards k with k % num_tasks == i", bounds="[1, inf)")
    docs_per_shard: int = option(8192, "documents per output shard (a multiple of chunk_docs)", bounds="[2, inf)")
    chunk_docs: int = option(256, "documents per unit of work; NotNext segments come from the same chunk", bounds="[2, inf)")
    overwrite: bool = option(False, "rebuild an output made from other inputs or settings (built beside it, swapped in when complete)")

    def __post_init__(self):
        if not 8 <= self.max_seq_len <= 4096:
            fail("max_seq_len", f"{self.max_seq_len} is out of range", "use 8..4096 (128 or 512 for BERT)")
        if not 0 <= self.short_seq_prob <= 1 or not 0 <= self.valid_fraction < 1:
            fail("valid_fraction" if self.short_seq_prob <= 1 else "short_seq_prob", "is not a probability", "use 0..1")
        if self.dupe_factor < 1 or self.num_proc < 1 or self.chunk_docs < 2:
            fail("dupe_factor", "dupe_factor and num_proc must be >= 1, chunk_docs >= 2", "raise them")
        if self.docs_per_shard % self.chunk_docs:
            fail("docs_per_shard", f"{self.docs_per_shard} is not a multiple of chunk_docs={self.chunk_docs}",
                 "make it one")
        if not 0 <= self.task_index < self.num_tasks:
            fail("task_index", f"{self.task_index} is outside 0..{self.num_tasks - 1}", "use 0 <= task_index < num_tasks")


ALIASES = {"--corpus": "corpus", "--tokenizer": "tokenizer", "--output": "output",
           "--max-seq-len": "max_seq_len", "--num-proc": "num_proc",
           "--task-index": "task_index", "--num-tasks": "num_tasks"}
_OUTPUT_FIELDS = ("max_seq_len", "short_seq_prob", "dupe_factor", "valid_fraction", "seed",
                  "docs_per_shard", "chunk_docs")
SPLITS = ("train", "valid")
NAMES, EXTRA = SPLITS, ("tokenizer",)  # train-0000k.arrow, valid-0000k.arrow; the tokenizer copy

_worker: dict = {}


def _init_worker(tokenizer_file: str, cfg: Config) -> None:
    tok = Tokenizer.from_file(tokenizer_file)
    tok.no_padding()
    tok.no_truncation()
    _worker.update(tok=tok, cfg=cfg)


def is_valid_doc(doc_id: str, seed: int, fraction: float) -> bool:
    """Held-out membership from the document id alone, so it never depends on the split of work."""
    h = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


def build_chunk(task) -> dict:
    """Worker: tokenize a chunk of documents and build its NSP examples, per split."""
    shard, chunk, ids, docs = task
    tok, cfg = _worker["tok"], _worker["cfg"]
    flat = [s for doc in docs for s in doc]
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    encoded = [e.ids for e in encode(flat, add_special_tokens=False)]
    token_docs, pos = [], 0
    for doc in docs:
        token_docs.append([seg for seg in encoded[pos:pos + len(doc)] if seg])
        pos += len(doc)
    out = {}
    for split in SPLITS:
        members = [d for d, doc_id in zip(token_docs, ids)
                   if d and is_valid_doc(doc_id, cfg.seed, cfg.valid_fraction) == (split == "valid")]
        pairs = []
        for dupe in range(cfg.dupe_factor):
            rng = random.Random(f"{cfg.seed}/{shard}/{chunk}/{split}/{dupe}")
            for i in range(len(members)):
                pairs += document_pairs(members, i, cfg.max_seq_len, cfg.short_seq_prob, rng)
        out[split] = _pack(pairs)
    out["tokens_in"] = sum(map(len, encoded))
    out["documents"] = len(docs)
    return out


def _pack(pairs) -> dict:
    return {"ids": np.fromiter((t for p in pairs for t in p.a + p.b), dtype=np.int64),
            "lengths": np.fromiter((len(p.a) + len(p.b) for p in pairs), dtype=np.int32, count=len(pairs)),
            "a_len": np.fromiter((len(p.a) for p in pairs), dtype=np.uint16, count=len(pairs)),
            "label": np.fromiter((p.label for p in pairs), dtype=np.uint8, count=len(pairs))}


def examples_table(parts: list[dict], id_type: pa.DataType) -> pa.Table:
    ids = np.concatenate([p["ids"] for p in parts]) if parts else np.zeros(0, np.int64)
    lengths = np.concatenate([p["lengths"] for p in parts]) if parts else np.zeros(0, np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(ids.astype(id_type.to_pandas_dtype()), type=id_type)
    return pa.table({
        "ids": pa.ListArray.from_arrays(pa.array(offsets), values),
        "a_len": pa.array(np.concatenate([p["a_len"] for p in parts]) if parts else np.zeros(0, np.uint16)),
        "label": pa.array(np.concatenate([p["label"] for p in parts]) if parts else np.zeros(0, np.uint8)),
    })


def read_documents(files: list[Path]):
    """(id, sentences) of every document of the corpus, streamed from its Arrow files."""
    for file in files:
        with pa.memory_map(str(file)) as source:
            for batch in pa.ipc.open_stream(source):
                yield from zip(batch.column("id").to_pylist(), batch.column("sentences").to_pylist())


def plan(docs, cfg: Config, config_hash: str, out: Path, seen: list):
    """("task", chunk) for this task's unfinished shards and ("close", k) at each shard's end."""
    shard, chunk_no, ids, texts = 0, 0, [], []
    mine = lambda k: k % cfg.num_tasks == cfg.task_index and shards.claim(out, k, config_hash, NAMES)
    todo = mine(0)
    for n, (doc_id, sentences) in enumerate(docs):
        seen[0] = n + 1
        if n and n % cfg.docs_per_shard == 0:
            if ids and todo:
                yield "task", (shard, chunk_no, ids, texts)
            yield "close", (shard, todo)
            shard, chunk_no, ids, texts, todo = shard + 1, 0, [], [], mine(shard + 1)
        elif n and n % cfg.chunk_docs == 0 and ids:
            if todo:
                yield "task", (shard, chunk_no, ids, texts)
            chunk_no, ids, texts = chunk_no + 1, [], []
        ids.append(doc_id)
        texts.append(sentences)
    if ids and todo:
        yield "task", (shard, chunk_no, ids, texts)
    yield "close", (shard, todo)


def run(cfg: Config) -> dict:
    """Build the output, as its one writer (array tasks of one job share it)."""
    with lock.writer(Path(cfg.output), "shard", shared=cfg.num_tasks > 1):
        return _run(cfg)


def _run(cfg: Config) -> dict:
    corpus_manifest = read_manifest(cfg.corpus, "corpus", "run 'kowiki-bert extract' (again) to finish it")
    files = corpus_files(cfg.corpus)
    tok_dir = Path(cfg.tokenizer)
    tok_hash = check_tokenizer_dir(tok_dir)
    vocab_size = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()
    id_type = pa.uint16() if vocab_size <= 65536 else pa.uint32()
    out = Path(cfg.output)
    identity = {"settings": {k: getattr(cfg, k) for k in _OUTPUT_FIELDS}, "tokenizer": tok_hash,
                "corpus": shards.output_fingerprint(corpus_manifest)}
    config_hash = shards.fingerprint(identity)
    build = shards.prepare_output(out, identity, cfg.overwrite, "shard", NAMES, [cfg.corpus, tok_dir], EXTRA)
    t0, seen, written, skipped = time.time(), [0], 0, 0
    parts: dict[str, list] = {s: [] for s in SPLITS}
    tokens_in = 0
    bar = Progress("shard", "documents", total=sum(rec["counts"].get("kept", 0) for rec in corpus_manifest["shards"]))
    work = plan(read_documents(files), cfg, config_hash, build, seen)
    for tag, value in ordered_map(build_chunk, work, cfg.num_proc, _init_worker,
                                  (str(tok_dir / "tokenizer.json"), cfg)):
        if tag == "task":
            for s in SPLITS:
                parts[s].append(value[s])
            tokens_in += value["tokens_in"]
            bar.update(value["documents"])
            continue
        shard, todo = value
        if todo:
            tables = {s: examples_table(parts[s], id_type) for s in SPLITS}
            counts = {f"{s}_examples": tables[s].num_rows for s in SPLITS}
            counts.update({f"{s}_tokens": int(sum(p["lengths"].sum() for p in parts[s])) for s in SPLITS},
                          not_next=int(sum((p["label"] == NOT_NEXT).sum() for p in parts["train"])),
                          tokens_in=tokens_in)
            shards.write_shard(build, shard, tables, {"config_hash": config_hash, "identity": identity, "counts": counts})
            written += 1
        else:
            skipped += 1
        parts, tokens_in = {s: [] for s in SPLITS}, 0
    bar.close()
    if seen[0] == 0:
        raise PipelineError(f"{cfg.corpus}: the corpus has no documents; extract a larger input")
    num_shards = (seen[0] - 1) // cfg.docs_per_shard + 1
    records = shards.complete_records(build, num_shards, config_hash)
    if records:
        manifest = {"kind": "pretraining", "tokenizer_hash": tok_hash, "vocab_size": vocab_size,
                    "id_dtype": str(id_type), "max_seq_len": cfg.max_seq_len, "config": to_dict(cfg),
                    "corpus": shards.corpus_summary(corpus_manifest)}
        with lock.publishing(out):  # array tasks finishing together: one publishes, the others see it done
            if shards.published(build, out, config_hash):
                totals = json.loads((out / shards.MANIFEST).read_text())["counts"]
            else:
                copy_tokenizer(tok_dir, build / "tokenizer")  # before the manifest, which marks the output complete
                totals = shards.write_manifest(build, records, manifest, identity)["counts"]
                shards.publish(build, out, NAMES, EXTRA)
        print(f"shard: {totals['train_examples']} train / {totals['valid_examples']} valid examples, "
              f"{totals['train_tokens'] + totals['valid_tokens']} tokens, "
              f"NotNext {totals['not_next'] / max(totals['train_examples'], 1):.1%} -> {out}", file=sys.stderr)
    print(f"shard: {written} shard(s) written, {skipped} skipped, {num_shards} in all, {time.time() - t0:.1f}s"
          + ("" if records else "; waiting for other tasks' shards"), file=sys.stderr)
    return {"done": bool(records), "shards": num_shards, "seconds": time.time() - t0}


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer's files (not a model folder's weights) atomically: a folder named
    ``tokenizer`` is always a whole one."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in TOKENIZER_FILES + (MANIFEST, "report.json"):
        if (src / name).exists():
            shutil.copy2(src / name, tmp / name)
    if dst.exists():
        shutil.rmtree(dst)
    os.rename(tmp, dst)


if __name__ == "__main__":
    from pipeline.cli import stage_main

    sys.exit(stage_main(__name__))
