"""Extract stage: a kowiki dump (or WikiExtractor/JSONL/Parquet/text) -> clean Arrow documents.

Pages are read in one streaming pass; shard ``k`` holds the documents of input pages
``[k * pages_per_shard, (k+1) * pages_per_shard)``, so the output is the same however the
work is split over processes (``num_proc``) or SLURM array tasks (``task_index``/``num_tasks``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline import lock, corpus, shards
from pipeline.config import fail, option, to_dict
from pipeline.parallel import ordered_map
from pipeline.pii import scrub
from pipeline.progress import Progress
from pipeline.readers import InputError, RawPage, detect_format, read_pages
from pipeline.textnorm import normalize, split_sentences
from pipeline.wikitext import clean_wikitext, is_redirect_text


@dataclass
class Config:
    input: str = option(help="kowiki dump (.xml, .xml.bz2, multistream .bz2), WikiExtractor folder, JSONL, Parquet or text file")
    output: str = option(help="directory for the Arrow document shards and manifest.json")
    format: str = option("auto", "input layout", choices=("auto", "mediawiki", "wikiextractor", "jsonl", "parquet", "text"))
    num_proc: int = option(1, "worker processes for cleaning on this machine", bounds="[1, inf)")
    task_index: int = option(0, "this task's index when a SLURM array splits the work (SLURM_ARRAY_TASK_ID)", bounds="[0, inf)")
    num_tasks: int = option(1, "number of tasks the work is split over; task i writes shards k with k % num_tasks == i", bounds="[1, inf)")
    pages_per_shard: int = option(20000, "input pages per output shard", bounds="[1, inf)")
    chunk_pages: int = option(64, "pages handed to a worker at a time", bounds="[1, inf)")
    wikitext_mode: str = option("hybrid", "wikitext cleaner (see benchmarks/extract.py)", choices=("hybrid", "parser"))
    min_sentence_chars: int = option(8, "drop sentences shorter than this many characters", bounds="[0, inf)")
    min_document_chars: int = option(64, "drop documents with fewer characters of kept sentences", bounds="[0, inf)")
    min_sentences: int = option(1, "drop documents with fewer kept sentences", bounds="[0, inf)")
    scrub_pii: bool = option(True, "replace e-mails, phone, RRN, card and account numbers with placeholders")
    dedup: bool = option(True, "drop exact duplicate pages and repeated sentences within a document")
    overwrite: bool = option(False, "rebuild an output made from other inputs or settings (built beside it, swapped in when complete)")

    def __post_init__(self):
        if self.num_proc < 1:
            fail("num_proc", f"is {self.num_proc}", "use 1 or more")
        if not 0 <= self.task_index < self.num_tasks:
            fail("task_index", f"{self.task_index} is outside 0..{self.num_tasks - 1}", "use 0 <= task_index < num_tasks")
        for name in ("pages_per_shard", "chunk_pages"):
            if getattr(self, name) < 1:
                fail(name, f"is {getattr(self, name)}", "use 1 or more")


ALIASES = {"--input": "input", "--output": "output", "--num-proc": "num_proc",
           "--task-index": "task_index", "--num-tasks": "num_tasks"}

# Settings that change the output; num_proc and the task split do not.
_OUTPUT_FIELDS = ("format", "pages_per_shard", "wikitext_mode", "min_sentence_chars",
                  "min_document_chars", "min_sentences", "scrub_pii", "dedup")
NAMES = ("shard",)  # the Arrow files of shard k: shard-0000k.arrow


def page_sentences(page: RawPage, cfg: Config, pii: Counter) -> list[str]:
    """The clean sentences of one page."""
    if page.markup == "wikitext":
        paragraphs, presplit = clean_wikitext(page.text, cfg.wikitext_mode), False
    else:
        paragraphs, presplit = page.text.split("\n"), page.markup == "sentences"
    out, seen = [], set()
    for paragraph in paragraphs:
        paragraph = normalize(paragraph)
        for sentence in ([paragraph] if presplit else split_sentences(paragraph)):
            if cfg.scrub_pii:
                sentence = scrub(sentence, pii)
            if len(sentence) < cfg.min_sentence_chars or (cfg.dedup and sentence in seen):
                continue
            seen.add(sentence)
            out.append(sentence)
    return out


def clean_chunk(args) -> tuple[list[dict], Counter, Counter]:
    """Worker: clean a chunk of pages; returns documents, drop reasons and PII counts."""
    pages, cfg = args
    docs, dropped, pii = [], Counter(), Counter()
    for page in pages:
        sentences = page_sentences(page, cfg, pii)
        if not sentences:
            dropped["empty"] += 1
        elif len(sentences) < cfg.min_sentences or sum(map(len, sentences)) < cfg.min_document_chars:
            dropped["too_short"] += 1
        else:
            docs.append({"id": page.id, "title": normalize(page.title), "sentences": sentences})
    return docs, dropped, pii


def drop_reason(page: RawPage, seen: set, cfg: Config) -> str | None:
    """Cheap filters done while reading: namespace, redirect, exact duplicate."""
    if page.ns != 0:
        return "not_article"
    if page.redirect or (page.markup == "wikitext" and is_redirect_text(page.text)):
        return "redirect"
    if cfg.dedup:
        key = hashlib.blake2b(page.text.encode(), digest_size=8).digest()
        if key in seen:
            return "duplicate"
        seen.add(key)
    return None


def plan(pages, cfg: Config, config_hash: str, out: Path, stats: dict):
    """Yield ("task", chunk) for pages of this task's unfinished shards, ("close", k) per shard."""
    seen: set = set()
    chunk: list = []
    shard = 0
    mine = lambda k: k % cfg.num_tasks == cfg.task_index and shards.claim(out, k, config_hash, NAMES)
    todo = mine(0)
    stats[0] = Counter()
    for ordinal, page in enumerate(pages):
        k = ordinal // cfg.pages_per_shard
        if k != shard:
            if chunk:
                yield "task", (chunk, cfg)
                chunk = []
            yield "close", (shard, todo)
            shard, todo = k, mine(k)
            stats[k] = Counter()
        stats[k]["pages_seen"] += 1
        reason = drop_reason(page, seen, cfg)  # every task reads every page, so dedup agrees
        if reason:
            stats[k][reason] += 1
        elif todo:
            chunk.append(page)
            if len(chunk) >= cfg.chunk_pages:
                yield "task", (chunk, cfg)
                chunk = []
    if chunk:
        yield "task", (chunk, cfg)
    if stats[0]["pages_seen"] == 0:
        raise InputError(f"{cfg.input}: no pages or documents found; pass a non-empty dump or corpus")
    yield "close", (shard, todo)


