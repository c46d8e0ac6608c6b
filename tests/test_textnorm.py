"""Unicode normalization, Korean sentence splitting and PII scrubbing."""

import unicodedata
from collections import Counter

import pytest

from pipeline.pii import scrub
from pipeline.textnorm import normalize, split_sentences


def test_nfc_composes_and_keeps_compatibility_jamo():
    decomposed = unicodedata.normalize("NFD", "한국어")
    assert normalize(decomposed) == "한국어"
    # ㅋㅋ and ㄱ are compatibility jamo: NFKC would turn them into conjoining jamo.
    assert normalize("ㅋㅋ 재밌다 ㄱ") == "ㅋㅋ 재밌다 ㄱ"


def test_whitespace_and_invisible_controls():
    assert normalize("  이순신은\u00a0\u3000조선의\u200b 무신이다.\t ") == "이순신은 조선의 무신이다."


@pytest.mark.parametrize("text,expected", [
    ("이순신은 무신이다. 그는 한성에서 태어났다.", ["이순신은 무신이다.", "그는 한성에서 태어났다."]),
    ("정말인가? 그렇다! 끝.", ["정말인가?", "그렇다!", "끝."]),
    ("원주율은 3.14 이다. 다음 문장.", ["원주율은 3.14 이다.", "다음 문장."]),
    ("St. Louis와 U.S. 해군을 방문했다. 그 뒤 돌아왔다.", ["St. Louis와 U.S. 해군을 방문했다.", "그 뒤 돌아왔다."]),
    ("1. 개요 항목이다.", ["1. 개요 항목이다."]),
    ("그는 \"좋다.\" 라고 말했다. 끝났다.", ["그는 \"좋다.\" 라고 말했다.", "끝났다."]),
    ("세종(世宗)은 왕이다. 조선(朝鮮). 다음.", ["세종(世宗)은 왕이다.", "조선(朝鮮).", "다음."]),
])
def test_sentence_split(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text,expected,kind", [
    ("연락처 hong.gildong@example.co.kr 입니다", "연락처 [EMAIL] 입니다", "email"),
    ("전화 010-1234-5678 로", "전화 [PHONE] 로", "phone"),
    ("전화 02-123-4567 로", "전화 [PHONE] 로", "phone"),
    ("국제 +82-10-1234-5678 로", "국제 [PHONE] 로", "phone"),
    ("대표번호 1588-1234 로", "대표번호 [PHONE] 로", "phone"),
    ("주민번호 900101-1234567 유출", "주민번호 [RRN] 유출", "rrn"),
    ("카드 4111-1111-1111-1111 결제", "카드 [CARD] 결제", "card"),
    ("카드 4111111111111111 결제", "카드 [CARD] 결제", "card"),
    ("계좌 110-123-456789 로 송금", "계좌 [ACCOUNT] 로 송금", "account"),
])
def test_pii_replaced_and_counted(text, expected, kind):
    counts = Counter()
    assert scrub(text, counts) == expected
    assert counts[kind] == 1 and sum(counts.values()) == 1


@pytest.mark.parametrize("text", [
    "1545년 4월 28일에 태어났다.", "임진왜란(1592-1598년)이 일어났다.", "ISBN 978-89-1234-567-8 책",
    "인구는 9,400,000명이다.", "2020-01-15에 발표되었다.", "면적은 605.2 km²이다.",
])
def test_pii_leaves_encyclopedic_numbers(text):
    counts = Counter()
    assert scrub(text, counts) == text and sum(counts.values()) == 0
