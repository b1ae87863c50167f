"""The local store (the default): an embedded LanceDB database in the store directory, one table
per collection (``DIR/<Collection>.lance``). Why LanceDB and not Qdrant's local mode: LanceDB is
an on-disk columnar format with a native BM25 full-text index next to its vector search and
serves hundreds of thousands of rows from disk, where Qdrant's local mode keeps every point in
memory and qdrant-client warns against it past 20,000 points.

The table's schema metadata records the embedding model and the vector size it was built
with; mixing models in one collection is refused. Search is exact (a flat scan) until the table
holds ``VECTOR_INDEX_ROWS`` chunks, then an IVF_PQ index answers with an exact re-ranking of
``REFINE`` times more candidates. Hybrid search is Weaviate's relative score fusion of the
vector leg and the full-text leg, computed here (``fuse``): LanceDB's own linear-combination
reranker scales each list the same way, but gives a list of one (a rare term found in a single
chunk) a keyword score of 0, which would drop exactly the matches hybrid search is for.

LanceDB commits each write as a new table version and adds a small data file; the store
compacts them and folds new rows into the indexes (``Table.optimize``) every
``OPTIMIZE_EVERY`` writes and when it is closed after writing. Rows not yet in an index are
still found (LanceDB scans them flat), only more slowly."""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from kit.errors import KitError
from kit.rag.store import DEFAULT_ALPHA, DEFAULT_COLLECTION, Change, Hit, Record, check_collection

# Exact search of 50,000 384-dim vectors takes about 30 ms on two cores (benchmarks/RESULTS.md),
# a few times the cost of embedding the question, and grows linearly; past it, an index.
VECTOR_INDEX_ROWS = 50_000
REFINE = 10  # an indexed search re-ranks 10 x the candidates by their exact distance
OPTIMIZE_EVERY = 50  # LanceDB advises optimizing after 20 or more writes; each one costs time
# Compaction rewrites the table's small files (under a million rows: all of it, here) into new
# ones, and an older version keeps the files it read: with an hour of versions kept, 200,000
# chunks written as 2,000 files took 8.5 GiB on disk, against 358 MiB keeping only the latest.
# So only the latest stays; a search in another process that overlaps a compaction can fail
# (one line: rerun it), and a store has one writer at a time.
KEEP_VERSIONS = timedelta(0)
FTS_INDEX, VECTOR_INDEX = "text_idx", "vector_idx"  # LanceDB's names for indexes on text, vector
DELETE_BATCH = 1000
WRITER_LOCK = ".kit-writer.lock"
OLD_STORE_FILE = "kit-rag.sqlite"  # kit's own SQLite store, before LanceDB


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


def quoted(text: str) -> str:
    """A string literal for LanceDB's SQL filters."""
    return "'" + text.replace("'", "''") + "'"


