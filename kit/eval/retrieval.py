"""Retrieval quality for RAG: recall@k.

recall@k of one query is the share of its relevant ids found among the first k ids retrieved
(an id retrieved twice counts once); the score is the mean over the queries that have at least
one relevant id (a query with none says nothing about retrieval and is left out; when no query
has one the score is 0.0). A query with relevant ids but no ranking scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def query_recall(ranked: Iterable, relevant: Iterable, k: int) -> float | None:
    relevant = set(relevant)
    if not relevant:
        return None
    top = set(list(ranked)[:k])
    return len(top & relevant) / len(relevant)


def recall_at_k(ranked_ids_per_query: Sequence | Mapping, relevant_ids_per_query: Sequence | Mapping, k: int) -> float:
    """Mean recall@k. Either two sequences aligned by position (query i's ranking and its relevant
    ids), or two mappings keyed by query id (queries the ranking lacks score 0)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if isinstance(relevant_ids_per_query, Mapping):
        if not isinstance(ranked_ids_per_query, Mapping):
            raise TypeError("give both as mappings keyed by query id, or both as sequences")
        pairs = [(ranked_ids_per_query.get(q, ()), rel) for q, rel in relevant_ids_per_query.items()]
    else:
        if isinstance(ranked_ids_per_query, Mapping) or len(ranked_ids_per_query) != len(relevant_ids_per_query):
            raise ValueError("ranked and relevant ids must be sequences of the same length (one entry per query)")
        pairs = list(zip(ranked_ids_per_query, relevant_ids_per_query))
    scores = [s for s in (query_recall(ranked, rel, k) for ranked, rel in pairs) if s is not None]
    return sum(scores) / len(scores) if scores else 0.0
