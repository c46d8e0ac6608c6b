"""Extract benchmark: our extract stage vs wikiextractor on the same >= 200 MB kowiki-style dump.

The dump is built from real Korean text (../shared's review corpus, or the embedded sample's
articles) wrapped in the markup a kowiki dump carries, each page unique, as a bz2 file like
Wikimedia's. Both tools get the same number of processes in the same run. Prints MB/s (of
uncompressed XML), pages/s, peak RSS of the process tree, the ratio, and the time a full
kowiki dump (3.5 GB of XML) would take at the measured rate.

    python benchmarks/extract.py [--size-mb 200] [--processes 2] [--dump PATH]
"""

from __future__ import annotations

import argparse
import bz2
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import SHARED, kowiki_bert, run_measured, table  # noqa: E402
from pipeline.sample.build import HEADER, page_xml  # noqa: E402

FULL_KOWIKI_XML_MB = 3500


def prose_documents() -> list[list[str]]:
    src = SHARED / "corpus" / "nsmc_reviews_docs.txt"
    if src.exists():
        docs, cur = [], []
        for line in src.read_text(encoding="utf-8").splitlines():
            if line.strip():
                cur.append(line.strip())
            elif cur:
                docs.append(cur)
                cur = []
        return docs
    from pipeline.sample.articles import ARTICLES
    from pipeline.wikitext import clean_wikitext

    return [clean_wikitext(text) for text in ARTICLES.values()]


def wikitext(title: str, sentences: list[str], rng: random.Random) -> str:
    """Prose in the shape of a kowiki article: infobox, links, refs, headings, tables, files."""
    parts = [f"{{{{정보상자 문서\n| 이름 = {title}\n| 날짜 = {{{{날짜|{rng.randint(1900, 2020)}|1|1}}}}\n| 지도 = [[파일:Map{rng.randint(1, 9)}.png|200px]]\n}}}}",
             f"'''{title}'''은(는) 이 문서의 주제이다."]
    para = []
    for i, s in enumerate(sentences):
        words = s.split(" ")
        j = rng.randrange(len(words))
        if re.fullmatch(r"[가-힣]+", words[j]):
            words[j] = f"[[{words[j]}]]" if rng.random() < 0.5 else f"[[{words[j]} (동음이의)|{words[j]}]]"
        text = " ".join(words)
        if rng.random() < 0.3:
            text += f'<ref name="r{i}">{{{{웹 인용|url=https://example.org/{rng.randint(0, 10**6)}|제목=출처 {i}|날짜={{{{날짜|2020|1|1}}}}}}}}</ref>'
        para.append(text)
        if len(para) == 4:
            parts.append(" ".join(para))
            para = []
            if rng.random() < 0.3:
                parts.append(rng.choice(["== 개요 ==", "=== 평가 ===", "{| class=\"wikitable\"\n! 항목 !! 값\n|-\n| 가 || 1\n|-\n| 나 || 2\n|}",
                                         "[[파일:사진.jpg|섬네일|[[사진]] 설명]]", "* 목록 항목\n* 둘째 항목", "<!-- 주석 -->"]))
    parts.append(" ".join(para))
    parts += ["== 각주 ==", "<references />", f"[[분류:{title}]]", "[[en:Example]]"]
    return "\n".join(parts)


def build_dump(path: Path, size_mb: int, seed: int = 0) -> tuple[int, int]:
    """Write a bz2 kowiki-style dump of about ``size_mb`` MB of XML; returns (xml bytes, pages)."""
    rng = random.Random(seed)
    docs = prose_documents()
    written, pages, n = len(HEADER.encode()), 0, 0
    with bz2.open(path, "wb", compresslevel=6) as out:
        out.write(HEADER.encode())
        while written < size_mb * 1_000_000:
            doc = docs[n % len(docs)]
            n += 1
            for start in range(0, len(doc), 40):  # long review lists become several articles
                title = f"문서 {n}-{start}"
                if rng.random() < 0.15:  # redirects and other namespaces, as in a real dump
                    xml = page_xml(n * 1000 + start, title, rng.choice([0, 10, 14]), "#넘겨주기 [[문서 1-0]]")
                else:
                    xml = page_xml(n * 1000 + start, title, 0, wikitext(title, doc[start:start + 40], rng))
                data = xml.encode()
                out.write(data)
                written += len(data)
                pages += 1
        out.write(b"</mediawiki>\n")
    return written, pages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--dump", type=Path, help="use this dump instead of building one")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    if args.dump:
        dump, xml_bytes, pages = args.dump, None, None
    else:
        dump = work / "kowiki-style.xml.bz2"
        xml_bytes, pages = build_dump(dump, args.size_mb)
        small = work / "kowiki-style-quarter.xml.bz2"
        build_dump(small, args.size_mb // 4, seed=1)
    if xml_bytes is None:
        with bz2.open(dump, "rb") as fh:
            xml_bytes = sum(len(b) for b in iter(lambda: fh.read(1 << 24), b""))
        pages = 0
    mb = xml_bytes / 1e6
    print(f"dump: {dump} ({dump.stat().st_size / 1e6:.0f} MB bz2, {mb:.0f} MB XML, {pages} pages); "
          f"{args.processes} processes each", flush=True)
    rows = []
    runs = [("kowiki-bert extract (hybrid)", kowiki_bert() + ["extract", "--input", dump, "--output", work / "ours",
                                                              "--num-proc", args.processes]),
            ("kowiki-bert extract (parser)", kowiki_bert() + ["extract", "--input", dump, "--output", work / "parser",
                                                              "--num-proc", args.processes, "--wikitext-mode", "parser"]),
            ("wikiextractor 3.x", [sys.executable, "-m", "wikiextractor.WikiExtractor", dump, "-o", work / "we",
                                   "--processes", args.processes, "-q", "--json"])]
    results = {}
    for name, cmd in runs:
        seconds, rss = run_measured(cmd)
        results[name] = seconds
        rows.append([name, f"{seconds:.1f}", f"{mb / seconds:.2f}", f"{pages / seconds:.0f}" if pages else "-",
                     f"{rss / 2**20:.0f}", f"{FULL_KOWIKI_XML_MB / (mb / seconds) / 60:.1f}"])
        print(f"  {name}: {seconds:.1f}s", flush=True)
    if not args.dump:
        seconds, rss_small = run_measured(kowiki_bert() + ["extract", "--input", small, "--output", work / "small",
                                                           "--num-proc", args.processes])
        rows.append([f"kowiki-bert extract, 1/4-size dump", f"{seconds:.1f}", f"{mb / 4 / seconds:.2f}", "-",
                     f"{rss_small / 2**20:.0f}", "-"])
    print()
    print(table(rows, ["run", "seconds", "MB/s (XML)", "pages/s", "peak RSS MiB", "full kowiki (min)"]))
    ours, theirs = results["kowiki-bert extract (hybrid)"], results["wikiextractor 3.x"]
    print(f"\nspeed ratio kowiki-bert (hybrid) / wikiextractor at {args.processes} processes: {theirs / ours:.2f}x")
    print(f"hybrid cleaner vs pure mwparserfromhell: {results['kowiki-bert extract (parser)'] / ours:.2f}x faster")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