class LocalStore:
    def __init__(self, directory: Path, collection: str = DEFAULT_COLLECTION, create: bool = True):
        self.dir = Path(directory).expanduser()
        self.collection = check_collection(collection)
        self.label = f"local:{self.dir}"
        if not self.dir.exists() and not create:
            raise KitError(f"--store {self.label}: no kit store there (run `kit rag ingest` first)")
        if self.dir.exists() and not self.dir.is_dir():
            raise KitError(f"--store {self.label}: not a directory")
        if (self.dir / OLD_STORE_FILE).exists():
            raise KitError(f"--store {self.label}: holds a store of an older kit ({OLD_STORE_FILE}), which this "
                           f"one cannot read; move {OLD_STORE_FILE} away and ingest the documents again")
        with self._errors("cannot open the store"):
            import lancedb

            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = lancedb.connect(str(self.dir))
        self._table = None
        self._ids = None  # source -> ids, read once (``_by_source``)
        self._writes = 0  # since the last optimize
        self._lock = None  # the lock file's descriptor while this store is the writer (``claim_writes``)
        self._writer = False  # ``claim_writes`` was called: close brings the indexes up to date

    @contextmanager
    def _errors(self, doing: str):
        """LanceDB's errors (I/O, a damaged table) as one line naming the store."""
        try:
            yield
        except (OSError, RuntimeError, ValueError) as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise KitError(f"--store {self.label}: {doing}: {detail}") from None

    def _open(self):
        """The collection's table, or None if nothing was ever written to it."""
        if self._table is None:
            with self._errors("cannot open the collection"):
                try:
                    self._table = self.db.open_table(self.collection)
                except ValueError:  # LanceDB's "Table ... was not found"
                    return None
        return self._table

    def _built(self, table) -> tuple[str, int]:
        meta = table.schema.metadata or {}
        return meta.get(b"kit.model", b"").decode(), int(meta.get(b"kit.dim", b"0"))

    def model(self) -> str | None:
        table = self._open()
        return None if table is None else self._built(table)[0]

    def claim_writes(self) -> None:
        """One writer at a time: this store caches each source's ids, and a compaction drops the
        versions another writer may be reading. The lock (``flock``) is the kernel's, so it is
        released when the process ends, however it ends. The file is opened for writing where it
        can be (NFS grants an exclusive lock only on such a file), else read-only (a lock file
        another user created); a filesystem without locks gets a warning, not a refusal."""
        import errno
        import fcntl
        import sys

        self._writer = True
        path = self.dir / WRITER_LOCK
        with self._errors("cannot lock it for writing"):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise KitError(f"--store {self.label}: another `kit rag ingest` is writing to it; "
                               "run this one when it has finished") from None
            print(f"kit: warning: --store {self.label}: cannot lock it ({e.strerror}); make sure no other "
                  "`kit rag ingest` writes to it meanwhile", file=sys.stderr)
            return
        self._lock = fd

    def prepare(self, model: str, dim: int) -> None:
        import pyarrow as pa
        from lancedb.index import FTS

        with self._errors("cannot create the collection"):
            table = self._open()
            if table is None:
                schema = pa.schema([pa.field("id", pa.string(), False), pa.field("source", pa.string(), False),
                                    pa.field("chunk", pa.int32(), False), pa.field("heading", pa.string(), False),
                                    pa.field("text", pa.string(), False),
                                    pa.field("vector", pa.list_(pa.float32(), dim), False)],
                                   metadata={"kit.model": model, "kit.dim": str(dim)})
                try:
                    table = self._table = self.db.create_table(self.collection, schema=schema)
                except ValueError:  # another ingest created it first
                    table = self._open()
            built = self._built(table)
            if built != (model, dim):
                raise KitError(f"--collection {self.collection}: built with embedding model {built[0]} "
                               f"({built[1]} dims), not {model} ({dim}); use another --collection")
            if FTS_INDEX not in self._indexes():  # also a run killed between creating the table and this
                table.create_index("text", config=FTS())

    def _indexes(self) -> set[str]:
        return {i.name for i in self._table.list_indices()}

    def _by_source(self) -> dict[str, set[str]]:
        """Every source's ids, read in one scan and then kept in step with this store's writes
        (one writer at a time): ingest asks for them file by file."""
        if self._ids is None:
            known = {}
            if self._open() is not None:
                with self._errors("cannot read"):
                    rows = self._table.search().select(["id", "source"]).limit(None).to_arrow()
                for i, source in zip(rows["id"].to_pylist(), rows["source"].to_pylist()):
                    known.setdefault(source, set()).add(i)
            self._ids = known
        return self._ids

    def ids(self, source: str) -> set[str]:
        return set(self._by_source().get(source, ()))

    def sources(self) -> set[str]:
        return {source for source, ids in self._by_source().items() if ids}

    def write(self, changes: list[Change]) -> None:
        """Two commits, each atomic and idempotent: the files' new chunks are upserted by id
        (merge_insert: a retry never duplicates a row), then their stale ids are deleted. Killed
        before the first, nothing changed; between the two, the files hold their old and new
        chunks, and the rerun finds every new id present and the stale ones still there, so it
        embeds nothing and deletes them. Either way a rerun ends with each file's chunks, once.
        (One merge_insert that also deletes the stale rows would be a single commit, but LanceDB
        joins it against the whole table: 300 ms a commit at 200,000 chunks against 30.)"""
        records = [r for c in changes for r in c.records]
        stale = {c.source: c.stale for c in changes if c.stale}
        if not records and not stale:
            return
        known = self._by_source()
        with self._errors(f"cannot write the chunks of {changes[0].source}"
                          + (f" and {len(changes) - 1} more files" if len(changes) > 1 else "")):
            if records:
                self._open().merge_insert("id").when_matched_update_all().when_not_matched_insert_all() \
                    .execute(self._arrow(records))
                for r in records:
                    known.setdefault(r.source, set()).add(r.id)
                self._wrote()
            self._delete(stale)

    def _arrow(self, records: list[Record]):
        import numpy as np
        import pyarrow as pa

        dim = self._built(self._table)[1]
        vectors = np.asarray([r.vector for r in records], dtype=np.float32).reshape(len(records), dim)
        return pa.table({"id": [r.id for r in records], "source": [r.source for r in records],
                         "chunk": pa.array([r.chunk for r in records], pa.int32()),
                         "heading": [r.heading for r in records], "text": [r.text for r in records],
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)},
                        schema=self._table.schema)

    def _delete(self, stale: dict[str, set[str]]) -> None:
        pairs = sorted((i, source) for source, ids in stale.items() for i in ids)
        for n in range(0, len(pairs), DELETE_BATCH):
            batch = pairs[n:n + DELETE_BATCH]
            self._table.delete(f"id IN ({', '.join(quoted(i) for i, _ in batch)})")
            for i, source in batch:
                self._ids.get(source, set()).discard(i)
            self._wrote()

    def delete_source(self, source: str) -> int:
        ids = self.ids(source)
        with self._errors(f"cannot delete the chunks of {source}"):
            self._delete({source: ids})
        return len(ids)

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes >= OPTIMIZE_EVERY:
            self._optimize()

    def _optimize(self) -> None:
        """Compact the small data files, add new rows to the indexes, drop old versions; build
        the vector index once the table is big enough for it to pay."""
        from lancedb.index import FTS, IvfPq

        table, self._writes = self._table, 0
        indexes = self._indexes()
        if FTS_INDEX not in indexes:
            table.create_index("text", config=FTS())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table.optimize(cleanup_older_than=KEEP_VERSIONS)
        if VECTOR_INDEX not in indexes and table.count_rows() >= VECTOR_INDEX_ROWS:
            table.create_index("vector", config=IvfPq(distance_type="cosine"))

    def _indexes_behind(self) -> bool:
        """Rows that an index does not cover yet, or no vector index at its size: what a writer
        killed before its closing optimize leaves, and a rerun with nothing to write must mend."""
        table = self._open()
        if table is None:
            return False
        indexes = self._indexes()
        if FTS_INDEX not in indexes or table.index_stats(FTS_INDEX).num_unindexed_rows:
            return True
        if VECTOR_INDEX in indexes:
            return bool(table.index_stats(VECTOR_INDEX).num_unindexed_rows)
        return table.count_rows() >= VECTOR_INDEX_ROWS

    def search(self, query: str, vector: list[float], k: int, alpha: float = DEFAULT_ALPHA) -> list[Hit]:
        import numpy as np
        from lancedb.query import MatchQuery

        table = self._open()
        if table is None:
            return []
        pool = max(k * 4, 50)
        columns = ["id", "source", "chunk", "text"]
        with self._errors("cannot search"):
            near = table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector") \
                .distance_type("cosine").refine_factor(REFINE).limit(pool).select([*columns, "_distance"]).to_arrow()
            found = table.search(MatchQuery(query, "text"), query_type="fts").limit(pool) \
                .select([*columns, "_score"]).to_arrow() if alpha < 1 and re.search(r"\w", query) else None
        rows = {r["id"]: r for r in near.to_pylist()}
        vector_scores = {i: 1.0 - r["_distance"] for i, r in rows.items()}
        scores = vector_scores
        if found is not None:
            rows.update((r["id"], r) for r in found.to_pylist())
            scores = fuse(vector_scores, {r["id"]: r["_score"] for r in found.to_pylist()}, alpha)
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [Hit(i, rows[i]["source"], rows[i]["chunk"], score, rows[i]["text"]) for i, score in best]

    def count(self) -> int:
        table = self._open()
        return 0 if table is None else table.count_rows()

    def close(self) -> None:
        try:
            with self._errors("cannot optimize"):
                if self._writes or (self._writer and self._indexes_behind()):
                    self._optimize()
        finally:
            if self._lock is not None:
                os.close(self._lock)  # releases the flock
                self._lock = None
