"""Resolve an image tag to its digest through the OCI distribution API (what `crane digest`
does). The container runtimes pull by tag but do not report the manifest digest, so
`kit images lock` asks the registry: HEAD /v2/REPO/manifests/TAG, with the anonymous bearer
token the registry's WWW-Authenticate header points to. A mirror can stand in for a registry
(KIT_REGISTRY_MIRRORS="ghcr.io=https://mirror.example,docker.io=...")."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from kit.errors import KitError

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def split_ref(ref: str) -> tuple[str, str, str]:
    """'ghcr.io/org/img:tag' -> (host, repository, tag); Docker Hub names get docker.io/library."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not tag:
        raise KitError(f"image reference {ref!r}: needs an explicit tag (name:tag)")
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        host, repo = name.split("/", 1)
    else:
        host, repo = "docker.io", name if "/" in name else f"library/{name}"
    return host, repo, tag


def endpoint(host: str) -> str:
    mirrors = dict(item.split("=", 1) for item in os.environ.get("KIT_REGISTRY_MIRRORS", "").split(",") if "=" in item)
    if host in mirrors:
        return mirrors[host].rstrip("/")
    return "https://registry-1.docker.io" if host == "docker.io" else f"https://{host}"


def _open(req, timeout):
    opener = urllib.request.build_opener()
    return opener.open(req, timeout=timeout)


def _token(challenge: str, timeout: float) -> str:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if not challenge.lower().startswith("bearer") or "realm" not in params:
        raise KitError(f"registry asks for authentication kit cannot do anonymously: {challenge}")
    query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
    with _open(urllib.request.Request(f"{params['realm']}?{query}"), timeout) as resp:
        data = json.loads(resp.read())
    return data.get("token") or data.get("access_token") or ""


def resolve_digest(ref: str, timeout: float = 15) -> str:
    host, repo, tag = split_ref(ref)
    url = f"{endpoint(host)}/v2/{repo}/manifests/{tag}"
    headers = {"Accept": ACCEPT}
    for attempt in range(2):
        req = urllib.request.Request(url, method="HEAD", headers=headers)
        try:
            with _open(req, timeout) as resp:
                digest = resp.headers.get("Docker-Content-Digest")
                if not digest or not re.match(r"^sha256:[0-9a-f]{64}$", digest):
                    raise KitError(f"{ref}: the registry sent no sha256 digest for it")
                return digest
        except urllib.error.HTTPError as e:
            if e.code == 401 and attempt == 0:
                headers["Authorization"] = f"Bearer {_token(e.headers.get('WWW-Authenticate', ''), timeout)}"
                continue
            if e.code == 404:
                raise KitError(f"{ref}: no such image or tag in the registry") from None
            raise KitError(f"{ref}: the registry answered {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise KitError(f"{ref}: cannot reach {endpoint(host)} ({reason}): run `kit images lock` where the "
                           f"registries are reachable") from None
    raise KitError(f"{ref}: the registry refused the anonymous token")
