"""Where chunks and their vectors live. One interface (``Store``), two implementations: the
embedded local store here (SQLite on disk: rows, vectors as float32 blobs, an FTS5 index for
BM25), the default, and Weaviate (``kit.rag.weaviate_store``) for a stack job.

A collection records the embedding model it was built with; mixing models in one collection is
refused. ``replace`` writes a file's new chunks and drops its stale ones; the local store does it
in one transaction, so an interrupted ingest never leaves a file half-replaced."""

from __future__ import annotations

import re
import sqlite3
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
    def prepare(self, model: str, dim: int) -> None: ...
    def ids(self, source: str) -> set[str]: ...
    def sources(self) -> set[str]: ...
    def replace(self, source: str, records: list[Record], stale: set[str]) -> None: ...
    def delete_source(self, source: str) -> int: ...
    def search(self, query: str, vector: list[float], k: int, alpha: float = DEFAULT_ALPHA) -> list[Hit]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def check_collection(name: str) -> str:
    if not COLLECTION.match(name):
        raise KitError(f"--collection {name!r}: start with an upper-case letter, then letters, digits or _ "
                       f"(at most 64; Weaviate's rule for collection names)")
    return name


def fuse(vector_scores: dict[str, float], text_scores: dict[str, float], alpha: float) -> dict[str, float]:
    """Relative score fusion (Weaviate's default for hybrid search): each list scaled to 0..1 by
    its own min and max, then alpha x vector + (1 - alpha) x keyword."""
    def scaled(scores):
        if not scores:
            return {}
        low, high = min(scores.values()), max(scores.values())
        return {k: (v - low) / (high - low) if high > low else 1.0 for k, v in scores.items()}

    v, t = scaled(vector_scores), scaled(text_scores)
    return {k: alpha * v.get(k, 0.0) + (1 - alpha) * t.get(k, 0.0) for k in set(v) | set(t)}


def fts_query(text: str) -> str | None:
    words = re.findall(r"\w+", text.lower())
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words)) or None


SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (name TEXT PRIMARY KEY, model TEXT NOT NULL, dim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
  id TEXT NOT NULL, collection TEXT NOT NULL, source TEXT NOT NULL, chunk INTEGER NOT NULL,
  heading TEXT NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (collection, id));
CREATE INDEX IF NOT EXISTS chunks_source ON chunks (collection, source);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (text, id UNINDEXED, collection UNINDEXED);
"""


class LocalStore:
    """An SQLite file ``DIR/kit-rag.sqlite``: rows, float32 vectors, and an FTS5 (BM25) index.
    Search scans the collection's vectors with NumPy (exact; kept in memory for the process)."""

    FILE = "kit-rag.sqlite"

    def __init__(self, directory: Path, collection: str = DEFAULT_COLLECTION, create: bool = True):
        self.dir = Path(directory).expanduser()
        self.collection = check_collection(collection)
        self.label = f"local:{self.dir}"
        path = self.dir / self.FILE
        if not path.exists() and not create:
            raise KitError(f"--store {self.label}: no kit store there (run `kit rag ingest` first)")
        if self.dir.exists() and not self.dir.is_dir():
            raise KitError(f"--store {self.label}: not a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise KitError(f"--store {self.label}: cannot open the store: {e}") from None
        self._matrix = None

    def model(self) -> str | None:
        row = self.db.execute("SELECT model FROM collections WHERE name = ?", (self.collection,)).fetchone()
        return row[0] if row else None

    def prepare(self, model: str, dim: int) -> None:
        row = self.db.execute("SELECT model, dim FROM collections WHERE name = ?", (self.collection,)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO collections VALUES (?, ?, ?)", (self.collection, model, dim))
        elif tuple(row) != (model, dim):
            raise KitError(f"--collection {self.collection}: built with embedding model {row[0]} ({row[1]} dims), "
                           f"not {model} ({dim}); use another --collection")

    def ids(self, source: str) -> set[str]:
        rows = self.db.execute("SELECT id FROM chunks WHERE collection = ? AND source = ?", (self.collection, source))
        return {r[0] for r in rows}

    def sources(self) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT source FROM chunks WHERE collection = ?", (self.collection,))
        return {r[0] for r in rows}

    def replace(self, source: str, records: list[Record], stale: set[str]) -> None:
        import numpy as np

        with self._transaction():
            for r in records:
                blob = np.asarray(r.vector, dtype=np.float32).tobytes()
                self.db.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (r.id, self.collection, r.source, r.chunk, r.heading, r.text, blob))
                self.db.execute("DELETE FROM chunks_fts WHERE id = ? AND collection = ?", (r.id, self.collection))
                self.db.execute("INSERT INTO chunks_fts VALUES (?, ?, ?)", (r.text, r.id, self.collection))
            self._delete(stale)

    def _delete(self, ids) -> None:
        for i in ids:
            self.db.execute("DELETE FROM chunks WHERE collection = ? AND id = ?", (self.collection, i))
            self.db.execute("DELETE FROM chunks_fts WHERE id = ? AND collection = ?", (i, self.collection))

    def delete_source(self, source: str) -> int:
        ids = self.ids(source)
        with self._transaction():
            self._delete(ids)
        return len(ids)

    def _transaction(self):
        store = self

        class Tx:
            def __enter__(self):
                store.db.execute("BEGIN IMMEDIATE")
                store._matrix = None

            def __exit__(self, kind, *_):
                store.db.execute("ROLLBACK" if kind else "COMMIT")

        return Tx()

    def _vectors(self):
        import numpy as np

        if self._matrix is None:
            rows = self.db.execute("SELECT id, vector FROM chunks WHERE collection = ? ORDER BY source, chunk",
                                   (self.collection,)).fetchall()
            ids = [r[0] for r in rows]
            matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1) \
                if rows else np.zeros((0, 1), dtype=np.float32)
            self._matrix = (ids, matrix)
        return self._matrix

    def search(self, query: str, vector: list[float], k: int, alpha: float = DEFAULT_ALPHA) -> list[Hit]:
        import numpy as np

        ids, matrix = self._vectors()
        if not ids:
            return []
        pool = max(k * 4, 50)
        sims = matrix @ np.asarray(vector, dtype=np.float32)
        top = np.argsort(-sims)[:pool]
        vector_scores = {ids[i]: float(sims[i]) for i in top}
        text_scores = {}
        match = fts_query(query)
        if alpha < 1 and match:
            rows = self.db.execute("SELECT id, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                                   "AND collection = ? ORDER BY rank LIMIT ?", (match, self.collection, pool))
            text_scores = {r[0]: -float(r[1]) for r in rows}
        scores = fuse(vector_scores, text_scores, alpha) if alpha < 1 else vector_scores
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        hits = []
        for chunk_id, score in best:
            source, chunk, text = self.db.execute(
                "SELECT source, chunk, text FROM chunks WHERE collection = ? AND id = ?",
                (self.collection, chunk_id)).fetchone()
            hits.append(Hit(chunk_id, source, chunk, score, text))
        return hits

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM chunks WHERE collection = ?", (self.collection,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()


def default_dir() -> Path:
    from kit.sites.paths import state_dir

    return state_dir() / "rag" / "local"

