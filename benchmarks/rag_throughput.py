"""RAG with the local store on this machine: ingest throughput (chunks/s) and `ask` latency
(retrieval only), side by side with a plain in-process NumPy baseline over the same chunks and
the same embeddings.

    python benchmarks/rag_throughput.py [COPIES]      (default 40 copies of examples/rag/corpus)

The corpus is the bundled one, copied COPIES times with each copy's text made distinct, so the
chunks are real prose. Embedding is the same model (all-MiniLM-L6-v2, CPU) for both sides and
is timed once, separately: "store" columns are what kit adds on top of it.
"""

from __future__ import annotations

import shutil
import statistics
import sys
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


def main() -> None:
    import numpy as np

    from kit.rag.ask import retrieve
    from kit.rag.chunk import chunk_blocks, read_blocks
    from kit.rag.embed import LocalEmbedder
    from kit.rag.ingest import ingest
    from kit.rag.store import LocalStore
    from kit.rag.target import Target

    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    work = Path(tempfile.mkdtemp(prefix="kit-rag-bench-"))
    try:
        (work / "corpus").mkdir()
        corpus(work / "corpus", copies)
        embedder = LocalEmbedder()
        embedder.embed(["warm up"])  # model load is not ingest throughput

        files = sorted((work / "corpus").iterdir())
        texts = [c.text for f in files for c in chunk_blocks(read_blocks(f))]
        t0 = time.perf_counter()
        vectors = np.asarray(embedder.embed(texts), dtype="float32")
        embed_s = time.perf_counter() - t0

        target = Target(LocalStore(work / "store"), embedder)
        t0 = time.perf_counter()
        summary = ingest(target, [str(work / "corpus")])
        kit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = ingest(target, [str(work / "corpus")])  # unchanged: nothing embedded or written
        rerun_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        matrix = np.vstack(vectors)  # the baseline's "store": the embeddings in memory
        base_store_s = time.perf_counter() - t0

        def timed(fn, n=20):
            times = []
            for i in range(n):
                t = time.perf_counter()
                fn(QUESTIONS[i % len(QUESTIONS)])
                times.append(time.perf_counter() - t)
            return statistics.median(times) * 1000

        retrieve(target, QUESTIONS[0], 5)  # the store's first search loads its vectors
        kit_ms = timed(lambda q: retrieve(target, q, 5))
        base_ms = timed(lambda q: np.argsort(-(matrix @ np.asarray(embedder.embed([q])[0], dtype="float32")))[:5])
        embed_q_ms = timed(lambda q: embedder.embed([q]))
        target.close()
        n = len(texts)
        print(f"corpus: {len(files)} files, {n} chunks ({summary.chunks_added} added by kit; a rerun added "
              f"{again.chunks_added} in {rerun_s:.2f} s)")
        print("| step | kit local store | NumPy baseline |")
        print("| --- | ---: | ---: |")
        print(f"| embed {n} chunks (same model, both) | {embed_s:.1f} s | {embed_s:.1f} s |")
        print(f"| ingest incl. chunking, embedding, writing | {kit_s:.1f} s = {n / kit_s:.0f} chunks/s | "
              f"{embed_s + base_store_s:.1f} s = {n / (embed_s + base_store_s):.0f} chunks/s |")
        print(f"| ask, retrieval only (median of 20; embedding the question {embed_q_ms:.1f} ms) | "
              f"{kit_ms:.1f} ms (hybrid: vectors + BM25) | {base_ms:.1f} ms (vectors only) |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
