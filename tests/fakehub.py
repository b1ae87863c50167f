"""A stand-in for the Hugging Face Hub's file API, serving model repos from a local directory.

It plays only the routes huggingface_hub's snapshot_download uses (repo info, then HEAD and
GET of each file under /resolve/), so kit's real pull code and the real client run against
it on 127.0.0.1. It counts file downloads, so tests can see that a second pull fetches nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from httpstub import LocalHTTPStub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(LocalHTTPStub):
    def __init__(self, root: Path):
        super().__init__()
        self.root = root  # root/org/name/<files>
        self.downloads: list[str] = []
        self.gated: set[str] = set()

    def files(self, repo: str) -> list[Path]:
        base = self.root / repo
        return sorted(p for p in base.rglob("*") if p.is_file())

    def route(self, req: BaseHTTPRequestHandler) -> None:
        head = req.command == "HEAD"
        path = req.path.split("?")[0]
        info = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
        tree = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)$", path)
        info = info or tree
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        repo = (info or resolve).group(1) if (info or resolve) else None
        if repo is None or not (self.root / repo).is_dir():
            return self.reply(req, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}, head)
        if repo in self.gated:
            return self.reply(req, 403, {"error": "gated"}, {"X-Error-Code": "GatedRepo"}, head)
        base = self.root / repo
        if tree:
            listing = [{"type": "file", "path": str(p.relative_to(base)), "size": p.stat().st_size,
                        "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in self.files(repo)]
            return self.reply(req, 200, listing, {}, head)
        if info:
            siblings = [{"rfilename": str(p.relative_to(base))} for p in self.files(repo)]
            return self.reply(req, 200, {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings,
                                         "private": False, "gated": False}, {}, head)
        file = base / resolve.group(3)
        if not file.is_file():
            return self.reply(req, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head)
        data = file.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        ranged = re.match(r"bytes=(\d+)-(\d*)", req.headers.get("Range", ""))
        if ranged:  # safetensors metadata reads only the header, with Range requests
            start, end = int(ranged.group(1)), int(ranged.group(2) or len(data) - 1)
            part = data[start:end + 1]
            headers.update({"Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(data)}",
                            "Content-Length": str(len(part))})
            return self.send(req, 206, headers, b"" if head else part)
        headers["Content-Length"] = str(len(data))
        if not head:
            self.downloads.append(f"{repo}/{resolve.group(3)}")
        self.send(req, 200, headers, b"" if head else data)

    def reply(self, req, status: int, body, headers: dict, head: bool) -> None:
        data = json.dumps(body).encode()
        self.send(req, status, {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers},
                  b"" if head else data)
