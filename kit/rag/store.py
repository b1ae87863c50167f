"""Where chunks and their vectors live. One interface (``Store``), two implementations: the
embedded local store (``kit.rag.lance_store``: LanceDB on disk), the default, and Weaviate
(``kit.rag.weaviate_store``) for a stack job.

A collection records the embedding model it was built with; mixing models in one collection is
refused. ``write`` puts files' new chunks in and then drops their stale ones, in an order that
lets a rerun finish what an interrupted ingest started: no duplicates, nothing missing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kit.errors import KitError

COLLECTION = re.compile(r"^[A-Z][A-Za-z0-9_]{0,63}$")  # Weaviate's class-name rule, used by both stores
DEFAULT_COLLECTION = "Documents"
DEFAULT_ALPHA = 0.7  # weight of the vector score in hybrid search (weaviate-client's default)


@dataclass
class Record:
    id: str
    source: str
    chunk: int
    text: str
    heading: str
    vector: list[float]


@dataclass
class Change:
    """One file's part of a write: its chunks not yet in the store, and its ids no longer wanted."""
    source: str
    records: list[Record]
    stale: set[str]


@dataclass
class Hit:
    id: str
    source: str
    chunk: int
    score: float
    text: str

    def as_json(self) -> dict:
        return {"source": self.source, "chunk": self.chunk, "score": round(float(self.score), 6), "text": self.text}


class Store(Protocol):
    collection: str
    label: str

    def model(self) -> str | None: ...
    def claim_writes(self) -> None: ...
    def prepare(self, model: str, dim: int) -> None: ...
    def ids(self, source: str) -> set[str]: ...
    def sources(self) -> set[str]: ...
    def write(self, changes: list[Change]) -> None: ...
    def delete_source(self, source: str) -> int: ...
    def search(self, query: str, vector: list[float], k: int, alpha: float = DEFAULT_ALPHA) -> list[Hit]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def check_collection(name: str) -> str:
    if not COLLECTION.match(name):
        raise KitError(f"--collection {name!r}: start with an upper-case letter, then letters, digits or _ "
                       f"(at most 64; Weaviate's rule for collection names)")
    return name


def default_dir() -> Path:
    from kit.sites.paths import state_dir

    return state_dir() / "rag" / "local"

