"""Which store and which embedder a command means: ``--store local:DIR`` (or nothing: the local
store under kit's state dir) embeds in process; ``--store weaviate:URL`` is a Weaviate server of
one's own (gRPC port in ``?grpc=``, key in KIT_WEAVIATE_API_KEY) embedded in process; ``--stack
JOB`` is a running `kit rag up` job: its Weaviate and its TEI (or, for Weaviate alone, the model in
process), with the job's key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kit.errors import KitError
from kit.rag.lance_store import LocalStore
from kit.rag.store import DEFAULT_COLLECTION, default_dir

STORE_FORMS = "local:DIR or weaviate:http://HOST:PORT?grpc=PORT"


@dataclass
class Target:
    store: object
    embedder: object

    def close(self):
        self.store.close()


def parse_store(spec: str | None) -> tuple[str, str]:
    if spec is None:
        return "local", str(default_dir())
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in ("local", "weaviate") or not rest:
        raise KitError(f"--store {spec!r}: unknown form; use {STORE_FORMS} (or --stack JOB for a stack's Weaviate)")
    return scheme, rest


def stack_services(job: str, site: str | None) -> tuple[dict, str, dict]:
    """A running stack's endpoint (host and services), its key and its record data."""
    from kit.jobs.record import lookup

    record = lookup(job, site)
    if record.data.get("task") != "rag-stack":
        raise KitError(f"--stack {job}: job {record.name} is a {record.data.get('task')} job, not a `kit rag up` stack")
    ep = record.endpoint() or {}
    if ep.get("state") != "ready" or not ep.get("services"):
        state = ep.get("state") or "not started"
        raise KitError(f"--stack {job}: the stack is not running ({state}); `kit wait {record.name}` or `kit rag up`")
    return ep, record.api_key(), record.data


def open_target(*, stack: str | None, store: str | None, collection: str | None, site: str | None = None,
                embed_model: str | None = None, create: bool = True) -> Target:
    from kit.rag.embed import LocalEmbedder, TEIEmbedder

    collection = collection or DEFAULT_COLLECTION
    if stack and store:
        raise KitError("--stack and --store: give one of them")
    if stack:
        from kit.rag.weaviate_store import WeaviateStore

        ep, key, data = stack_services(stack, site)
        host, services = ep["host"], ep["services"]
        weaviate = WeaviateStore(f"http://{host}:{services['weaviate']['port']}", int(services["weaviate"]["grpc_port"]),
                                 key, collection, label=f"stack {data['name']}")
        if "tei" in services:
            embedder = TEIEmbedder(f"http://{host}:{services['tei']['port']}", key, data["embed_model"])
        else:  # Weaviate alone (`kit rag up --cpu`): kit embeds in process
            embedder = LocalEmbedder(embed_model)
        return Target(weaviate, embedder)
    scheme, rest = parse_store(store)
    if scheme == "local":
        return Target(LocalStore(Path(rest), collection, create=create), LocalEmbedder(embed_model))
    from kit.rag.weaviate_store import WeaviateStore

    url = urlparse(rest)
    grpc = parse_qs(url.query).get("grpc", ["50051"])[0]
    if not grpc.isdigit():
        raise KitError(f"--store {store}: grpc= must be a port number")
    http_url = f"{url.scheme}://{url.netloc}"
    return Target(WeaviateStore(http_url, int(grpc), os.environ.get("KIT_WEAVIATE_API_KEY"), collection),
                  LocalEmbedder(embed_model))
