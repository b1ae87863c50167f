"""Talking to a served model: chat and a short load test, through huggingface_hub's
InferenceClient against the engines' OpenAI-compatible API (TGI and vLLM alike)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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


def chat(url: str, api_key: str | None, model: str, messages: list[dict], *, max_tokens: int = 256,
         temperature: float | None = None, stream=None):
    """Send one chat turn; with ``stream`` (a callable) each text piece goes to it as it arrives."""
    from huggingface_hub.errors import HfHubHTTPError

    client = inference_client(url, api_key)
    try:
        if stream is None:
            out = client.chat_completion(messages=messages, model=model, max_tokens=max_tokens, temperature=temperature)
            return out.choices[0].message.content or ""
        pieces = []
        for chunk in client.chat_completion(messages=messages, model=model, max_tokens=max_tokens,
                                            temperature=temperature, stream=True):
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                pieces.append(delta)
                stream(delta)
        return "".join(pieces)
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status == 401:
            raise KitError(f"{url}: the server refused the API key (401)") from None
        raise KitError(f"{url}: request failed: {str(e).splitlines()[0]}") from None
    except (OSError, ConnectionError) as e:
        raise KitError(f"{url}: cannot reach the server: {e}") from None


@dataclass
class BenchResult:
    requests: int
    concurrency: int
    errors: int
    wall_s: float
    ttft_s: list[float]
    tokens: list[int]
    latency_s: list[float]
    first_error: str | None

    def summary(self) -> dict:
        ok = len(self.ttft_s)

        def pct(values, q):
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

        total_tokens = sum(self.tokens)
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "ok": ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "wall_s": round(self.wall_s, 3),
            "ttft_p50_s": round(statistics.median(self.ttft_s), 4) if ok else None,
            "ttft_p95_s": pct(self.ttft_s, 0.95),
            "latency_p50_s": round(statistics.median(self.latency_s), 4) if ok else None,
            "output_tokens": total_tokens,
            "tokens_per_s": round(total_tokens / self.wall_s, 2) if self.wall_s > 0 else None,
            "requests_per_s": round(ok / self.wall_s, 3) if self.wall_s > 0 else None,
        }


def bench(url: str, api_key: str | None, model: str, *, requests: int, concurrency: int, max_tokens: int,
          prompt: str) -> BenchResult:
    """N streamed chat requests, `concurrency` at a time: time to first token, tokens, errors."""
    client = inference_client(url, api_key)
    lock = threading.Lock()
    ttft, tokens, latency, errors = [], [], [], []

    def one(i: int) -> None:
        start = time.perf_counter()
        first = None
        count = 0
        try:
            for chunk in client.chat_completion(messages=[{"role": "user", "content": f"{prompt} ({i})"}],
                                                model=model, max_tokens=max_tokens, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    if first is None:
                        first = time.perf_counter() - start
                    count += 1
        except Exception as e:  # every failure is counted and reported, none stops the run
            with lock:
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return
        with lock:
            ttft.append(first if first is not None else time.perf_counter() - start)
            tokens.append(count)
            latency.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return BenchResult(requests, concurrency, len(errors), wall, ttft, tokens, latency, errors[0] if errors else None)
