"""Stream pages out of every input layout the extract stage accepts, in bounded memory.

Layouts, detected from content rather than file names: MediaWiki XML exports (plain,
bz2 or multistream bz2, gzip), WikiExtractor output (``<doc>`` blocks or ``--json`` lines),
JSONL or Parquet with ``title``/``text`` columns, and plain text with one sentence per line
and a blank line between documents.
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError


@dataclass
class RawPage:
    """One page as read, before cleaning. ``markup`` says how to turn ``text`` into sentences."""

    id: str
    title: str
    text: str
    markup: str  # "wikitext" (MediaWiki), "paragraphs" (one per line), "sentences" (one per line)
    ns: int = 0
    redirect: bool = False


class InputError(PipelineError):
    """The input file is missing, empty, corrupt or of an unknown layout."""


_WIKI_FILE = re.compile(r"^wiki_\d+(\.bz2)?$")
_DOC_OPEN = re.compile(r'<doc id="([^"]*)"(?: url="[^"]*")? title="([^"]*)"[^>]*>')


def open_binary(path: Path):
    """Open a file, transparently decompressing bz2 (multistream included) or gzip."""
    with open(path, "rb") as fh:
        magic = fh.read(3)
    if magic == b"BZh":
        return bz2.open(path, "rb")
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with open_binary(path) as fh:
            return fh.read(n)
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: cannot be decompressed ({err}); the file is corrupt or truncated, fetch it again") from None


# Archives the readers cannot open, by magic bytes: what they are and what to pass instead.
_ARCHIVES = {b"\xfd7zXZ\x00": "an xz archive; decompress it (xz -d) or pass the .bz2 dump",
             b"PK\x03\x04": "a zip archive; unzip it and pass the file inside",
             b"\x28\xb5\x2f\xfd": "a zstd archive; decompress it (zstd -d) or pass the .bz2 dump",
             b"7z\xbc\xaf\x27\x1c": "a 7z archive; extract it and pass the file inside"}
_INDEX_LINE = re.compile(rb"^\d+:\d+:")


def detect_format(path: Path) -> str:
    """Name the layout of ``path``, recognising each one positively; anything else is refused
    with what it looks like and what to pass instead."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory; check --input")
    if path.is_dir():
        if any(_WIKI_FILE.match(p.name) for p in path.rglob("wiki_*")):
            return "wikiextractor"
        raise InputError(f"{path}: a directory without WikiExtractor files (wiki_00, ...); pass a dump file or a WikiExtractor output folder")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; pass a kowiki dump or a corpus file")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"PAR1"):
        return "parquet"
    for sig, what in _ARCHIVES.items():
        if magic.startswith(sig):
            raise InputError(f"{path}: {what}")
    head = _head(path).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise InputError(f"{path}: the file is empty once decompressed; pass a kowiki dump or a corpus file")
    if _looks_binary(head):
        raise InputError(f"{path}: binary data, not text or a known archive; pass a kowiki dump (.xml/.xml.bz2), "
                         "WikiExtractor output, JSONL, Parquet or UTF-8 text")
    if head.startswith(b"<?xml") or head.startswith(b"<mediawiki"):
        return "mediawiki"
    if head.startswith(b"<doc "):
        return "wikiextractor"
    if head.startswith(b"<"):
        raise InputError(f"{path}: XML-like but not a MediaWiki export (no <mediawiki> root); pass a pages-articles dump")
    if head.startswith(b"["):
        raise InputError(f"{path}: a JSON array, not JSONL; write one object per line with 'title' and 'text' "
                         "(e.g. jq -c '.[]' FILE > FILE.jsonl)")
    if head.startswith(b"{"):
        return "jsonl"
    if _INDEX_LINE.match(head):
        raise InputError(f"{path}: the dump's multistream index (offset:page_id:title lines), not the pages; "
                         "pass the pages-articles-multistream.xml.bz2 file itself")
    return "text"


