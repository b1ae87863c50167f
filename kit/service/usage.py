"""Usage per lab from the guard's files (``usage/GEN-JOBID.jsonl``, one line per request:
time, lab, status, prompt and generated tokens, error), per lab and generation."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone

from kit.errors import KitError
from kit.service.registry import Service

FILE = re.compile(r"^(\d+)-(\d+)\.jsonl$")


def entries(service: Service, since: float | None = None):
    """(generation, job id, line) for every counted request, oldest file first."""
    usage = service.dir / "usage"
    try:
        files = sorted((f for f in usage.iterdir() if FILE.match(f.name)), key=lambda f: int(FILE.match(f.name)[1]))
    except FileNotFoundError:
        return
    except PermissionError:
        raise KitError(f"service {service.name}: cannot read {usage} (only its staff can)") from None
    for f in files:
        gen, job = FILE.match(f.name).groups()
        with f.open() as fh:
            for raw in fh:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a line being written
                if since is None or line.get("t", 0) >= since:
                    yield int(gen), job, line


def parse_since(text: str | None) -> float | None:
    """--since: a duration back from now (30m, 24h, 7d) or a date/time (2025-01-31, 2025-01-31T12:00)."""
    if not text:
        return None
    m = re.match(r"^(\d+)([smhd])$", text)
    if m:
        return time.time() - int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise KitError(f"--since {text}: use a duration (30m, 24h, 7d) or a date (2025-01-31[T12:00])") from None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.timestamp()


def report(service: Service, since: float | None = None) -> list[dict]:
    """One row per lab and generation: requests, prompt and generated tokens, errors, and the
    requests whose answer carried no usage (streams without stream_options.include_usage)."""
    rows: dict[tuple, dict] = {}
    for gen, job, line in entries(service, since):
        key = (line.get("lab"), gen)
        row = rows.setdefault(key, {"lab": key[0], "generation": gen, "job_id": job, "requests": 0,
                                    "prompt_tokens": 0, "generated_tokens": 0, "errors": 0, "without_usage": 0})
        row["requests"] += 1
        row["errors"] += bool(line.get("error"))
        if line.get("prompt") is None and line.get("completion") is None:
            row["without_usage"] += 1
        row["prompt_tokens"] += line.get("prompt") or 0
        row["generated_tokens"] += line.get("completion") or 0
    return [rows[k] for k in sorted(rows, key=lambda k: (str(k[0]), k[1]))]


def last_use(service: Service) -> dict[str, str]:
    out = {}
    try:
        for _, _, line in entries(service):
            out[line.get("lab")] = line.get("t", 0)
    except KitError:
        return {}
    return {lab: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") for lab, t in out.items()}


def requests_since(service: Service, seconds: float) -> int | None:
    try:
        return sum(1 for _ in entries(service, time.time() - seconds))
    except KitError:
        return None
