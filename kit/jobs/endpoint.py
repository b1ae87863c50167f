"""Where a running job answers: the endpoint file the job writes (host, port), the engine's
own ``/health``, and the SSH tunnel to it from a laptop."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from kit.errors import KitError
from kit.jobs.record import JobRecord


def endpoint_url(record: JobRecord) -> str | None:
    ep = record.endpoint()
    if not ep or not ep.get("port"):
        return None
    return f"http://{ep['host']}:{ep['port']}"


def health(url: str, timeout: float = 3.0, path: str = "/health") -> int | None:
    """HTTP status of GET url/health (or the endpoint's own ``path``: a RAG stack of Weaviate alone
    answers on its readiness route), or None when nothing answers (no proxy: it is a node)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}{path}", timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def tunnel_command(record: JobRecord) -> str:
    ep = record.endpoint()
    if not ep:
        raise KitError(f"job {record.job_id} has no endpoint yet (still queued or starting): try `kit wait {record.job_id}`")
    template = record.data["tunnel"]
    try:
        return template.format(port=ep["port"], node=ep.get("node") or ep["host"], host=ep["host"],
                               user=os.environ.get("USER", "$USER"), login_host=record.data["login_host"])
    except (KeyError, IndexError) as e:
        raise KitError(f"network.tunnel of site {record.data['site']}: unknown placeholder {e} "
                       f"(allowed: port, node, host, user, login_host)") from None
