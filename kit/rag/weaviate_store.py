"""The Store interface on Weaviate, through weaviate-client v4: a collection with self-provided
vectors (no vectorizer module), batch import with kit's deterministic uuids, hybrid search (the
query's vector passed in, BM25 on the text), deletion by id, API-key auth. Kept thin: every
policy (which ids, what is stale) is in ``kit.rag.ingest``."""

from __future__ import annotations

from urllib.parse import urlparse

from kit.errors import KitError
from kit.rag.store import DEFAULT_ALPHA, Change, Hit, check_collection

MAX_PER_SOURCE = 10_000


def _error(label: str, e: Exception) -> KitError:
    return KitError(f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}")


class WeaviateStore:
    def __init__(self, http_url: str, grpc_port: int, api_key: str | None, collection: str, label: str | None = None):
        import weaviate
        from weaviate.classes.init import AdditionalConfig, Auth, Timeout
        from weaviate.exceptions import WeaviateBaseError

        self.collection = check_collection(collection)
        self.label = label or f"weaviate:{http_url}"
        url = urlparse(http_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise KitError(f"{self.label}: not an http(s) URL")
        secure = url.scheme == "https"
        try:
            self.client = weaviate.connect_to_custom(
                http_host=url.hostname, http_port=url.port or (443 if secure else 80), http_secure=secure,
                grpc_host=url.hostname, grpc_port=grpc_port, grpc_secure=secure,
                auth_credentials=Auth.api_key(api_key) if api_key else None,
                additional_config=AdditionalConfig(timeout=Timeout(init=20, query=60, insert=120)))
        except (WeaviateBaseError, OSError) as e:
            raise _error(self.label, e) from None
        self._errors = WeaviateBaseError

    def _col(self):
        return self.client.collections.use(self.collection)

    def model(self) -> str | None:
        if not self.client.collections.exists(self.collection):
            return None
        description = self._col().config.get().description or ""
        return description.removeprefix("kit-rag model=").split(" dim=")[0] or None

    def claim_writes(self) -> None:
        """Nothing to claim: Weaviate serialises writes itself, and kit's ids make them idempotent."""

    def prepare(self, model: str, dim: int) -> None:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization

        description = f"kit-rag model={model} dim={dim}"
        try:
            if not self.client.collections.exists(self.collection):
                self.client.collections.create(
                    self.collection, description=description,
                    properties=[Property(name="text", data_type=DataType.TEXT),
                                Property(name="heading", data_type=DataType.TEXT),
                                Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                                Property(name="chunk", data_type=DataType.INT)],
                    vector_config=Configure.Vectors.self_provided())
            else:
                built = (self._col().config.get().description or "").removeprefix("kit-rag ")
                if built != description.removeprefix("kit-rag "):
                    raise KitError(f"--collection {self.collection}: built with {built or 'no recorded model'}, "
                                   f"not model={model} dim={dim}; use another --collection")
        except self._errors as e:
            raise _error(self.label, e) from None

    def ids(self, source: str) -> set[str]:
        from weaviate.classes.query import Filter

        res = self._col().query.fetch_objects(filters=Filter.by_property("source").equal(source),
                                              limit=MAX_PER_SOURCE, return_properties=[])
        return {str(o.uuid) for o in res.objects}

    def sources(self) -> set[str]:
        from weaviate.classes.aggregate import GroupByAggregate

        res = self._col().aggregate.over_all(group_by=GroupByAggregate(prop="source", limit=1_000_000))
        return {str(g.grouped_by.value) for g in res.groups}

    def write(self, changes: list[Change]) -> None:
        col = self._col()
        try:
            with col.batch.fixed_size(batch_size=100, concurrent_requests=2) as batch:
                for r in (r for c in changes for r in c.records):
                    batch.add_object(uuid=r.id, vector=r.vector, properties={
                        "text": r.text, "heading": r.heading, "source": r.source, "chunk": r.chunk})
            failed = col.batch.failed_objects
            if failed:  # new chunks first, stale ones only once they are in: a rerun finishes the job
                source = (failed[0].object_.properties or {}).get("source", "?")
                raise KitError(f"{self.label}: {len(failed)} chunks were refused, the first of {source}: "
                               f"{failed[0].message}")
            self._delete([i for c in changes for i in c.stale])
        except self._errors as e:
            raise _error(self.label, e) from None

    def _delete(self, ids) -> None:
        from weaviate.classes.query import Filter

        ids = list(ids)
        for i in range(0, len(ids), 500):
            self._col().data.delete_many(where=Filter.by_id().contains_any(ids[i:i + 500]))

    def delete_source(self, source: str) -> int:
        ids = self.ids(source)
        self._delete(ids)
        return len(ids)

    def search(self, query: str, vector: list[float], k: int, alpha: float = DEFAULT_ALPHA) -> list[Hit]:
        from weaviate.classes.query import MetadataQuery

        if not self.client.collections.exists(self.collection):
            return []
        try:
            res = self._col().query.hybrid(query=query, vector=vector, alpha=alpha, limit=k,
                                           return_metadata=MetadataQuery(score=True))
        except self._errors as e:
            raise _error(self.label, e) from None
        return [Hit(str(o.uuid), o.properties["source"], int(o.properties["chunk"]), float(o.metadata.score or 0.0),
                    o.properties["text"]) for o in res.objects]

    def count(self) -> int:
        if not self.client.collections.exists(self.collection):
            return 0
        return self._col().aggregate.over_all(total_count=True).total_count or 0

    def close(self) -> None:
        self.client.close()
