"""The store interface (kit.rag.store.Store), one set of tests for every store kit writes to:
the embedded local store always, and Weaviate through weaviate-client v4 when
KIT_TEST_WEAVIATE_URL names a server (http://HOST:PORT?grpc=PORT; its key, if any, in
KIT_WEAVIATE_API_KEY). No Weaviate can run on the test machine, so the Weaviate case is only
collected where one is given (not skipped: it does not exist otherwise).

Vectors are small and hand-made: what is tested is the store, not an embedding model."""

from __future__ import annotations

import os
import uuid

import pytest

from kit.errors import KitError
from kit.rag.store import Change, Record
from kit.rag.target import open_target

WEAVIATE = os.environ.get("KIT_TEST_WEAVIATE_URL")
DIM = 4
MODEL = "test-model"


@pytest.fixture(params=["local"] + (["weaviate"] if WEAVIATE else []))
def spec(request, tmp_path):
    if request.param == "local":
        return f"local:{tmp_path / 'store'}"
    return f"weaviate:{WEAVIATE}"


@pytest.fixture
def collection():
    return f"KitTest_{uuid.uuid4().hex[:10]}"  # each test its own collection, on a shared server too


def open_store(spec, collection):
    return open_target(stack=None, store=spec, collection=collection).store


def records(source: str, texts: list[str], vectors: list[list[float]]) -> list[Record]:
    return [Record(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}#{i}#{t}")), source, i, t, "", v)
            for i, (t, v) in enumerate(zip(texts, vectors))]


A = records("a.md", ["llamas graze on the altiplano", "alpacas give fine wool"],
            [[1, 0, 0, 0], [0.9, 0.1, 0, 0]])
B = records("b.md", ["the quarterly budget report", "zxqv is a code word"],
            [[0, 1, 0, 0], [0, 0, 1, 0]])


@pytest.fixture
def filled(spec, collection):
    store = open_store(spec, collection)
    store.prepare(MODEL, DIM)
    store.write([Change("a.md", A, set())])
    store.write([Change("b.md", B, set())])
    yield store
    if spec.startswith("weaviate:"):
        store.client.collections.delete(collection)
    store.close()


def test_upsert_ids_sources_count_and_reopen(filled, spec, collection):
    assert filled.count() == 4 and filled.sources() == {"a.md", "b.md"}
    assert filled.ids("a.md") == {r.id for r in A}
    filled.write([Change("a.md", A, set())])  # the same chunks again: nothing added
    assert filled.count() == 4 and filled.ids("a.md") == {r.id for r in A}
    if spec.startswith("local:"):  # on disk: a new process sees the same collection
        filled.close()
        again = open_store(spec, collection)
        assert again.count() == 4 and again.model() == MODEL
        again.close()


def test_replace_drops_stale_chunks_and_delete_removes_a_source(filled):
    new = records("a.md", ["llamas graze high in the Andes"], [[1, 0, 0, 0.1]])
    filled.write([Change("a.md", new, {r.id for r in A})])
    assert filled.ids("a.md") == {new[0].id} and filled.count() == 3
    assert filled.delete_source("b.md") == 2
    assert filled.sources() == {"a.md"} and filled.count() == 1


def test_search_ranks_by_vector_and_finds_a_keyword_only_match(filled):
    hits = filled.search("wool", [1, 0, 0, 0], k=2)
    assert [h.source for h in hits] == ["a.md", "a.md"] and hits[0].score >= hits[1].score
    # A word no vector points at: found by the keyword half of hybrid search.
    hits = filled.search("zxqv", [0, 0, 0, 1], k=1, alpha=0.3)
    assert hits and hits[0].text == "zxqv is a code word" and hits[0].chunk == 1


def test_another_embedding_model_is_refused(filled):
    assert filled.model() == MODEL
    with pytest.raises(KitError, match="not .*other-model.*use another --collection"):
        filled.prepare("other-model", DIM)
    assert filled.count() == 4
