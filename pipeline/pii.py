"""Scrub personal data before it can reach a masked-language model (which recalls it)."""

from __future__ import annotations

import re
from collections import Counter

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 주민등록번호: YYMMDD-GNNNNNN (G: 1-8 encodes century and sex).
_RRN = re.compile(r"(?<!\d)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s?-\s?[1-8]\d{6}(?!\d)")
_CARD = re.compile(r"(?<![\d-])(?:\d{4}[- ]){3}\d{1,4}(?![\d-])|(?<!\d)\d{15,16}(?!\d)")
_PHONE = re.compile(
    r"(?<![\d-])(?:\+82[- .]?\(?0?\)?\d{1,2}|0\d{1,2}|\(0\d{1,2}\))[- .)]?\d{3,4}[- .]\d{4}(?![\d-])"
    r"|(?<![\d-])1[5-9]\d{2}-\d{4}(?![\d-])")
_ACCOUNT = re.compile(r"(?<![\w-])(?<!ISBN )(?<!ISSN )\d{2,6}(?:-\d{2,8}){2,4}(?![\w-])")

PLACEHOLDERS = {"email": "[EMAIL]", "rrn": "[RRN]", "card": "[CARD]", "phone": "[PHONE]", "account": "[ACCOUNT]"}


def _luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _year_range(text: str) -> bool:
    """'1592-1598' is a span of years, not a 1588-style service number."""
    parts = text.split("-")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 4 for p in parts):
        return False
    first, second = int(parts[0]), int(parts[1])
    return 1000 <= first <= second <= 2100


def _account_like(match: re.Match) -> bool:
    return 10 <= sum(c.isdigit() for c in match.group()) <= 14


def scrub(text: str, counts: Counter) -> str:
    """Replace e-mails, RRNs, card, phone and account numbers with placeholders."""
    if "@" in text:
        text, n = _EMAIL.subn(PLACEHOLDERS["email"], text)
        if n:
            counts["email"] += n
    if not any(c.isdigit() for c in text):
        return text
    text, n = _RRN.subn(PLACEHOLDERS["rrn"], text)
    if n:
        counts["rrn"] += n

    def card(m: re.Match) -> str:
        if len(re.sub(r"\D", "", m.group())) >= 13 and (_luhn_ok(m.group()) or not m.group().isdigit()):
            counts["card"] += 1
            return PLACEHOLDERS["card"]
        return m.group()

    text = _CARD.sub(card, text)

    def phone(m: re.Match) -> str:
        if _year_range(m.group()):
            return m.group()
        counts["phone"] += 1
        return PLACEHOLDERS["phone"]

    text = _PHONE.sub(phone, text)

    def account(m: re.Match) -> str:
        if _account_like(m):
            counts["account"] += 1
            return PLACEHOLDERS["account"]
        return m.group()

    return _ACCOUNT.sub(account, text)
