"""The shared plumbing of the tests' HTTP stand-ins (Hub, registry, a recording chat server): a
threaded server on 127.0.0.1 that hands every GET/HEAD/POST to the subclass's `route`, and a
`send` helper."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalHTTPStub:
    def __init__(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.route(self)

            def do_HEAD(self):
                stub.route(self)

            def do_POST(self):
                stub.route(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def route(self, req: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @staticmethod
    def send(req: BaseHTTPRequestHandler, status: int, headers: dict, body: bytes) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        if "Content-Length" not in headers:
            req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if body and req.command != "HEAD":
            req.wfile.write(body)


class NetworkFault:
    """A server on 127.0.0.1 that fails at the network level: ``drop`` accepts each connection,
    reads the request and closes without answering; ``silent`` accepts and never answers."""

    def __init__(self, mode: str):
        import socket

        assert mode in ("drop", "silent")
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.held: list = []
        self.thread = threading.Thread(target=self.serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by __exit__
                return
            if self.mode == "silent":
                self.held.append(conn)
                continue
            try:
                conn.recv(65536)
            except OSError:
                pass
            conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.held:
            conn.close()
