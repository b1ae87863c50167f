"""A stand-in for an OCI registry's distribution API on 127.0.0.1: manifests by tag answer with a
Docker-Content-Digest header, behind the anonymous bearer-token flow that ghcr.io and Docker
Hub use. kit's real digest resolution runs against it (KIT_REGISTRY_MIRRORS points hosts here)."""

from __future__ import annotations

import hashlib
import json
import re

from httpstub import LocalHTTPStub

TOKEN = "anonymous-pull-token"


class FakeRegistry(LocalHTTPStub):
    def __init__(self, tags: dict[str, str]):
        """tags: 'repository:tag' -> manifest text (its sha256 is the digest)."""
        super().__init__()
        self.tags = tags
        self.requests: list[str] = []

    def digest(self, ref: str) -> str:
        return "sha256:" + hashlib.sha256(self.tags[ref].encode()).hexdigest()

    def route(self, req) -> None:
        self.requests.append(f"{req.command} {req.path}")
        if req.path.startswith("/token"):
            body = json.dumps({"token": TOKEN}).encode()
            return self.send(req, 200, {"Content-Type": "application/json"}, body)
        m = re.match(r"^/v2/(.+)/manifests/([^/]+)$", req.path)
        if not m:
            return self.send(req, 404, {}, b"")
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            challenge = f'Bearer realm="{self.url}/token",service="fake",scope="repository:{m.group(1)}:pull"'
            return self.send(req, 401, {"WWW-Authenticate": challenge}, b"")
        ref = f"{m.group(1)}:{m.group(2)}"
        if ref not in self.tags:
            return self.send(req, 404, {}, b"")
        body = self.tags[ref].encode()
        headers = {"Docker-Content-Digest": self.digest(ref),
                   "Content-Type": "application/vnd.oci.image.index.v1+json"}
        self.send(req, 200, headers, b"" if req.command == "HEAD" else body)
