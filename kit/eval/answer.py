"""A model's answer as extracted fields: the first JSON object in the text.

Tried in order: the body of each fenced block (```json ... ``` or plain ```), the whole answer,
then every ``{`` in the answer until one starts a complete JSON object (text before or after it,
like "Here is the JSON:", is ignored). An answer with no JSON object is unparsable: an empty
prediction, kept with its raw text and the reason.

Values the scorer cannot compare (objects, lists inside lists) are kept as their compact JSON
text. With ``names`` given, keys the prompt did not ask for are dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


@dataclass
class Parsed:
    fields: dict
    error: str | None = None  # why the answer is unparsable; None when it parsed


def first_object(text: str) -> dict | None:
    decoder = json.JSONDecoder()
    candidates = [m.group(1) for m in FENCE.finditer(text)] + [text]
    for candidate in candidates:
        candidate = candidate.strip()
        try:
            value = json.loads(candidate)
        except ValueError:
            pass
        else:
            if isinstance(value, dict):
                return value
        for start in (i for i, ch in enumerate(candidate) if ch == "{"):
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def comparable(value):
    """A scalar or a flat list of scalars as is; anything deeper as its JSON text."""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, list):
        return [json.dumps(v, ensure_ascii=False, sort_keys=True) if isinstance(v, (dict, list)) else v for v in value]
    return value


def parse_answer(text: str, names: list[str] | None = None) -> Parsed:
    obj = first_object(text or "")
    if obj is None:
        return Parsed({}, "no JSON object in the answer" if (text or "").strip() else "empty answer")
    fields = {k: comparable(v) for k, v in obj.items() if not names or k in names}
    return Parsed(fields)
