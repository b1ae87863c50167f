"""Keeping a store in step with a corpus. A chunk's id is uuid5(source path, position, content),
so a rerun over unchanged files finds every id present and embeds nothing; a changed file gets
its new chunks and loses its stale ones in one ``Store.write``; ``prune`` removes the chunks of
files that are gone from under the given paths. A file that cannot be read is reported and
skipped: its chunks (if any) stay. Changed files are embedded and written in batches of about
``--batch-size`` chunks (one model call and two commits per batch, not per file). Interrupting
a run loses nothing: a rerun embeds only the ids that are missing and drops what is stale."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import KitError
from kit.rag.chunk import DEFAULT_OVERLAP, DEFAULT_SIZE, SUFFIXES, chunk_file, kind_of
from kit.rag.store import Change, Record

BATCH_CHUNKS = 256  # per embedding call and per write: big enough to fill a batch, small enough to lose little

NAMESPACE = uuid.UUID("6f1c5d2e-4b1a-5c8e-9d7f-0a3b2c1d4e5f")  # kit's: ids are the same on every machine


def chunk_id(source: str, position: int, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return str(uuid.uuid5(NAMESPACE, f"{source}\n{position}\n{digest}"))


@dataclass
class Summary:
    files: int = 0
    new_files: int = 0
    changed_files: int = 0
    unchanged_files: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    pruned_files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    total_chunks: int = 0

    def as_json(self) -> dict:
        return {"files": self.files, "new_files": self.new_files, "changed_files": self.changed_files,
                "unchanged_files": self.unchanged_files, "chunks_added": self.chunks_added,
                "chunks_removed": self.chunks_removed, "pruned_files": self.pruned_files,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "failed": [{"path": p, "reason": r} for p, r in self.failed], "total_chunks": self.total_chunks}


def collect(paths: list[str]) -> tuple[list[Path], list[Path], list[tuple[str, str]]]:
    """The documents under PATHs (files given by name are taken whatever their suffix is not),
    the roots, and what was passed over. A missing path is an error before anything is done."""
    roots, files, skipped = [], [], []
    for text in paths:
        path = Path(text).expanduser()
        if not path.exists():
            raise KitError(f"PATH {text}: no such file or directory")
        path = path.resolve()
        roots.append(path)
        if path.is_file():
            if kind_of(path):
                files.append(path)
            else:
                skipped.append((str(path), f"unsupported type (supported: {', '.join(sorted(SUFFIXES))})"))
            continue
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                file = Path(folder) / name
                if name.startswith("."):
                    continue
                if kind_of(file):
                    files.append(file)
                else:
                    skipped.append((str(file), "unsupported type"))
    files = sorted(dict.fromkeys(files))
    if not files:
        raise KitError(f"PATH {' '.join(paths)}: no documents there (supported: {', '.join(sorted(SUFFIXES))})")
    return files, roots, skipped


def _under(source: str, roots: list[Path]) -> bool:
    return any(source == str(r) or source.startswith(str(r).rstrip("/") + "/") for r in roots)


def ingest_into(paths: list[str], *, stack: str | None, store: str | None, collection: str | None,
                site: str | None = None, embed_model: str | None = None, size: int = DEFAULT_SIZE,
                overlap: int = DEFAULT_OVERLAP, prune: bool = False, batch: int = BATCH_CHUNKS,
                progress=None) -> tuple[Summary, str]:
    """`kit rag ingest`: every argument checked before a store is opened or created, then
    ``ingest``. ``progress(total)`` is a context manager yielding the per-file callback.
    Returns the summary and the store's label."""
    from contextlib import nullcontext

    from kit.rag.target import open_target

    check_sizes(size, overlap, batch)
    files = collect(paths)[0]
    target = open_target(stack=stack, store=store, collection=collection, site=site, embed_model=embed_model)
    try:
        with (progress(len(files)) if progress else nullcontext()) as advance:
            summary = ingest(target, paths, size=size, overlap=overlap, prune=prune, batch=batch, progress=advance)
        return summary, f"{target.store.label} [{target.store.collection}]"
    finally:
        target.close()


def check_sizes(size: int, overlap: int, batch: int = BATCH_CHUNKS) -> None:
    from kit.rag.chunk import chunk_blocks

    chunk_blocks([], size, overlap)
    if batch < 1:
        raise KitError(f"--batch-size {batch}: at least 1")


def ingest(target, paths: list[str], *, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP,
           prune: bool = False, batch: int = BATCH_CHUNKS, progress=None) -> Summary:
    """``progress(advance_files, description)``: called once per file (for a progress bar)."""
    check_sizes(size, overlap, batch)
    files, roots, skipped = collect(paths)
    store, embedder = target.store, target.embedder
    store.claim_writes()
    built = store.model()
    if built is not None and built != embedder.name:
        raise KitError(f"--collection {store.collection}: built with embedding model {built}, not {embedder.name}; "
                       f"use another --collection")
    summary = Summary(files=len(files), skipped=skipped)
    pending = Batch(store, embedder, summary, progress, batch)
    for path in files:
        source = str(path)
        if progress:
            progress(0, path.name)
        try:
            chunks = chunk_file(path, size, overlap)
        except KitError as e:
            summary.failed.append((source, str(e)))
            if progress:
                progress(1, path.name)
            continue
        ids = [chunk_id(source, c.position, c.text) for c in chunks]
        existing = store.ids(source)
        if set(ids) != existing:
            pending.add(source, [(i, c) for i, c in zip(ids, chunks) if i not in existing], existing - set(ids),
                        bool(existing))
            continue
        if chunks:
            summary.unchanged_files += 1
        else:
            summary.skipped.append((source, "no text"))
        if progress:
            progress(1, path.name)
    pending.flush()
    if prune:
        present = {str(p) for p in files}
        for source in sorted(store.sources()):
            if _under(source, roots) and source not in present and not Path(source).exists():
                summary.chunks_removed += store.delete_source(source)
                summary.pruned_files += 1
    summary.total_chunks = store.count()
    return summary


class Batch:
    """Changed files waiting to be embedded and written together; counted in the summary (and
    the progress bar) once written."""

    def __init__(self, store, embedder, summary: Summary, progress, size: int):
        self.store, self.embedder, self.summary, self.progress, self.size = store, embedder, summary, progress, size
        self.files: list[tuple[str, list, set[str], bool]] = []  # source, its (id, chunk)s to add, stale ids, existed
        self.chunks = 0
        self.prepared = False

    def add(self, source: str, fresh: list, stale: set[str], existed: bool) -> None:
        self.files.append((source, fresh, stale, existed))
        self.chunks += len(fresh)
        if self.chunks >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.files:
            return
        vectors = self.embedder.embed([c.text for _, fresh, _, _ in self.files for _, c in fresh])
        if vectors and not self.prepared:
            self.store.prepare(self.embedder.name, len(vectors[0]))
            self.prepared = True
        each = iter(vectors)
        self.store.write([Change(source, [Record(i, source, c.position, c.text, c.heading, next(each))
                                          for i, c in fresh], stale) for source, fresh, stale, _ in self.files])
        for source, fresh, stale, existed in self.files:
            self.summary.chunks_added += len(fresh)
            self.summary.chunks_removed += len(stale)
            if existed:
                self.summary.changed_files += 1
            else:
                self.summary.new_files += 1
            if self.progress:
                self.progress(1, Path(source).name)
        self.files, self.chunks = [], 0
