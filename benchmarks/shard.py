"""Shard benchmark on ../shared/data/corpus/nsmc_reviews_docs.txt, in one run:

1. ours end to end, process start included: ``kowiki-bert extract`` (text layout) then
   ``kowiki-bert shard`` with a WordPiece vocabulary trained beforehand (not timed);
2. the raw ``tokenizers`` ``encode_batch`` throughput on the same lines (the ceiling);
3. a straight port of the seeds' line-by-line ``TextDatasetForNextSentencePrediction``.

Tokens/s count the corpus's tokens (the same for all three). Also prints bytes per token on
disk and the peak RSS on a quarter and on all of the corpus (flat memory).

    python benchmarks/shard.py [--processes 2] [--vocab-size 32000] [--max-seq-len 128]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import SHARED, kowiki_bert, run_measured, table  # noqa: E402


def encode_batch_rate(tokenizer_dir: Path, corpus: Path, processes: int) -> tuple[float, int]:
    import os

    os.environ["RAYON_NUM_THREADS"] = str(processes)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    t0 = time.perf_counter()
    tokens = 0
    for start in range(0, len(lines), 10000):
        tokens += sum(len(e.ids) for e in tok.encode_batch(lines[start:start + 10000], add_special_tokens=False))
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "nsmc_reviews_docs.txt")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--max-seq-len", type=int, default=128)
    args = ap.parse_args()
    if not args.corpus.exists():
        sys.exit(f"{args.corpus} is absent; pass --corpus FILE (one sentence per line, blank line between documents)")
    work = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    kb = kowiki_bert()
    p = str(args.processes)
    print(f"corpus: {args.corpus} ({args.corpus.stat().st_size / 1e6:.0f} MB); {args.processes} processes", flush=True)
    # untimed setup: the vocabulary all three use
    run_measured(kb + ["extract", "--input", args.corpus, "--output", work / "c0", "--min-document-chars", "1",
                       "--min-sentence-chars", "1", "--dedup", "false", "--scrub-pii", "false"])
    run_measured(kb + ["tokenizer", "--corpus", work / "c0", "--output", work / "tok", "--vocab-size", args.vocab_size])
    raw_s, tokens = encode_batch_rate(work / "tok", args.corpus, args.processes)
    print(f"  raw encode_batch: {raw_s:.1f}s for {tokens} tokens", flush=True)
    # ours: extract + shard, separate processes, start-up included
    keep_all = ["--min-document-chars", "1", "--min-sentence-chars", "1", "--dedup", "false", "--scrub-pii", "false"]
    ex_s, ex_rss = run_measured(kb + ["extract", "--input", args.corpus, "--output", work / "c", "--num-proc", p, *keep_all])
    sh_s, sh_rss = run_measured(kb + ["shard", "--corpus", work / "c", "--tokenizer", work / "tok", "--output", work / "s",
                                      "--num-proc", p, "--max-seq-len", args.max_seq_len])
    print(f"  ours: extract {ex_s:.1f}s + shard {sh_s:.1f}s", flush=True)
    manifest = json.loads((work / "s" / "manifest.json").read_text())
    stored_tokens = manifest["counts"]["train_tokens"] + manifest["counts"]["valid_tokens"]
    disk = sum(f.stat().st_size for f in (work / "s").glob("*.arrow"))
    seed_s, seed_rss = run_measured([sys.executable, Path(__file__).parent / "seeds_nsp_builder.py", work / "tok",
                                     args.corpus, work / "seeds.pkl", args.max_seq_len])
    seed_disk = (work / "seeds.pkl").stat().st_size
    print(f"  seeds' builder: {seed_s:.1f}s", flush=True)
    # memory flat in corpus size: shard a quarter of the documents
    quarter = work / "quarter.txt"
    text = args.corpus.read_text(encoding="utf-8").split("\n\n")
    quarter.write_text("\n\n".join(text[: len(text) // 4]), encoding="utf-8")
    run_measured(kb + ["extract", "--input", quarter, "--output", work / "cq", "--num-proc", p, *keep_all])
    q_s, q_rss = run_measured(kb + ["shard", "--corpus", work / "cq", "--tokenizer", work / "tok", "--output", work / "sq",
                                    "--num-proc", p, "--max-seq-len", args.max_seq_len])
    ours_s = ex_s + sh_s
    rows = [["ours: extract + shard (2 processes each)", f"{ours_s:.1f}", f"{tokens / ours_s / 1e3:.0f}K",
             f"{disk / stored_tokens:.2f}", f"{max(ex_rss, sh_rss) / 2**20:.0f}"],
            ["  of which shard stage", f"{sh_s:.1f}", f"{tokens / sh_s / 1e3:.0f}K", "", f"{sh_rss / 2**20:.0f}"],
            ["  shard stage on 1/4 of the corpus", f"{q_s:.1f}", "", "", f"{q_rss / 2**20:.0f}"],
            ["raw tokenizers encode_batch (in process)", f"{raw_s:.1f}", f"{tokens / raw_s / 1e3:.0f}K", "", ""],
            ["seeds' line-by-line NSP builder", f"{seed_s:.1f}", f"{tokens / seed_s / 1e3:.0f}K",
             f"{seed_disk / stored_tokens:.2f}", f"{seed_rss / 2**20:.0f}"]]
    print()
    print(table(rows, ["run", "seconds", "tokens/s", "bytes/token on disk", "peak RSS MiB"]))
    print(f"\nours vs seeds' builder, end to end: {seed_s / ours_s:.2f}x (target >= 2.5x)")
    print(f"shard stage (tokenize + pair + write, process start included) vs raw encode_batch: "
          f"{raw_s / sh_s:.0%} of its throughput (target >= 60%); with the extract stage too: {raw_s / ours_s:.0%}")
    print(f"bytes per token on disk: {disk / stored_tokens:.2f} (target <= 2.2); "
          f"examples {manifest['counts']['train_examples'] + manifest['counts']['valid_examples']}, tokens {stored_tokens}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
