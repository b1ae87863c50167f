"""Following a job once it is submitted: state, health, wait, logs, tunnel, stop.

The job's truth comes from two places: Slurm (pending, running, finished and why) and the
files the job writes into its record directory (endpoint.json with host and port, `failed`
with the reason it stopped itself). Health is the engine's own ``/health``.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass

from kit import slurm
from kit.errors import KitError
from kit.jobs import JobRecord

LOG_TAIL_LINES = 20
# Pending reasons that do not clear by waiting (Slurm's squeue(1) reason codes).
NEVER_STARTS = {"BadConstraints", "InvalidAccount", "InvalidQOS", "JobHeldAdmin", "JobHeldUser",
                "PartitionNodeLimit", "PartitionTimeLimit", "PartitionConfig", "AccountNotAllowed",
                "QOSNotAllowed"}


def endpoint_url(record: JobRecord) -> str | None:
    ep = record.endpoint()
    if not ep or not ep.get("port"):
        return None
    return f"http://{ep['host']}:{ep['port']}"


def health(url: str, timeout: float = 3.0) -> int | None:
    """HTTP status of GET url/health, or None when nothing answers (no proxy: it is a node)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/health", timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def log_tail(record: JobRecord, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with record.log_path.open(errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except OSError:
        return []


@dataclass
class Status:
    record: JobRecord
    slurm: slurm.JobState
    url: str | None
    health: int | None

    @property
    def ready(self) -> bool:
        """The engine answers /health and the job has seen it too (endpoint.json says ready)."""
        ep = self.record.endpoint() or {}
        return self.health == 200 and ep.get("state") == "ready"

    def as_dict(self) -> dict:
        ep = self.record.endpoint() or {}
        return {
            "name": self.record.name,
            "job_id": self.record.job_id,
            "state": self.slurm.state,
            "reason": self.slurm.reason,
            "nodes": self.slurm.nodes,
            "exit_code": self.slurm.exit_code,
            "state_source": self.slurm.source,
            "url": self.url,
            "endpoint_state": ep.get("state"),
            "ready": self.ready,
            "failure": self.record.failure(),
            "model": self.record.data.get("model"),
            "engine": self.record.data.get("engine"),
            "site": self.record.data.get("site"),
            "log": str(self.record.log_path),
        }


def status(record: JobRecord, check_health: bool = True) -> Status:
    state = slurm.job_state(record.job_id, record.data.get("accounting", False))
    url = endpoint_url(record)
    alive = state.state.startswith("RUNNING")
    code = health(url) if (check_health and url and alive) else None
    return Status(record, state, url, code)


def wait(record: JobRecord, timeout: float, on_change=None, interval: float = 0.5) -> Status:
    """Until /health answers 200. A job that ends, or stops itself, first is an error with the
    log tail and Slurm's reason; so is the timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        st = status(record)
        phase = (st.slurm.state, st.slurm.reason, bool(st.url), st.ready)
        if on_change and phase != last:
            on_change(st)
        last = phase
        if st.ready:
            return st
        failure = record.failure()
        if st.slurm.finished or failure or st.slurm.state == "UNKNOWN":
            raise JobDied(st, failure)
        if st.slurm.state == "PENDING" and (st.slurm.reason or "") in NEVER_STARTS:
            raise KitError(f"job {record.job_id} cannot start: Slurm says {st.slurm.reason}; "
                           f"`kit stop {record.job_id}` and fix the request", exit_code=4)
        if time.monotonic() >= deadline:
            raise KitError(f"job {record.job_id} not ready after {timeout:g} s (Slurm: {describe(st)}); "
                           f"`kit logs {record.job_id}` shows its log", exit_code=3)
        time.sleep(interval)


class JobDied(KitError):
    def __init__(self, st: Status, failure: str | None):
        reason = failure or st.slurm.reason or f"exit code {st.slurm.exit_code}"
        super().__init__(f"job {st.record.job_id} ({st.record.name}) ended before it was ready: "
                         f"{st.slurm.state}, {reason}", exit_code=4)
        self.status = st


def describe(st: Status) -> str:
    text = st.slurm.state
    if st.slurm.reason:
        text += f" ({st.slurm.reason})"
    if st.slurm.nodes and st.slurm.state.startswith("RUNNING"):
        text += f" on {st.slurm.nodes}"
    return text


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


def stop(record: JobRecord, timeout: float = 60, interval: float = 0.5) -> slurm.JobState:
    """scancel, then wait until Slurm reports the job finished (so nothing keeps running)."""
    state = slurm.job_state(record.job_id, record.data.get("accounting", False))
    if state.finished or state.state == "UNKNOWN":  # Slurm forgets a job only after it ended
        return state
    slurm.cancel(record.job_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = slurm.job_state(record.job_id, record.data.get("accounting", False))
        if state.finished or state.state == "UNKNOWN":
            return state
        time.sleep(interval)
    raise KitError(f"job {record.job_id} still {state.state} {timeout:g} s after scancel", exit_code=3)