def run(cfg: Config) -> dict:
    """Build the output, as its one writer (array tasks of one job share it)."""
    with lock.writer(Path(cfg.output), "extract", shared=cfg.num_tasks > 1):
        return _run(cfg)


def _run(cfg: Config) -> dict:
    src = Path(cfg.input)
    fmt = detect_format(src) if cfg.format == "auto" else cfg.format  # a bad input fails before anything
    out = Path(cfg.output)
    t0 = time.time()
    # The input's content, not its path: a new dump at the same path rebuilds, a moved one is reused.
    source = {"format": fmt, "bytes": _size(src), "sha256": shards.tree_sha256(src)}
    identity = {"settings": {k: getattr(cfg, k) for k in _OUTPUT_FIELDS}, "source": source}
    config_hash = shards.fingerprint(identity)
    build = shards.prepare_output(out, identity, cfg.overwrite, "extract", NAMES, inputs=[src])
    stats: dict[int, Counter] = {}
    docs, dropped, pii, kept_hashes = [], Counter(), Counter(), set()
    written = skipped = 0
    bar = Progress("extract", "pages cleaned")
    for tag, value in ordered_map(clean_chunk, plan(read_pages(src, fmt), cfg, config_hash, build, stats), cfg.num_proc):
        if tag == "task":
            chunk_docs, chunk_dropped, chunk_pii = value
            docs += chunk_docs
            dropped.update(chunk_dropped)
            pii.update(chunk_pii)
            bar.update(len(chunk_docs) + sum(chunk_dropped.values()))
            continue
        shard, todo = value
        if todo:
            if cfg.dedup:  # cleaned-text duplicates inside the shard
                unique = []
                for d in docs:
                    key = hashlib.blake2b("\n".join(d["sentences"]).encode(), digest_size=8).digest()
                    if key in kept_hashes:
                        dropped["duplicate"] += 1
                    else:
                        kept_hashes.add(key)
                        unique.append(d)
                docs = unique
            counts = dict(stats[shard], **dropped, kept=len(docs))
            shards.write_shard(build, shard, {"shard": corpus.documents_table(docs)},
                               {"config_hash": config_hash, "identity": identity, "counts": counts, "pii": dict(pii)})
            written += 1
        else:
            skipped += 1
        docs, dropped, pii, kept_hashes = [], Counter(), Counter(), set()
    bar.close()
    num_shards = len(stats)
    records = shards.complete_records(build, num_shards, config_hash)
    seconds = time.time() - t0
    print(f"extract: {written} shard(s) written, {skipped} skipped (done or other tasks'), "
          f"{num_shards} in all, {seconds:.1f}s" + ("" if records else "; waiting for other tasks' shards"),
          file=sys.stderr)
    if records:
        manifest = {"kind": "corpus", "source": dict(source, path=str(src.resolve())), "config": to_dict(cfg)}
        totals = _check_kept(src, records)
        with lock.publishing(out):  # array tasks finishing together: one publishes, the others see it done
            if shards.published(build, out, config_hash):
                manifest = json.loads((out / shards.MANIFEST).read_text())
            else:
                manifest = shards.write_manifest(build, records, manifest, identity)
                shards.publish(build, out, NAMES)
        print(f"extract: {totals.get('pages_seen', 0)} pages seen, {totals.get('kept', 0)} documents kept; "
              f"dropped {_fmt(totals, ('not_article', 'redirect', 'duplicate', 'empty', 'too_short'))}; "
              f"PII replaced {_fmt(manifest['pii'], ('email', 'phone', 'rrn', 'card', 'account'))} -> {out}",
              file=sys.stderr)
    return {"done": bool(records), "shards": num_shards, "seconds": seconds}


def _check_kept(src: Path, records: list[dict]) -> dict:
    """The summed page counts; an output with no document at all is an error, not a corpus."""
    totals = Counter()
    for r in records:
        totals.update(r["counts"])
    if not totals["kept"]:
        raise InputError(f"{src}: no documents kept of {totals['pages_seen']} pages "
                         f"({_fmt(totals, ('not_article', 'redirect', 'duplicate', 'empty', 'too_short'))} dropped); "
                         f"check --format, or lower --min-document-chars/--min-sentence-chars for short texts")
    return totals


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fmt(counts: dict, keys) -> str:
    return ", ".join(f"{k} {counts.get(k, 0)}" for k in keys)


if __name__ == "__main__":
    from pipeline.cli import stage_main

    sys.exit(stage_main(__name__))
