"""The engines' HTTP side: a threaded server, routing with each engine's API-key rule, and the
OpenAI chat route both engines serve (what kit's client and huggingface_hub's InferenceClient use).

Nothing answers until the model is loaded: the port is bound first (a taken port fails fast) and
listens only once serving starts. SIGTERM or SIGINT stop the server and exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standin.model import fail


class HTTPError(Exception):
    def __init__(self, status: int, payload=None):
        super().__init__(status)
        self.status, self.payload = status, payload


class Engine:
    """One engine's routes and rules; tgi.py and vllm.py fill them in."""

    routes: dict  # (method, path) -> fn(body) -> (status, payload)
    unauthorized = (401, None)

    def __init__(self, model, max_total: int):
        self.model, self.max_total, self.requests = model, max_total, 0

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

    def chat(self, body: dict):
        """POST /v1/chat/completions, streamed (server-sent events) or not."""
        name = self.model_name(body)
        try:
            ids = self.model.chat_ids([{"role": m["role"], "content": str(m.get("content") or "")}
                                       for m in body["messages"]])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(f"invalid messages: {exc}") from None
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or self.max_total - len(ids)
        self.check(len(ids), max_tokens)
        self.requests += 1
        pieces, generated, finish = self.model.generate(ids, max_tokens)
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
            yield "[DONE]"

        return 200, events()


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def make_handler(engine: Engine):
    paths = {path for _, path in engine.routes}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle_request(self):
            path = self.path.split("?", 1)[0]
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                if engine.needs_key(self.command, path) and not engine.key_ok(self.headers.get("Authorization")):
                    raise HTTPError(*engine.unauthorized)
                route = engine.routes.get((self.command, path))
                if route is None:
                    raise HTTPError(405 if path in paths else 404)
                try:
                    body = json.loads(raw) if self.command == "POST" else {}
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    raise engine.error("the body is not a JSON object")
                status, payload = route(body)
            except HTTPError as exc:
                status, payload = exc.status, exc.payload
            except Exception as exc:  # noqa: BLE001 - a stand-in bug shows as a 500, never a hang
                status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
            log(f'{self.client_address[0]} "{self.command} {path}" {status}')
            self.send(status, payload)

        do_GET = do_POST = handle_request

        def send(self, status: int, payload) -> None:
            self.send_response(status)
            if hasattr(payload, "__next__"):  # server-sent events, then the connection closes
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for event in payload:
                    text = event if isinstance(event, str) else json.dumps(event)
                    self.wfile.write(f"data: {text}\n\n".encode())
                    self.wfile.flush()
                return
            text = isinstance(payload, str)
            data = b"" if payload is None else payload.encode() if text else json.dumps(payload).encode()
            if data:
                self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def bind(host: str, port: int) -> Server:
    """Bind now (exit 1 if the port is taken); listen later, in serve()."""
    srv = Server((host, port), BaseHTTPRequestHandler, bind_and_activate=False)
    try:
        srv.server_bind()
    except OSError as exc:
        srv.server_close()
        fail(f"cannot bind {host}:{port}: [Errno {exc.errno}] {exc.strerror}")
    return srv


def serve(servers: list[Server], engine: Engine) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    for srv in servers:
        srv.RequestHandlerClass = make_handler(engine)
        srv.server_activate()
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    log("serving on " + ", ".join(f"{srv.server_address[0]}:{srv.server_address[1]}" for srv in servers))
    while not stop.wait(0.2):
        pass
    log("signal received, shutting down")
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    sys.stderr.flush()
    os._exit(0)
