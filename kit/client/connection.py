"""Reaching a served model: huggingface_hub's InferenceClient against the engines'
OpenAI-compatible API (TGI and vLLM alike), the model name a server expects, and which server
a JOB or URL argument means."""

from __future__ import annotations

import os
from pathlib import Path

from kit.errors import KitError


def inference_client(url: str, api_key: str | None, timeout: float = 120):
    # InferenceClient refuses every URL, even a node on the cluster network, while
    # HF_HUB_OFFLINE is set (research notes, feasibility.md §2); jobs set it, kit's client must not.
    os.environ.pop("HF_HUB_OFFLINE", None)
    from huggingface_hub import InferenceClient, constants

    constants.HF_HUB_OFFLINE = False
    return InferenceClient(base_url=url.rstrip("/") + "/v1", api_key=api_key or "-", timeout=timeout)


def served_model(url: str, api_key: str | None) -> str:
    """The model name a server expects (vLLM rejects names it does not serve; TGI takes "tgi")."""
    import json
    import urllib.request

    req = urllib.request.Request(f"{url}/v1/models", headers={"Authorization": f"Bearer {api_key or '-'}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            models = json.loads(resp.read()).get("data") or []
    except (OSError, ValueError):
        return "tgi"  # unknown server: TGI's name for its base model
    return models[0]["id"] if models and models[0].get("id") else "tgi"


def read_key_file(path: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise KitError(f"--api-key-file {path}: {e.strerror}") from None


def target(ref: str, site: str | None = None, api_key_file: str | None = None) -> tuple[str, str | None, str]:
    """JOB, service NAME or URL -> (url, API key, the model name that picks the base model).
    A service resolves at each call (its current generation); its key is the owner's, else the
    lab key file this user can read, else --api-key-file."""
    if ref.startswith(("http://", "https://")):
        key = read_key_file(api_key_file) if api_key_file else None
        return ref.rstrip("/"), key, served_model(ref.rstrip("/"), key)
    from kit import engines
    from kit.jobs.endpoint import endpoint_url
    from kit.jobs.record import lookup

    record = lookup(ref, site)  # a job, or a shared service's current generation
    url = endpoint_url(record)
    if url is None and record.data.get("service"):
        raise KitError(f"service {ref} is not answering now (state {record.data.get('state')}); "
                       f"`kit service status {ref}`")
    if url is None:
        raise KitError(f"job {record.job_id} has no endpoint yet: `kit wait {record.job_id}` first")
    key = read_key_file(api_key_file) if api_key_file else record.api_key()
    engine = record.data.get("generator_engine") or record.data["engine"]  # a RAG stack: its own generator
    if record.data.get("task") == "rag-stack" and not record.data.get("generator_engine"):
        raise KitError(f"job {record.job_id} ({record.name}) is a RAG stack that runs no generator "
                       f"(`kit rag up --model` starts one)")
    return url, key, engines.chat_model(engine, record.data["served_model_name"])