def _looks_binary(head: bytes) -> bool:
    """NUL bytes, or mostly bytes that are not UTF-8 (a few bad ones are a text file's
    problem, reported with their line by the reader)."""
    text = head.decode("utf-8", errors="replace")
    return b"\x00" in head or text.count("\ufffd") > max(3, len(text) // 10)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_mediawiki(path: Path) -> Iterator[RawPage]:
    """Pages of a MediaWiki XML export, clearing each one after use so memory stays flat."""
    try:
        with open_binary(path) as fh:
            context = ET.iterparse(fh, events=("start", "end"))
            _, root = next(context)
            if _local(root.tag) != "mediawiki":
                raise InputError(f"{path}: root element is <{_local(root.tag)}>, not <mediawiki>; this is not a MediaWiki export")
            for event, elem in context:
                if event == "end" and _local(elem.tag) == "page":
                    yield _page_from_xml(elem)
                    root.clear()
    except EOFError:
        raise InputError(f"{path}: the compressed stream ends early (truncated download?); fetch the file again") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be decompressed ({err}); the file is corrupt, fetch it again") from None
    except ET.ParseError as err:
        raise InputError(f"{path}: malformed or truncated XML ({err}); fetch the dump again or check the file") from None


def _page_from_xml(page) -> RawPage:
    fields = {"ns": "0", "id": "", "title": "", "text": ""}
    redirect = False
    for child in page.iter():
        name = _local(child.tag)
        if name == "redirect":
            redirect = True
        elif name in ("ns", "title") or (name == "id" and not fields["id"]):
            fields[name] = child.text or ""
        elif name == "text":
            fields["text"] = child.text or ""
    try:
        ns = int(fields["ns"])
    except ValueError:
        ns = -1
    return RawPage(fields["id"], fields["title"], fields["text"], "wikitext", ns, redirect)


def _text_lines(path: Path) -> Iterator[str]:
    """Lines decoded one at a time, so a decoding error names its own line."""
    with open_binary(path) as raw:
        lineno = 0
        try:
            for lineno, line in enumerate(raw, 1):
                yield line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: line {lineno} is not valid UTF-8 ({err.reason} at byte {err.start}); "
                             "convert the file to UTF-8") from None
        except EOFError:
            raise InputError(f"{path}: the compressed stream ends early (truncated download?); fetch the file again") from None
        except OSError as err:
            raise InputError(f"{path}: cannot be decompressed ({err}); the file is corrupt, fetch it again") from None


def read_wikiextractor(path: Path) -> Iterator[RawPage]:
    """WikiExtractor output: ``<doc>`` blocks or ``--json`` lines, files in sorted order."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("wiki_*") if _WIKI_FILE.match(p.name))
    for file in files:
        lines = _text_lines(file)
        first = next(lines, None)
        if first is None:
            continue
        if first.lstrip().startswith("{"):
            yield from _json_pages(file, _chain(first, lines), "paragraphs")
            continue
        doc = None
        for line in _chain(first, lines):
            m = _DOC_OPEN.match(line)
            if m:
                doc = [m.group(1), m.group(2), []]
            elif line.startswith("</doc>") and doc:
                body = doc[2][1:] if doc[2] and doc[2][0].strip() == doc[1] else doc[2]
                yield RawPage(doc[0], doc[1], "\n".join(body), "paragraphs")
                doc = None
            elif doc is not None:
                doc[2].append(line)


def _chain(first, rest):
    yield first
    yield from rest


def _json_pages(path: Path, lines, markup: str) -> Iterator[RawPage]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: line {lineno} is not valid JSON ({err.msg}); fix or remove it") from None
        if not isinstance(row, dict) or "text" not in row:
            raise InputError(f"{path}: line {lineno} has no 'text' field; JSONL input needs 'title' and 'text'")
        text, title = row["text"] or "", row.get("title") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise InputError(f"{path}: line {lineno} has a 'text' or 'title' that is not a string "
                             f"({type(text).__name__}, {type(title).__name__}); write them as JSON strings")
        if title and text.startswith(title + "\n"):
            text = text[len(title) + 1:]
        yield RawPage(str(row.get("id", lineno)), title, text, markup)


def read_jsonl(path: Path) -> Iterator[RawPage]:
    yield from _json_pages(path, _text_lines(path), "paragraphs")


def read_parquet(path: Path) -> Iterator[RawPage]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a bad footer
        raise InputError(f"{path}: not a readable Parquet file ({err}); check the file") from None
    names = set(pf.schema_arrow.names)
    if not {"title", "text"} <= names:
        raise InputError(f"{path}: Parquet columns are {sorted(names)}; the extract stage needs 'title' and 'text'")
    for column in ("title", "text"):
        kind = pf.schema_arrow.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{path}: Parquet column '{column}' is {kind}, not string; cast it to string")
    columns = ["title", "text"] + (["id"] if "id" in names else [])
    ordinal = 0
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        rows = batch.to_pydict()
        for i, text in enumerate(rows["text"]):
            ordinal += 1
            pid = str(rows["id"][i]) if "id" in rows else str(ordinal)
            yield RawPage(pid, rows["title"][i] or "", text or "", "paragraphs")


def read_text(path: Path) -> Iterator[RawPage]:
    """One sentence per line, documents separated by blank lines (the BERT input format)."""
    lines, ordinal = [], 0
    for line in _text_lines(path):
        if line.strip():
            lines.append(line)
        elif lines:
            ordinal += 1
            yield RawPage(str(ordinal), "", "\n".join(lines), "sentences")
            lines = []
    if lines:
        yield RawPage(str(ordinal + 1), "", "\n".join(lines), "sentences")


READERS = {
    "mediawiki": read_mediawiki,
    "wikiextractor": read_wikiextractor,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "text": read_text,
}


def read_pages(path: Path, fmt: str = "auto") -> Iterator[RawPage]:
    """Every page of ``path`` in input order (non-articles too: the stage counts them)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    return READERS[fmt](path)
