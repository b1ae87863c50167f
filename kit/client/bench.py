"""A short load test against a served model: N streamed requests, some at once; time to first
token, tokens per second, errors."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kit.client.connection import inference_client


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
