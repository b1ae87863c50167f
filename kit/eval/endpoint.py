"""Answers from a served model (TGI or vLLM, a kit JOB or a URL) through the same
InferenceClient as `kit chat`, with retries and exponential backoff.

Retried: 408, 425, 429 and 5xx answers, timeouts and connection errors, ``retries`` times, waiting
``backoff`` seconds, then twice as long each time (at most 60 s, a little jitter, and at least the
server's ``Retry-After``). Fatal for the whole run: 401/403 (the key) and 404 (no such model or
adapter name), since every other prompt would fail the same way. Any other 4xx fails that prompt
only (say, a prompt longer than the server allows).

The temperature is always sent: 0 is greedy on both engines, while TGI's chat route samples
when a request leaves it out.
"""

from __future__ import annotations

import importlib
import random
import time

from kit.client.connection import inference_client
from kit.errors import KitError

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
FATAL_STATUS = {401: "refused the API key", 403: "refused the API key", 404: "does not serve that model name"}
MAX_WAIT_S = 60.0


class PromptFailed(Exception):
    """This prompt got no answer (after its retries); the run goes on."""


def transport_errors() -> tuple[type[BaseException], ...]:
    """Timeouts and connection errors of huggingface_hub's HTTP stack (httpx2, or httpx before it)."""
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def retry_after(response) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


class Endpoint:
    """``answer(messages) -> text`` against one server; safe to call from several threads."""

    def __init__(self, url: str, api_key: str | None, model: str, *, max_tokens: int, temperature: float | None,
                 workers: int = 4, retries: int = 4, backoff: float = 1.0, timeout: float = 300):
        self.url, self.model, self.workers = url, model, workers
        self.max_tokens, self.temperature = max_tokens, temperature
        self.retries, self.backoff = retries, backoff
        self.client = inference_client(url, api_key, timeout=timeout)
        self.transient = transport_errors()

    def wait_s(self, attempt: int, server_says: float | None) -> float:
        wait = min(MAX_WAIT_S, self.backoff * 2 ** attempt) * (1 + random.random() * 0.1)
        return min(MAX_WAIT_S, max(wait, server_says or 0.0))

    def answer(self, messages: list[dict]) -> str:
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(self.retries + 1):
            server_says = None
            try:
                out = self.client.chat_completion(messages=messages, model=self.model, max_tokens=self.max_tokens,
                                                  temperature=self.temperature)
                if not out.choices:
                    raise PromptFailed("the server answered without a choice")
                return out.choices[0].message.content or ""
            except HfHubHTTPError as e:
                status = getattr(e.response, "status_code", None)
                if status in FATAL_STATUS:
                    raise KitError(f"{self.url}: the server {FATAL_STATUS[status]} ({status}, model "
                                   f"{self.model!r}): {str(e).splitlines()[0]}") from None
                if status not in RETRY_STATUS:
                    raise PromptFailed(f"HTTP {status}: {str(e).splitlines()[0]}") from None
                last = f"HTTP {status}: {str(e).splitlines()[0]}"
                server_says = retry_after(e.response)
            except self.transient as e:
                last = first_line(e)
            if attempt < self.retries:
                time.sleep(self.wait_s(attempt, server_says))
        raise PromptFailed(f"{last} (after {self.retries + 1} tries)")
