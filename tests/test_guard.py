"""kit's key guard, run as the job runs it (a separate process), in front of a small upstream
that records what reaches it: the attacker's view of every route and method."""

from __future__ import annotations

import hashlib
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
        if self.path == "/v1/usage":  # a non-streamed answer with OpenAI's usage
            out = json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        if self.path == "/v1/usage-stream":  # chunked events, usage in a last chunk split mid-line
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = (b'data: {"choices": [{"delta": {"content": "hi"}}], "usage": null}\n\n'
                      b'data: {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5}}\n\ndata: [DONE]\n\n')
            for part in (events[:30], events[30:90], events[90:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/slow":
            time.sleep(2)
        if self.path == "/missing":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
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


def start_guard(tmp_path, *extra: str):
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
                             "--upstream-key-file", str(inner), *extra], stderr=subprocess.PIPE, text=True)
    assert "listening" in proc.stderr.readline()
    return {"port": port, "keys": keys, "proc": proc, "server": server}


def stop_guard(g):
    g["proc"].terminate()
    g["proc"].wait(10)
    g["server"].shutdown()


@pytest.fixture
def guard(tmp_path):
    g = start_guard(tmp_path)
    yield g
    stop_guard(g)


LAB_A, LAB_B = "lab-a-secret-key", "lab-b-secret-key"


def hash_line(lab: str, key: str) -> str:
    return f"{lab} {hashlib.sha256(key.encode()).hexdigest()}\n"


@pytest.fixture
def lab_guard(tmp_path):
    hashes = tmp_path / "key_hashes"
    hashes.write_text(hash_line("lab-a", LAB_A) + hash_line("lab-b", LAB_B))
    usage = tmp_path / "usage.jsonl"
    g = start_guard(tmp_path, "--key-hashes", str(hashes), "--usage-file", str(usage), "--drain", "10")
    yield dict(g, hashes=hashes, usage=usage)
    if g["proc"].poll() is None:
        stop_guard(g)
    else:
        g["server"].shutdown()


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


def usage_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_lab_keys_are_checked_by_their_hashes_and_revoked_live(lab_guard):
    port = lab_guard["port"]
    assert request(port, "GET", "/info", LAB_A)[0] == 200
    assert request(port, "GET", "/info", LAB_B)[0] == 200
    assert request(port, "GET", "/info", KEY)[0] == 200  # the owner's key file still counts
    digest = hashlib.sha256(LAB_A.encode()).hexdigest()
    assert request(port, "GET", "/info", digest)[0] == 401  # the hash itself is no key
    assert request(port, "GET", "/info", LAB_A.upper())[0] == 401
    tmp = lab_guard["hashes"].with_name(".key_hashes.tmp")  # revoked the way kit writes it: a rename
    tmp.write_text(hash_line("lab-b", LAB_B) + "garbage line\nlab-c " + "0" * 63 + "\n")
    tmp.replace(lab_guard["hashes"])
    assert request(port, "GET", "/info", LAB_A)[0] == 401  # the very next request
    assert request(port, "GET", "/info", LAB_B)[0] == 200
    assert [line["lab"] for line in usage_lines(lab_guard["usage"])] == ["lab-a", "lab-b", "owner", "lab-b"]


def test_usage_counts_requests_tokens_and_errors_per_key(lab_guard):
    port = lab_guard["port"]
    for _ in range(2):
        assert request(port, "POST", "/v1/usage", LAB_A, b"{}")[0] == 200
    out = raw(port, b"POST /v1/usage-stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + LAB_B.encode()
              + b"\r\nContent-Length: 0\r\n\r\n")
    assert b"[DONE]" in out
    assert request(port, "GET", "/missing", LAB_B)[0] == 404
    assert request(port, "POST", "/v1/usage", "wrong", b"{}")[0] == 401  # no key: not counted
    assert request(port, "GET", "/health")[0] == 200  # open: not counted
    lines = usage_lines(lab_guard["usage"])
    summary = [(x["lab"], x["path"], x["status"], x["prompt"], x["completion"], x["error"]) for x in lines]
    assert summary == [("lab-a", "/v1/usage", 200, 7, 3, False), ("lab-a", "/v1/usage", 200, 7, 3, False),
                       ("lab-b", "/v1/usage-stream", 200, 11, 5, False), ("lab-b", "/missing", 404, None, None, True)]


def test_a_stopping_guard_finishes_requests_in_flight(lab_guard):
    result = {}
    t = threading.Thread(target=lambda: result.update(r=request(lab_guard["port"], "GET", "/slow", LAB_A)))
    t.start()
    time.sleep(0.5)
    lab_guard["proc"].terminate()
    t.join(10)
    assert result["r"][0] == 200
    assert lab_guard["proc"].wait(10) == 0
    with pytest.raises(OSError):
        request(lab_guard["port"], "GET", "/health")
