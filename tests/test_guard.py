"""kit's key guard, run as the job runs it (a separate process), in front of a small upstream
that records what reaches it: the attacker's view of every route and method."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[1] / "kit" / "guard" / "proxy.py"
KEY = "k3y-Secret_value"


class Upstream(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(length) if length else b""
        Upstream.seen.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"),
                              "body": body.decode()})
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i in range(3):
                self.wfile.write(f"data: {i}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.05)
            return
        out = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def guard(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Upstream.seen = []
    keys = tmp_path / "api_key"
    keys.write_text(KEY + "\n")
    inner = tmp_path / "engine_key"
    inner.write_text("internal-key\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PROXY), "--listen", f"127.0.0.1:{port}",
                             "--upstream", f"127.0.0.1:{server.server_address[1]}", "--key-file", str(keys),
                             "--upstream-key-file", str(inner)], stderr=subprocess.PIPE, text=True)
    assert "listening" in proc.stderr.readline()
    yield {"port": port, "keys": keys}
    proc.terminate()
    proc.wait(10)
    server.shutdown()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def request(port: int, method: str, path: str, key: str | None = None, body: bytes = b"", scheme: str = "Bearer") -> tuple[int, bytes]:
    auth = f"Authorization: {scheme} {key}\r\n" if key is not None else ""
    data = (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len(body)}\r\n\r\n").encode() + body
    out = raw(port, data)
    status = int(out.split(b" ", 2)[1])
    return status, out.split(b"\r\n\r\n", 1)[1]


ROUTES = ["/v1/chat/completions", "/v1/completions", "/invocations", "/inference/v1/generate", "/generate",
          "/generate_stream", "/info", "/metrics", "/v1/models", "/tokenize", "/", "/docs", "/health/../v1/models",
          "/HEALTH", "/healthz"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS"])
def test_every_route_but_health_needs_the_key(guard, method):
    for path in ROUTES:
        assert request(guard["port"], method, path)[0] == 401, path
        assert request(guard["port"], method, path, KEY.upper())[0] == 401, path  # case matters
        assert request(guard["port"], method, path, KEY[:-1])[0] == 401, path
        assert request(guard["port"], method, path, KEY, scheme="Basic")[0] == 401, path
    assert Upstream.seen == []  # nothing reached the engine
    if method == "GET":
        assert request(guard["port"], "GET", "/health")[0] == 200
        assert request(guard["port"], "GET", "/health?probe=1")[0] == 200
    else:
        assert request(guard["port"], method, "/health")[0] == 401


def test_the_right_key_passes_and_the_engine_sees_only_its_own(guard):
    status, body = request(guard["port"], "POST", "/v1/completions", KEY, b'{"prompt": "hi"}')
    assert status == 200 and json.loads(body) == {"path": "/v1/completions"}
    assert request(guard["port"], "GET", "/info", KEY, scheme="bearer")[0] == 200
    assert [s["auth"] for s in Upstream.seen] == ["Bearer internal-key", "Bearer internal-key"]
    assert Upstream.seen[0]["body"] == '{"prompt": "hi"}'


def test_chunked_bodies_and_streams_pass_whole(guard):
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    out = raw(guard["port"], b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
              + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert out.startswith(b"HTTP/1.0 200") or out.startswith(b"HTTP/1.1 200")
    assert Upstream.seen[-1]["body"] == "hello world"
    out = raw(guard["port"], b"GET /stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n")
    assert out.count(b"data: ") == 3


def test_a_second_request_on_the_connection_never_reaches_the_engine(guard):
    first = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    second = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    raw(guard["port"], first + second)
    assert [s["path"] for s in Upstream.seen] == ["/health"]


def test_ambiguous_requests_are_refused(guard):
    two_keys = (b"GET /info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nAuthorization: Bearer "
                + KEY.encode() + b"\r\n\r\n")
    assert raw(guard["port"], two_keys).startswith(b"HTTP/1.1 400")
    both = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert raw(guard["port"], both).startswith(b"HTTP/1.1 400")
    assert raw(guard["port"], b"GET http://x/v1/models HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(guard["port"], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert Upstream.seen == []  # nothing was forwarded


def test_keys_are_reread_when_the_file_changes(guard):
    assert request(guard["port"], "GET", "/info", KEY)[0] == 200
    guard["keys"].write_text("another-key\n")
    assert request(guard["port"], "GET", "/info", KEY)[0] == 401
    assert request(guard["port"], "GET", "/info", "another-key")[0] == 200
    guard["keys"].unlink()
    assert request(guard["port"], "GET", "/info", "another-key")[0] == 401


def test_an_engine_that_is_down_is_a_502(tmp_path):
    keys = tmp_path / "k"
    keys.write_text(KEY)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PROXY), "--listen", f"127.0.0.1:{port}", "--upstream",
                             f"unix:{tmp_path}/missing.sock", "--key-file", str(keys)], stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in proc.stderr.readline()
        assert request(port, "GET", "/health")[0] == 502
    finally:
        proc.terminate()
        proc.wait(10)
