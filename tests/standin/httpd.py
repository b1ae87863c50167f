"""The engines' HTTP side: a threaded server on a TCP port or a Unix socket, serving the engine's
pinned route table (routes.py) behind the engine's own API-key rule (engine.py).

Nothing answers until the model is loaded: the address is bound first (a taken one fails fast) and
listens only once serving starts. SIGTERM or SIGINT stop the server and exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standin import routes
from standin.model import fail


class HTTPError(Exception):
    def __init__(self, status: int, payload=None):
        super().__init__(status)
        self.status, self.payload = status, payload


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def make_handler(engine):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle_request(self):
            path = self.path.split("?", 1)[0]
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                engine.authorize(self.command, path, self.headers.get("Authorization"))
                route, same_path = routes.find(engine.name, self.command, path)
                if route is None:
                    raise HTTPError(405 if same_path else 404)
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    raise engine.error("the body is not a JSON object")
                handler = engine.handlers.get((route.method, route.path))
                status, payload = handler(body) if handler else engine.plain(route, path, body)
            except HTTPError as exc:
                status, payload = exc.status, exc.payload
            except Exception as exc:  # noqa: BLE001 - a stand-in bug shows as a 500, never a hang
                status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
            log(f'{self.client_address[0]} "{self.command} {path}" {status}')
            self.send(status, payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_request

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
            if self.command != "HEAD":
                self.wfile.write(data)

    if getattr(engine, "head", False):  # a server whose route table lists HEAD routes (Weaviate)
        Handler.do_HEAD = Handler.handle_request
    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def get_request(self):
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler reads client_address[0]


def bind(host: str, port: int) -> Server:
    """Bind now (exit 1 if the port is taken); listen later, in serve()."""
    srv = Server((host, port), BaseHTTPRequestHandler, bind_and_activate=False)
    try:
        srv.server_bind()
    except OSError as exc:
        srv.server_close()
        fail(f"cannot bind {host}:{port}: [Errno {exc.errno}] {exc.strerror}")
    return srv


def bind_unix(path: str) -> UnixServer:
    """Like vLLM's --uds: bind the path as it is (an existing file fails, EADDRINUSE; no chmod, so the
    mode follows the umask), and leave the file behind at exit."""
    srv = UnixServer(path, BaseHTTPRequestHandler, bind_and_activate=False)
    try:
        srv.server_bind()
    except OSError as exc:
        srv.server_close()
        fail(f"cannot bind unix:{path}: [Errno {exc.errno}] {exc.strerror}")
    return srv


def address(srv) -> str:
    return f"unix:{srv.server_address}" if srv.socket.family == socket.AF_UNIX else \
        f"{srv.server_address[0]}:{srv.server_address[1]}"


def serve(servers: list, engine) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine.check_table()
    for srv in servers:
        srv.RequestHandlerClass = make_handler(engine)
        srv.server_activate()
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    log("serving on " + ", ".join(address(srv) for srv in servers))
    while not stop.wait(0.2):
        pass
    log("signal received, shutting down")
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    sys.stderr.flush()
    os._exit(0)


def exit_when_asked(name: str) -> None:
    """Exit 1 once $KIT_STANDIN_EXIT_DIR/NAME exists: a test makes one service of a running job die."""
    folder = os.environ.get("KIT_STANDIN_EXIT_DIR")
    if not folder:
        return
    mark = os.path.join(folder, name)

    def loop():
        while not os.path.exists(mark):
            time.sleep(0.2)
        log(f"stand-in: {name} exits, as {mark} asks")
        os._exit(1)

    threading.Thread(target=loop, daemon=True).start()
