"""Rebuild the embedded sample files from ``articles.py`` and ``reviews.py``.

The dump is written as a *multistream* bz2 (a few pages per bz2 stream, as Wikimedia's
``pages-articles-multistream`` files are), so the main command exercises that reader too.
Run ``python -m pipeline.sample.build`` after editing the sources.
"""

from __future__ import annotations

import bz2
import random
from pathlib import Path
from xml.sax.saxutils import escape

from pipeline.sample.articles import ARTICLES, OTHER_NAMESPACES, REDIRECTS
from pipeline.sample.reviews import OPENERS_EVAL, OPENERS_TRAIN, rows

HERE = Path(__file__).parent
DUMP = HERE / "kowiki-sample-pages-articles-multistream.xml.bz2"
REVIEWS_TRAIN = HERE / "reviews_train.tsv"
REVIEWS_EVAL = HERE / "reviews_eval.tsv"

HEADER = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.mediawiki.org/xml/export-0.11/ http://www.mediawiki.org/xml/export-0.11.xsd" version="0.11" xml:lang="ko">
  <siteinfo>
    <sitename>위키백과</sitename>
    <dbname>kowiki</dbname>
    <base>https://ko.wikipedia.org/wiki/</base>
    <generator>MediaWiki 1.42.0</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">토론</namespace>
      <namespace key="2" case="first-letter">사용자</namespace>
      <namespace key="4" case="first-letter">위키백과</namespace>
      <namespace key="10" case="first-letter">틀</namespace>
      <namespace key="14" case="first-letter">분류</namespace>
    </namespaces>
  </siteinfo>
"""


def page_xml(page_id: int, title: str, ns: int, text: str, redirect: str | None = None) -> str:
    redirect_el = f'\n    <redirect title="{escape(redirect)}" />' if redirect else ""
    return f"""  <page>
    <title>{escape(title)}</title>
    <ns>{ns}</ns>
    <id>{page_id}</id>{redirect_el}
    <revision>
      <id>{page_id + 1000}</id>
      <timestamp>2026-10-01T00:00:00Z</timestamp>
      <contributor><username>kowiki-bert</username><id>1</id></contributor>
      <model>wikitext</model>
      <format>text/x-wiki</format>
      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>
      <sha1>0</sha1>
    </revision>
  </page>
"""


def pages() -> list[str]:
    out, pid = [], 1
    for title, text in ARTICLES.items():
        out.append(page_xml(pid, title, 0, text))
        pid += 1
    for title, target in REDIRECTS.items():
        out.append(page_xml(pid, title, 0, f"#넘겨주기 [[{target}]]", redirect=target))
        pid += 1
    for ns, title, text in OTHER_NAMESPACES:
        out.append(page_xml(pid, title, ns, text))
        pid += 1
    return out


def write_dump(path: Path, page_xmls: list[str], layout: str = "multistream", pages_per_stream: int = 5) -> None:
    """A MediaWiki export of ``page_xmls`` as plain XML, one bz2 stream, multistream bz2 or gzip."""
    body = HEADER + "".join(page_xmls) + "</mediawiki>\n"
    if layout == "xml":
        path.write_text(body, encoding="utf-8")
    elif layout == "bz2":
        path.write_bytes(bz2.compress(body.encode()))
    elif layout == "gzip":
        import gzip

        path.write_bytes(gzip.compress(body.encode(), mtime=0))
    elif layout == "multistream":
        streams = [bz2.compress(HEADER.encode())]
        for i in range(0, len(page_xmls), pages_per_stream):
            streams.append(bz2.compress("".join(page_xmls[i:i + pages_per_stream]).encode()))
        streams.append(bz2.compress(b"</mediawiki>\n"))
        path.write_bytes(b"".join(streams))
    else:
        raise ValueError(layout)


def write_reviews(path: Path, openers, seed: int) -> None:
    data = rows(openers)
    random.Random(seed).shuffle(data)
    lines = ["id\tdocument\tlabel"] + [f"{i + 1}\t{text}\t{label}" for i, (text, label) in enumerate(data)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_dump(DUMP, pages())
    write_reviews(REVIEWS_TRAIN, OPENERS_TRAIN, 1)
    write_reviews(REVIEWS_EVAL, OPENERS_EVAL, 2)
    print(f"wrote {DUMP}, {REVIEWS_TRAIN}, {REVIEWS_EVAL}")
