"""What kit's guard counts per key: each forwarded request's status, and the prompt and
generated tokens the engine reports in OpenAI's ``usage`` object, appended as one JSON line per
request to the job's usage file (flushed, so `kit service usage` sees it at once).

Where the engines report usage (TGI 3.3.7 and vLLM 0.19.1 alike): in every non-streamed
chat/completions response; in a stream only when the client asked with
``stream_options: {"include_usage": true}``, as a last chunk with empty ``choices`` (vLLM's
``continuous_usage_stats`` puts a running total on every chunk: the last one wins). A request
whose response carries no usage is counted with ``prompt``/``completion`` null.

Standard library only: this file runs inside the engine's image, beside the guard.
"""

from __future__ import annotations

import json
import time

MAX_JSON_BODY = 8 << 20  # a non-streamed answer larger than this is counted without its tokens


class Meter:
    """Reads a copy of the raw HTTP response as it is relayed: the status, then the body
    (de-chunked when chunked), scanning server-sent events line by line or keeping a JSON
    body whole, for the last ``usage`` object."""

    def __init__(self):
        self.head = b""
        self.status: int | None = None
        self.chunked = False
        self.stream = False
        self.body = bytearray()
        self.raw = bytearray()  # undecoded chunked bytes
        self.line = bytearray()  # the current event-stream line
        self.usage: dict | None = None
        self.too_big = False

    def feed(self, data: bytes) -> None:
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.status = 0
                return
            head, data = self.head[:end], self.head[end + 4:]
            lines = head.split(b"\r\n")
            try:
                self.status = int(lines[0].split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == b"transfer-encoding" and b"chunked" in value:
                    self.chunked = True
                if name == b"content-type" and value.startswith(b"text/event-stream"):
                    self.stream = True
        if self.chunked:
            self.raw += data
            self._dechunk()
        else:
            self._body(data)

    def _dechunk(self) -> None:
        while True:
            end = self.raw.find(b"\r\n")
            if end < 0:
                return
            try:
                size = int(bytes(self.raw[:end]).split(b";", 1)[0].strip() or b"0", 16)
            except ValueError:
                self.raw.clear()
                return
            if size == 0:
                self.raw.clear()
                return
            if len(self.raw) < end + 2 + size + 2:
                return
            self._body(bytes(self.raw[end + 2:end + 2 + size]))
            del self.raw[:end + 2 + size + 2]

    def _body(self, data: bytes) -> None:
        if self.stream:
            self.line += data
            while True:
                end = self.line.find(b"\n")
                if end < 0:
                    break
                self._event_line(bytes(self.line[:end]).strip())
                del self.line[:end + 1]
        elif not self.too_big:
            self.body += data
            if len(self.body) > MAX_JSON_BODY:
                self.too_big = True
                self.body.clear()

    def _event_line(self, line: bytes) -> None:
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload.startswith(b"{") and b'"usage"' in payload:
                self._take(payload)

    def _take(self, payload: bytes) -> None:
        try:
            usage = json.loads(payload).get("usage")
        except (ValueError, AttributeError):
            return
        if isinstance(usage, dict):
            self.usage = usage

    def result(self) -> tuple[int | None, int | None, int | None]:
        """(status, prompt tokens, generated tokens) once the response has ended."""
        if self.stream and self.line:
            self._event_line(bytes(self.line).strip())
        elif not self.stream and self.body and not self.too_big:
            self._take(bytes(self.body))
        prompt = completion = None
        if self.usage:
            p, c = self.usage.get("prompt_tokens"), self.usage.get("completion_tokens")
            prompt = p if isinstance(p, int) else None
            completion = c if isinstance(c, int) else None
        return self.status, prompt, completion


class UsageLog:
    """One JSON line per request, appended and flushed: time, key label, method, path, status,
    prompt and generated tokens, and whether it was an error (4xx/5xx or no answer)."""

    def __init__(self, path: str | None):
        self.path = path
        self.file = None

    def record(self, label: str, method: str, path: str, status: int | None, prompt: int | None,
               completion: int | None) -> None:
        if not self.path:
            return
        line = {"t": round(time.time(), 3), "lab": label, "method": method, "path": path.split("?", 1)[0][:200],
                "status": status, "prompt": prompt, "completion": completion,
                "error": not status or status >= 400}
        try:
            if self.file is None:
                self.file = open(self.path, "a", buffering=1)
            self.file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.file.flush()
        except OSError:
            self.file = None  # counting never stops the service
