"""RAG with the local store (LanceDB) on this machine.

    python benchmarks/rag_throughput.py [COPIES] [--scale N[,N...]] [--recall N]

Without options: ingest throughput (chunks/s) and `ask` latency (retrieval only) over the
bundled corpus copied COPIES times (default 40), each copy's text made distinct so the chunks
are real prose, side by side with a plain in-process NumPy baseline over the same chunks and
the same embeddings. Embedding is the same model (all-MiniLM-L6-v2, CPU) for both sides and is
timed once, separately: "store" columns are what kit adds on top of it.

--scale N: the store at N synthetic chunks (random 384-dim unit vectors, about 100 words of
text each drawn from a Zipf vocabulary, 100 chunks a file): write time, then search latency
exact (a flat scan) and with the IVF_PQ index the store builds past VECTOR_INDEX_ROWS.

--recall N: what that index costs in recall on real embeddings: N chunks of the Python
standard library's source (400 characters each, to keep embedding on a CPU short) embedded with
all-MiniLM-L6-v2, the index forced, 200 questions (a chunk's first 100 characters each); the
indexed top 5 against the exact top 5 (a chunk exactly as near as the exact 5th counts: the
library repeats some passages word for word).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["How long can a job run on the gengpu partition?", "Are files in scratch backed up?",
             "How do I reach the model server from my laptop?", "Can I use Docker on the compute nodes?",
             "How many GPUs can one user hold at the same time?"]


def corpus(dest: Path, copies: int) -> None:
    src = ROOT / "examples" / "rag" / "corpus"
    for i in range(copies):
        for f in src.iterdir():
            if f.is_file():
                (dest / f"{f.stem}-{i}{f.suffix}").write_text(f.read_text() + f"\n\nCopy {i} of {f.stem}.\n")


def median_ms(fn, args: list, n: int = 20) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(args[i % len(args)])
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def throughput(copies: int, work: Path) -> None:
    import numpy as np

    from kit.rag.ask import retrieve
    from kit.rag.chunk import chunk_blocks, read_blocks
    from kit.rag.embed import LocalEmbedder
    from kit.rag.ingest import ingest
    from kit.rag.lance_store import LocalStore
    from kit.rag.target import Target

    (work / "corpus").mkdir()
    corpus(work / "corpus", copies)
    embedder = LocalEmbedder()
    embedder.embed(["warm up"])  # model load is not ingest throughput

    files = sorted((work / "corpus").iterdir())
    texts = [c.text for f in files for c in chunk_blocks(read_blocks(f))]
    t0 = time.perf_counter()
    vectors = np.asarray(embedder.embed(texts), dtype="float32")
    embed_s = time.perf_counter() - t0

    def ingest_run():  # as `kit rag ingest`: open, ingest, close (which compacts and indexes)
        target = Target(LocalStore(work / "store"), embedder)
        t = time.perf_counter()
        try:
            return ingest(target, [str(work / "corpus")]), t
        finally:
            target.close()

    summary, t0 = ingest_run()
    kit_s = time.perf_counter() - t0
    again, t0 = ingest_run()  # unchanged: nothing embedded or written
    rerun_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    matrix = np.vstack(vectors)  # the baseline's "store": the embeddings in memory
    base_store_s = time.perf_counter() - t0

    target = Target(LocalStore(work / "store", create=False), embedder)
    retrieve(target, QUESTIONS[0], 5)  # the first search opens the table
    kit_ms = median_ms(lambda q: retrieve(target, q, 5), QUESTIONS)
    base_ms = median_ms(lambda q: np.argsort(-(matrix @ np.asarray(embedder.embed([q])[0], dtype="float32")))[:5],
                        QUESTIONS)
    embed_q_ms = median_ms(lambda q: embedder.embed([q]), QUESTIONS)
    target.close()
    n = len(texts)
    print(f"corpus: {len(files)} files, {n} chunks ({summary.chunks_added} added by kit; a rerun added "
          f"{again.chunks_added} in {rerun_s:.2f} s)")
    print("| step | kit local store | NumPy baseline |")
    print("| --- | ---: | ---: |")
    print(f"| embed {n} chunks (same model, both) | {embed_s:.1f} s | {embed_s:.1f} s |")
    print(f"| ingest incl. chunking, embedding, writing, indexing | {kit_s:.1f} s = {n / kit_s:.0f} chunks/s | "
          f"{embed_s + base_store_s:.1f} s = {n / (embed_s + base_store_s):.0f} chunks/s |")
    print(f"| rerun over the unchanged corpus | {rerun_s:.2f} s, {again.chunks_added} chunks added | "
          f"(no notion of a rerun) |")
    print(f"| ask, retrieval only (median of 20; embedding the question {embed_q_ms:.1f} ms) | "
          f"{kit_ms:.1f} ms (hybrid: vectors + BM25) | {base_ms:.1f} ms (vectors only) |")


def write(store, n: int, dim: int, per_file: int, rng, words) -> float:
    """N synthetic chunks into STORE as ingest writes them (ids of the file, then one write);
    returns the seconds taken, vector and text generation excluded."""
    import numpy as np

    from kit.rag.store import Change, Record

    spent = 0.0
    for f in range(n // per_file):
        vectors = rng.standard_normal((per_file, dim)).astype("float32")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        texts = [" ".join(row) for row in words(per_file)]
        source = f"/synthetic/file{f:06d}.md"
        records = [Record(f"{source}#{i}", source, i, texts[i], "", vectors[i].tolist()) for i in range(per_file)]
        t = time.perf_counter()
        store.ids(source)
        store.write([Change(source, records, set())])
        spent += time.perf_counter() - t
    return spent


def scale(n: int, work: Path, dim: int = 384, per_file: int = 100) -> None:
    import numpy as np

    from kit.rag import lance_store

    rng = np.random.default_rng(0)
    vocabulary = np.array([f"term{i}" for i in range(50_000)])

    def words(rows, length=100):
        return vocabulary[(rng.zipf(1.2, (rows, length)) - 1) % len(vocabulary)]

    threshold = lance_store.VECTOR_INDEX_ROWS
    lance_store.VECTOR_INDEX_ROWS = 10**12  # first the exact scan, then the index
    store = lance_store.LocalStore(work / f"scale-{n}")
    store.prepare("synthetic", dim)
    write_s = write(store, n, dim, per_file, rng, words)
    t0 = time.perf_counter()
    store.close()  # compact, index the text
    close_s = time.perf_counter() - t0
    queries = [(" ".join(w), v / np.linalg.norm(v)) for w, v in zip(words(50, 6), rng.standard_normal((50, dim)))]

    def latency():
        store.search(*queries[0], 5)
        hybrid = median_ms(lambda q: store.search(q[0], q[1].tolist(), 5), queries, 50)
        vector = median_ms(lambda q: store.search(q[0], q[1].tolist(), 5, alpha=1.0), queries, 50)
        return hybrid, vector

    def top5():
        return [{h.id for h in store.search(q, v.tolist(), 5, alpha=1.0)} for q, v in queries]

    exact, exact_top = latency(), top5()
    lance_store.VECTOR_INDEX_ROWS = threshold
    t0 = time.perf_counter()
    store._optimize()  # what the store does past the threshold: build the IVF_PQ index
    index_s = time.perf_counter() - t0
    indexed = latency()
    found = statistics.mean(len(a & b) / 5 for a, b in zip(exact_top, top5()))
    size = sum(p.stat().st_size for p in (work / f"scale-{n}").rglob("*") if p.is_file())
    print(f"{n} synthetic chunks ({dim}-dim, {n // per_file} files of {per_file}): writing {write_s:.0f} s "
          f"({n / write_s:.0f} chunks/s, embedding excluded), closing (compact, text index) {close_s:.1f} s, "
          f"IVF_PQ index {index_s:.0f} s, {size / 2**20:.0f} MiB on disk")
    print("| search, k=5 (median of 50) | hybrid (vectors + BM25) | vectors only |")
    print("| --- | ---: | ---: |")
    print(f"| exact (flat scan) | {exact[0]:.1f} ms | {exact[1]:.1f} ms |")
    print(f"| IVF_PQ, refine x{lance_store.REFINE} | {indexed[0]:.1f} ms | {indexed[1]:.1f} ms |")
    print(f"recall@5 of the indexed vector search against the exact one on these random vectors: {found:.2f}")


def stdlib_chunks(n: int) -> list[str]:
    from kit.rag.chunk import Block, chunk_blocks

    texts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        text = path.read_text(errors="replace")
        blocks = [Block("text", p.strip()) for p in re.split(r"\n\s*\n", text) if p.strip()]
        texts += [c.text for c in chunk_blocks(blocks, size=400, overlap=0) if len(c.text) >= 200]
        if len(texts) >= n:
            return texts[:n]
    return texts


def recall(n: int, work: Path, k: int = 5, questions: int = 200) -> None:
    import numpy as np

    from kit.rag import lance_store
    from kit.rag.embed import LocalEmbedder
    from kit.rag.store import Change, Record

    texts = stdlib_chunks(n)
    embedder = LocalEmbedder()
    t0 = time.perf_counter()
    vectors = np.asarray(embedder.embed(texts), dtype="float32")
    embed_s = time.perf_counter() - t0
    store = lance_store.LocalStore(work / "recall")
    store.prepare(embedder.name, vectors.shape[1])
    for start in range(0, len(texts), 100):
        source = f"/stdlib/{start // 100:05d}"
        store.write([Change(source, [Record(str(i), source, i - start, texts[i], "", vectors[i].tolist())
                                     for i in range(start, min(start + 100, len(texts)))], set())])
    lance_store.VECTOR_INDEX_ROWS = 1  # the index, whatever the size
    store._optimize()
    rng = np.random.default_rng(0)
    picked = rng.choice(len(texts), questions, replace=False)
    asked = [texts[i][:100] for i in picked]
    query_vectors = np.asarray(embedder.embed(asked), dtype="float32")
    found = []
    for q, v in zip(asked, query_vectors):
        similarity = vectors @ v
        kth = np.sort(similarity)[-k]  # a chunk as near as the exact k-th counts (the library repeats passages)
        indexed = [int(h.id) for h in store.search(q, v.tolist(), k, alpha=1.0)]
        found.append(sum(similarity[i] >= kth - 1e-6 for i in indexed) / k)
    print(f"recall@{k} of the IVF_PQ search (refine x{lance_store.REFINE}) against the exact top {k}: "
          f"{statistics.mean(found):.3f} over {questions} questions, {len(texts)} standard-library chunks "
          f"(embedded in {embed_s:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("copies", nargs="?", type=int, default=40)
    parser.add_argument("--scale", metavar="N[,N...]", help="synthetic store sizes to time search at")
    parser.add_argument("--recall", type=int, metavar="N", help="real chunks to measure the index's recall on")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kit-rag-bench-"))
    try:
        if args.scale or args.recall:
            for n in [int(x) for x in args.scale.split(",")] if args.scale else []:
                scale(n, work)
            if args.recall:
                recall(args.recall, work)
        else:
            throughput(args.copies, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
