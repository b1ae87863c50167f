"""kit's client against a recording OpenAI-compatible server on 127.0.0.1: what `kit chat`
really sends, turn after turn."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from httpstub import LocalHTTPStub


class RecordingChat(LocalHTTPStub):
    """Answers every chat turn with "answer N" (streamed or not) and keeps each request body.

    Subclasses choose the answer (`reply`) or fail a request with an HTTP error (`failure`)."""

    def __init__(self):
        super().__init__()
        self.requests: list[dict] = []

    def route(self, req):
        if req.command == "GET" and req.path == "/v1/models":
            self.send(req, 200, {"Content-Type": "application/json"}, b'{"data": [{"id": "recorder"}]}')
            return
        body = json.loads(req.rfile.read(int(req.headers["Content-Length"])))
        self.requests.append({"auth": req.headers.get("Authorization"), **body})
        failure = self.failure(body)
        if failure:
            status, headers, payload = failure
            self.send(req, status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode())
            return
        text = self.reply(body)
        if body.get("stream"):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]}
            usage = {**chunk, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            last = f"data: {json.dumps(usage)}\n\n" if (body.get("stream_options") or {}).get("include_usage") else ""
            events = f"data: {json.dumps(chunk)}\n\n{last}data: [DONE]\n\n".encode()
            self.send(req, 200, {"Content-Type": "text/event-stream"}, events)
            return
        out = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        self.send(req, 200, {"Content-Type": "application/json"}, json.dumps(out).encode())

    def reply(self, body: dict) -> str:
        return f"answer {len(self.requests)}"

    def failure(self, body: dict) -> tuple[int, dict, dict] | None:
        """(status, headers, JSON body) to answer this request with instead, or None."""
        return None


def test_an_interactive_chat_resends_the_whole_conversation(tmp_path):
    key = tmp_path / "key"
    key.write_text("the-key\n")
    for stream in (True, False):
        with RecordingChat() as server:
            args = [sys.executable, "-m", "kit.cli", "chat", server.url, "--api-key-file", str(key),
                    "--system", "be brief"] + ([] if stream else ["--no-stream"])
            proc = subprocess.run(args, input="first question\n\nsecond question\nexit\nnever sent\n",
                                  capture_output=True, text=True, timeout=60, env=dict(os.environ))
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.split() == ["answer", "1", "answer", "2"]
            first, second = server.requests
            assert first["messages"] == [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "first question"}]
            assert second["messages"] == first["messages"] + [{"role": "assistant", "content": "answer 1"},
                                                              {"role": "user", "content": "second question"}]
            assert {r["auth"] for r in server.requests} == {"Bearer the-key"}
            assert {r["model"] for r in server.requests} == {"recorder"}  # the server's own name
            # A streamed turn asks for the token counts (a shared service's guard counts them per lab).
            assert {json.dumps(r.get("stream_options")) for r in server.requests} == \
                {'{"include_usage": true}' if stream else "null"}
