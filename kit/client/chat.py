"""Chatting with a served model: one turn (streamed or not), and a conversation that resends
its history with each turn."""

from __future__ import annotations

from typing import Callable, TextIO

from kit.client.connection import inference_client
from kit.errors import KitError


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
        # include_usage: the engine ends the stream with its token counts, which a shared
        # service's guard counts per lab (kit.guard.usage); a chunk with no choices carries them.
        for chunk in client.chat_completion(messages=messages, model=model, max_tokens=max_tokens,
                                            temperature=temperature, stream=True,
                                            stream_options={"include_usage": True}):
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


class Conversation:
    """The messages so far; each ``ask`` sends them all, then keeps the answer."""

    def __init__(self, url: str, api_key: str | None, model: str, *, system: str | None = None,
                 max_tokens: int = 256, temperature: float | None = None):
        self.url, self.api_key, self.model = url, api_key, model
        self.max_tokens, self.temperature = max_tokens, temperature
        self.history: list[dict] = [{"role": "system", "content": system}] if system else []

    def ask(self, text: str, stream: Callable[[str], None] | None = None) -> str:
        self.history.append({"role": "user", "content": text})
        answer = chat(self.url, self.api_key, self.model, self.history, max_tokens=self.max_tokens,
                      temperature=self.temperature, stream=stream)
        self.history.append({"role": "assistant", "content": answer})
        return answer


def lines(stdin: TextIO, prompt: Callable[[], None] | None = None):
    """The questions of an interactive chat: one per non-empty line, until EOF, exit or quit."""
    while True:
        if prompt:
            prompt()
        line = stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            return
        if line.strip():
            yield line.strip()
