"""kit's key guard: the one door to a served model.

It runs inside the job, in the engine's own image (standard library only, any Python >= 3.8),
listens on the job's public port and forwards to the engine, which listens only on the node
itself (loopback, or a Unix socket in a private directory). Every request but ``GET /health``
must carry ``Authorization: Bearer <key>`` with a key from the job's 0600 key file, compared
exactly and in constant time; the engine then gets the job's internal key instead, so the
engine's own check (vLLM: only paths under /v1; TGI: only the generation routes, case
-insensitively) is a second layer, never the only one.

One request per connection: the guard reads the request head, checks the key, forwards the
head and exactly the body it announced (Content-Length or chunked), then relays the response
(streamed, as the engine sends it) and closes. Nothing else the client sends reaches the
engine, so a second request on the same connection is never forwarded unchecked.

A shared service's guard also takes ``--key-hashes FILE`` (lab keys as ``LAB sha256hex``
lines, reread live: keys.py) and ``--usage-file FILE`` (one JSON line per request and key:
usage.py). On SIGTERM it stops accepting, lets requests in flight finish (up to ``--drain``
seconds), then exits.

    python proxy.py --listen 0.0.0.0:PORT --upstream 127.0.0.1:PORT|unix:PATH \\
        --key-file FILE [--key-hashes FILE] [--upstream-key-file FILE] [--usage-file FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

if __package__:
    from kit.guard.keys import KeyFile, Keys
    from kit.guard.usage import Meter, UsageLog
else:  # run as a script, as in the job (guard.py beside keys.py and usage.py)
    from keys import KeyFile, Keys
    from usage import Meter, UsageLog

MAX_HEAD = 64 * 1024
HEAD_TIMEOUT_S = 30
OPEN_PATHS = ("/health",)  # GET/HEAD only: what the job, `kit wait` and load balancers poll
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
              "upgrade", "expect", "authorization"}


def response(status: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode() + body


UNAUTHORIZED = response("401 Unauthorized", b'{"error":"Unauthorized"}', 'WWW-Authenticate: Bearer\r\n')
BAD_REQUEST = response("400 Bad Request", b'{"error":"Bad request"}')
BAD_GATEWAY = response("502 Bad Gateway", b'{"error":"The engine is not answering"}')


class BadRequest(Exception):
    pass


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, bytes]]]:
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise BadRequest from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not target.startswith("/"):
        raise BadRequest
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise BadRequest
        headers.append((name.decode("latin-1").lower(), value.strip()))
    return method, target, version, headers


def is_open(method: str, target: str) -> bool:
    path = target.split("?", 1)[0]
    return method in ("GET", "HEAD") and path in OPEN_PATHS


def header(headers: list[tuple[str, bytes]], name: str) -> bytes | None:
    values = [v for k, v in headers if k == name]
    if len(values) > 1:
        raise BadRequest  # two Authorization or Content-Length headers: refuse, never guess
    return values[0] if values else None


def framing(headers: list[tuple[str, bytes]]) -> tuple[str, int]:
    """("chunked", 0) or ("length", N), checked before anything is forwarded: a head that
    announces its body two ways, or in a way the guard does not know, is refused."""
    encoding = (header(headers, "transfer-encoding") or b"").lower()
    length = header(headers, "content-length")
    if encoding:
        if encoding != b"chunked" or length is not None:
            raise BadRequest
        return "chunked", 0
    if length is None:
        return "length", 0
    if not length.isdigit():
        raise BadRequest
    return "length", int(length)


async def copy_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: tuple[str, int]) -> None:
    """Exactly the body the head announced, no byte more."""
    kind, remaining = body
    if kind == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            writer.write(size_line)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest from None
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await reader.readuntil(b"\r\n")
                    writer.write(line)
                    if line == b"\r\n":
                        return
            writer.write(await reader.readexactly(size + 2))
            await writer.drain()
    else:
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 16))
            if not chunk:
                raise BadRequest
            writer.write(chunk)
            remaining -= len(chunk)
            await writer.drain()


class Guard:
    def __init__(self, upstream: str, keys: Keys, upstream_key: KeyFile | None, usage: UsageLog | None = None):
        self.upstream = upstream
        self.keys = keys
        self.upstream_key = upstream_key
        self.usage = usage or UsageLog(None)
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def connect_upstream(self):
        if self.upstream.startswith("unix:"):
            return await asyncio.open_unix_connection(self.upstream[len("unix:"):])
        host, _, port = self.upstream.rpartition(":")
        return await asyncio.open_connection(host, int(port))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        self.idle.clear()
        try:
            await self.serve_one(reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError, BadRequest):
            pass
        finally:
            writer.close()
            self.active -= 1
            if not self.active:
                self.idle.set()

    async def serve_one(self, reader, writer) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            return
        try:
            method, target, version, headers = parse_head(head[:-4])
            who = None if is_open(method, target) else self.keys.who(header(headers, "authorization"))
            authorized = is_open(method, target) or who is not None
            body = framing(headers)
            expect = (header(headers, "expect") or b"").lower()
        except BadRequest:
            writer.write(BAD_REQUEST)
            await writer.drain()
            return
        if not authorized:
            writer.write(UNAUTHORIZED)
            await writer.drain()
            return
        try:
            up_reader, up_writer = await self.connect_upstream()
        except OSError:
            writer.write(BAD_GATEWAY)
            await writer.drain()
            return
        try:
            if expect == b"100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            lines = [f"{method} {target} HTTP/1.1".encode()]
            lines += [name.encode() + b": " + value for name, value in headers if name not in HOP_BY_HOP]
            if self.upstream_key is not None and self.upstream_key.current():
                lines.append(b"Authorization: Bearer " + self.upstream_key.current()[0][1])
            lines.append(b"Connection: close")
            up_writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
            await copy_body(reader, up_writer, body)
            await up_writer.drain()
            meter = Meter() if who is not None else None
            try:
                while True:  # the response, streamed as it comes (SSE included)
                    chunk = await up_reader.read(1 << 16)
                    if not chunk:
                        break
                    if meter:
                        meter.feed(chunk)
                    writer.write(chunk)
                    await writer.drain()
            finally:
                if meter:
                    self.usage.record(who, method, target, *meter.result())
        finally:
            up_writer.close()


async def main_async(args) -> None:
    files = [KeyFile(args.key_file, label=args.key_label)]
    if args.key_hashes:
        files.append(KeyFile(args.key_hashes, hashed=True))
    upstream_key = KeyFile(args.upstream_key_file) if args.upstream_key_file else None
    guard = Guard(args.upstream, Keys(files), upstream_key, UsageLog(args.usage_file))
    host, _, port = args.listen.rpartition(":")
    server = await asyncio.start_server(guard.handle, host or "0.0.0.0", int(port), limit=MAX_HEAD,
                                        reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"kit-guard: listening on {args.listen}, forwarding to {args.upstream}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
        server.close()  # no new connections; requests in flight finish (up to --drain s)
        try:
            await asyncio.wait_for(guard.idle.wait(), args.drain)
        except asyncio.TimeoutError:
            print(f"kit-guard: {guard.active} requests still open after {args.drain:g} s", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="kit-guard", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve on")
    parser.add_argument("--upstream", required=True, help="the engine: HOST:PORT or unix:PATH")
    parser.add_argument("--key-file", required=True, help="accepted keys, one per line")
    parser.add_argument("--key-label", default="owner", help="the name usage counts --key-file's keys under")
    parser.add_argument("--key-hashes", help="more accepted keys as 'LABEL sha256hex' lines (reread when changed)")
    parser.add_argument("--upstream-key-file", help="the engine's own key, sent on every forwarded request")
    parser.add_argument("--usage-file", help="append one JSON line per authorized request (key label, status, tokens)")
    parser.add_argument("--drain", type=float, default=20, help="seconds requests in flight may take after SIGTERM")
    args = parser.parse_args(argv)
    try:
        asyncio.run(main_async(args))
    except OSError as e:
        print(f"kit-guard: error: cannot listen on {args.listen}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
