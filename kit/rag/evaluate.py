"""Retrieval evaluation: a JSONL of ``{"question": ..., "sources": [PATH, ...]}``, each question's
top-k chunks, and recall@k (the share of its relevant files among the top k's files) and the
reciprocal rank of the first relevant chunk, per question and overall (mean)."""

from __future__ import annotations

import json
from pathlib import Path

from kit.errors import KitError


def load_questions(path: str) -> list[dict]:
    file = Path(path).expanduser()
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise KitError(f"--questions {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KitError(f"--questions {path}: not UTF-8 text") from None
    questions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise KitError(f"--questions {path}, line {number}: not JSON ({e.msg})") from None
        if (not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip()
                or not isinstance(item.get("sources"), list) or not item["sources"]
                or not all(isinstance(s, str) and s for s in item["sources"])):
            raise KitError(f"--questions {path}, line {number}: expected "
                           '{"question": TEXT, "sources": [PATH, ...]} with at least one source')
        questions.append({"question": item["question"], "sources": item["sources"],
                          "base": str(file.resolve().parent)})
    if not questions:
        raise KitError(f"--questions {path}: no questions in it")
    return questions


def matches(source: str, wanted: str, base: str) -> bool:
    """A stored source (an absolute path) is the wanted PATH: equal, equal once resolved against
    the question file's directory, or ending with it (whole path components)."""
    if source == wanted or source == str((Path(base) / wanted).resolve()):
        return True
    return source.endswith("/" + wanted.lstrip("./"))


def recall_at_k(retrieved: list[str], relevant: list[str], base: str = ".") -> float:
    """kit eval's recall@k (kit.eval.retrieval) over the top k retrieved, each stored source named
    by the wanted PATH it matches."""
    from kit.eval.retrieval import query_recall

    named = [next((want for want in relevant if matches(source, want, base)), source) for source in retrieved]
    return query_recall(named, relevant, len(named)) or 0.0


def reciprocal_rank(retrieved: list[str], relevant: list[str], base: str = ".") -> float:
    for rank, source in enumerate(retrieved, 1):
        if any(matches(source, want, base) for want in relevant):
            return 1.0 / rank
    return 0.0


def evaluate(target, questions: list[dict], k: int = 5) -> dict:
    from kit.rag.ask import retrieve

    rows = []
    for q in questions:
        hits = retrieve(target, q["question"], k)
        retrieved = [h.source for h in hits]
        rows.append({"question": q["question"], "sources": q["sources"], "retrieved": retrieved,
                     "recall": recall_at_k(retrieved, q["sources"], q["base"]),
                     "reciprocal_rank": reciprocal_rank(retrieved, q["sources"], q["base"])})
    return {"k": k, "questions": len(rows),
            "recall_at_k": sum(r["recall"] for r in rows) / len(rows),
            "mrr": sum(r["reciprocal_rank"] for r in rows) / len(rows),
            "per_question": rows}
