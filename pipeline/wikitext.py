"""Wikitext -> plain prose paragraphs, keeping only what a reader sees as running text.

Two modes, measured against each other in ``benchmarks/extract.py``:
``parser`` hands the raw wikitext to mwparserfromhell; ``hybrid`` (the default) first cuts
the bulky non-prose constructs (comments, ``<ref>``/``<math>``-like tags, templates and
tables, found with a linear brace scanner) and then lets mwparserfromhell resolve what is
left (links, formatting, headings, HTML). Both end in the same line filter, which drops
headings, list items and leftovers, as the BERT paper keeps text passages only.
"""

from __future__ import annotations

import html
import re

import mwparserfromhell
from mwparserfromhell.nodes import (Argument, Comment, ExternalLink, Heading, HTMLEntity, Tag,
                                    Template, Text, Wikilink)

# Extension and HTML tags whose whole content is not prose.
DROP_TAGS = frozenset("""ref references math chem ce gallery timeline syntaxhighlight source pre
score graph mapframe maplink templatedata imagemap hiero nowiki inputbox categorytree
templatestyles table code var sup sub noinclude includeonly onlyinclude section indicator
charinsert rss""".split())
# File/image and category namespaces, English and Korean.
FILE_NS = ("file", "image", "파일", "그림", "media", "미디어")
CATEGORY_NS = ("category", "분류")
_INTERLANG = re.compile(r"^:?[a-z]{2,3}(-[a-z]{2,8})*$|^simple$|^zh-(yue|min-nan|classical)$")
_LINE_DROP = "\x00"  # marks a line to drop (list items, headings, tables)

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_DROP_TAG_BLOCK = re.compile(
    r"<(%s)\b[^>]*?(?<!/)>.*?(?:</\1\s*>|\Z)|<(%s)\b[^>]*/>" % ("|".join(sorted(DROP_TAGS)), "|".join(sorted(DROP_TAGS))),
    re.S | re.I)
_BRACES = re.compile(r"\{\{|\}\}|^[ \t]*\{\||^[ \t]*\|\}", re.M)
_MAGIC = re.compile(r"__[^\W_]+__")  # __NOTOC__, __목차숨김__
_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*?/?>")
_URL = re.compile(r"(?:https?|ftp)://\S+")
_SPACE = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_EMPTY_PARENS = re.compile(r"\(\s*[,;·]?\s*\)|（\s*）")
_LEFT_PUNCT = re.compile(r"\(\s*[,;]\s*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.])")


def remove_nested(text: str) -> str:
    """Cut templates ``{{...}}`` and tables ``{|...|}``, however deeply nested, in one pass."""
    if "{" not in text:
        return text
    out, depth, start = [], 0, 0
    for m in _BRACES.finditer(text):
        tok = m.group().strip()
        if tok in ("{{", "{|"):
            if depth == 0:
                out.append(text[start:m.start()])
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                start = m.end()
    if depth == 0:
        out.append(text[start:])
    return "".join(out)


def _link_ns(title: str) -> str:
    head, sep, _ = title.partition(":")
    return head.strip().lower() if sep else ""


def _render(nodes, out: list[str]) -> None:
    """Append the visible prose of parsed wikitext nodes to ``out``."""
    for node in nodes:
        if isinstance(node, Text):
            out.append(str(node.value))
        elif isinstance(node, Wikilink):
            title = str(node.title)
            ns = _link_ns(title)
            if ns in FILE_NS or ns in CATEGORY_NS or (ns and _INTERLANG.match(ns) and not title.startswith(":")):
                continue
            if node.text is not None:
                _render(node.text.nodes, out)
            else:
                out.append(title.lstrip(":").split("#")[0] if not title.startswith("#") else title[1:])
        elif isinstance(node, ExternalLink):
            if node.brackets and node.title is not None:
                _render(node.title.nodes, out)
        elif isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag in ("li", "dt", "dd", "table") or str(node.wiki_markup or "") == "{|":
                out.append(_LINE_DROP)
                continue
            if tag in DROP_TAGS:
                continue
            if tag == "br":
                out.append(" ")
            elif tag == "hr":
                out.append("\n")
            elif node.contents is not None:
                _render(node.contents.nodes, out)
        elif isinstance(node, HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, Heading):
            out.append(_LINE_DROP)
        # Template, Argument, Comment and anything else carry no prose.
        elif not isinstance(node, (Template, Argument, Comment)):
            out.append(str(node))


def _keep_line(line: str) -> bool:
    s = line.strip()
    if not s or _LINE_DROP in s:
        return False
    return s[0] not in "*#:;|!{}=<" and not s.startswith(("[[", "]]"))


def _tidy(line: str) -> str:
    line = html.unescape(_HTML_TAG.sub("", line))
    line = _URL.sub("", _MAGIC.sub("", line))
    line = line.replace("'''", "").replace("''", "").replace("[[", "").replace("]]", "")
    line = _EMPTY_PARENS.sub("", _LEFT_PUNCT.sub("(", line))
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACE.sub(" ", line))
    return line.strip()


def clean_wikitext(text: str, mode: str = "hybrid") -> list[str]:
    """The prose paragraphs of an article's wikitext, one string per paragraph."""
    if mode == "hybrid":
        text = _COMMENT.sub("", text)
        text = _DROP_TAG_BLOCK.sub("", text)
        text = remove_nested(text)
    elif mode != "parser":
        raise ValueError(f"unknown wikitext mode {mode!r}")
    out: list[str] = []
    _render(mwparserfromhell.parse(text, skip_style_tags=True).nodes, out)
    paragraphs = []
    for raw_line in "".join(out).split("\n"):
        if _keep_line(raw_line):
            line = _tidy(raw_line)
            if line:
                paragraphs.append(line)
    return paragraphs


REDIRECT = re.compile(r"^\s*#\s*(redirect|넘겨주기)\b", re.I)


def is_redirect_text(text: str) -> bool:
    return bool(REDIRECT.match(text))
