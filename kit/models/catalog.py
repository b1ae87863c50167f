"""The packaged catalog: config.json subsets of popular open models, so planning works offline.

Each entry holds the Hub's own config keys and the published parameter count with its source
(``catalog.json`` beside this module); tests check that kit's count from the config equals it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CATALOG_FILE = Path(__file__).resolve().parent / "catalog.json"


@lru_cache(maxsize=1)
def entries() -> list[dict]:
    return json.loads(CATALOG_FILE.read_text())


@lru_cache(maxsize=1)
def by_id() -> dict[str, dict]:
    return {model_id.lower(): entry for entry in entries() for model_id in entry["ids"]}


def lookup(model_id: str) -> dict | None:
    return by_id().get(model_id.lower())


def all_ids() -> list[str]:
    return [model_id for entry in entries() for model_id in entry["ids"]]
