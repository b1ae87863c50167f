"""What the server stand-ins share: the hooks for each server's key rule and errors, the cheap answer of
a listed route the stand-in does not implement, and, for the two generation engines, the OpenAI chat and
completions routes (what kit's client and huggingface_hub's InferenceClient use)."""

from __future__ import annotations

import time
import uuid

from standin import routes
from standin.httpd import HTTPError


class Engine:
    """One engine: `name` picks its route table; `handlers` maps (method, table path) -> fn(body)."""

    name: str
    handlers: dict
    unauthorized = (401, None)

    def __init__(self, model, max_total: int):
        self.model, self.max_total, self.requests = model, max_total, 0

    def authorize(self, method: str, path: str, header: str | None) -> None:
        """Raise the engine's refusal when the request needs the key and does not carry it."""
        if self.needs_key(method, path) and not self.key_ok(header):
            raise HTTPError(*self.unauthorized)

    def needs_key(self, method: str, path: str) -> bool:
        raise NotImplementedError

    def key_ok(self, header: str | None) -> bool:
        raise NotImplementedError

    def error(self, message: str) -> HTTPError:
        raise NotImplementedError

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise the engine's error when the request does not fit its context."""

    def model_name(self, body: dict) -> str:
        raise NotImplementedError

    def check_table(self) -> None:
        """Every implemented route is in the engine's table."""
        listed = {(r.method, r.path) for r in routes.table(self.name)}
        extra = set(self.handlers) - listed
        if extra:
            raise RuntimeError(f"{self.name}: routes not in the pinned table: {sorted(extra)}")

    def plain(self, route: routes.Route, path: str, body: dict):
        """A listed route the stand-in does not implement: a small, cheap 200."""
        return 200, {"object": "stand-in", "engine": self.name, "route": f"{route.method} {route.path}",
                     "path": path}

    def run(self, ids: list[int], max_tokens) -> tuple[list[str], int, str]:
        max_tokens = max_tokens or self.max_total - len(ids)
        self.check(len(ids), max_tokens)
        self.requests += 1
        return self.model.generate(ids, max_tokens)

    def chat_prompt(self, body: dict) -> list[int]:
        try:
            return self.model.chat_ids([{"role": m["role"], "content": str(m.get("content") or "")}
                                        for m in body["messages"]])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(f"invalid messages: {exc}") from None

    def chat(self, body: dict):
        """POST /v1/chat/completions, streamed (server-sent events) or not."""
        name, ids = self.model_name(body), self.chat_prompt(body)
        pieces, generated, finish = self.run(ids, body.get("max_tokens") or body.get("max_completion_tokens"))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
        usage = {"prompt_tokens": len(ids), "completion_tokens": generated, "total_tokens": len(ids) + generated}
        if not body.get("stream"):
            return 200, {**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "logprobs": None,
                 "finish_reason": finish}]}

        def events():
            chunks = pieces or [""]
            for k, piece in enumerate(chunks):
                yield {**base, "object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": piece}, "logprobs": None,
                     "finish_reason": finish if k == len(chunks) - 1 else None}]}
            if (body.get("stream_options") or {}).get("include_usage"):  # both engines: a last chunk, no choices
                yield {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            yield "[DONE]"

        return 200, events()

    def completion(self, body: dict):
        """POST /v1/completions (not streamed)."""
        name, prompt = self.model_name(body), body.get("prompt")
        if not isinstance(prompt, str):
            raise self.error("`prompt` must be a string")
        ids = self.model.encode(prompt)
        pieces, generated, finish = self.run(ids, body.get("max_tokens") or 16)
        return 200, {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                     "model": name, "choices": [{"index": 0, "text": "".join(pieces), "logprobs": None,
                                                 "finish_reason": finish}],
                     "usage": {"prompt_tokens": len(ids), "completion_tokens": generated,
                               "total_tokens": len(ids) + generated}}
