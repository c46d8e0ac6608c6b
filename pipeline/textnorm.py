"""Unicode normalization and Korean sentence splitting for encyclopedic prose.

NFC only: NFKC rewrites compatibility jamo (ㄱ, U+3131) into conjoining jamo (U+1100) and
NFD splits every syllable into jamo, both of which break Hangul for a WordPiece vocabulary.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
# A sentence ends at . ? ! … 。 (plus closing quotes/brackets) followed by white space.
_BOUNDARY = re.compile(r"([.?!…。]+)([\"'”’)\]」』]*)\s+")


def normalize(text: str) -> str:
    """NFC, invisible controls removed, runs of spaces folded, ends trimmed."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    return _SPACES.sub(" ", text).strip()


# A quotative particle right after a closing quote continues the sentence: "좋다." 라고 말했다.
_QUOTATIVE = ("라고", "라는", "라며", "하고", "하며", "이라", "고 ", "며 ")


def _ends_sentence(text: str, punct_start: int, punct: str, next_start: int) -> bool:
    if punct_start == 0 or text.startswith(_QUOTATIVE, next_start):
        return False
    if "?" in punct or "!" in punct or "。" in punct:
        return True
    prev = text[punct_start - 1]
    # Hangul syllables, CJK and closing brackets end sentences; digits ("1.") and Latin
    # letters ("Dr.", "U.S.") usually do not.
    return ("\uac00" <= prev <= "\ud7a3") or ("\u4e00" <= prev <= "\u9fff") or prev in ")]\"'”’」』"


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph of Korean prose into sentences."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(paragraph):
        if _ends_sentence(paragraph, m.start(1), m.group(1), m.end()):
            sentence = paragraph[start:m.end(2)].strip()
            if sentence:
                out.append(sentence)
            start = m.end()
    tail = paragraph[start:].strip()
    if tail:
        out.append(tail)
    return out


def hangul_ratio(text: str) -> float:
    """Share of Hangul syllables among the letters of ``text``."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum("\uac00" <= c <= "\ud7a3" for c in letters) / len(letters)
