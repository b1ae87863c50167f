"""When two extracted values are equal: both normalised to text, then compared exactly.

Text: Unicode NFKC (full-width letters, ligatures and non-breaking spaces become their plain
forms), case-folded, whitespace runs collapsed to one space, and punctuation (Unicode category
P*: quotes, brackets, dots, commas, dashes) stripped from both ends, together with the spaces
around it. Symbols (``$``, ``%``, ``°``) and inner punctuation stay: "U.S." -> "u.s".

Other JSON values: ``true``/``false`` become the text "true"/"false"; numbers their shortest
decimal text with integral floats written as integers (3, 3.0 and "3" are equal; 3.5 and
"3.50" are not); ``null``, and any text that is empty after normalisation, is no value at all.
A list is a multiset of such values (order ignored, repeats counted); lists inside lists and
objects are not values.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter

ALLOWED = "a string, number, boolean, null or a list of them"


class BadValue(ValueError):
    """A field value that is not a scalar or a flat list of scalars."""


def is_edge(ch: str) -> bool:
    """What is stripped from the ends: whitespace and Unicode punctuation."""
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    start, end = 0, len(text)
    while start < end and is_edge(text[start]):
        start += 1
    while end > start and is_edge(text[end - 1]):
        end -= 1
    return " ".join(text[start:end].split())


def normalize_scalar(value) -> str:
    """One JSON scalar as comparable text; "" means no value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return normalize_text(repr(value))
    if isinstance(value, str):
        return normalize_text(value)
    raise BadValue(f"expected {ALLOWED}")


def field_values(value) -> Counter:
    """A field's value (scalar or list) as a multiset of normalised texts, empty ones dropped."""
    items = value if isinstance(value, list) else [value]
    out: Counter = Counter()
    for item in items:
        if isinstance(item, (list, dict)):
            raise BadValue(f"expected {ALLOWED}, got {'a list inside a list' if isinstance(item, list) else 'an object'}")
        text = normalize_scalar(item)
        if text:
            out[text] += 1
    return out
