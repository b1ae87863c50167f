"""Watching a job: the one loop that polls Slurm, and what waits on it (ready, stopped, the
log's end)."""

from __future__ import annotations

import time
from typing import Callable, Iterator

from kit import slurm
from kit.errors import KitError
from kit.jobs.record import JobRecord
from kit.jobs.status import Status, describe, job_state, status

# Pending reasons that do not clear by waiting (Slurm's squeue(1) reason codes).
NEVER_STARTS = {"BadConstraints", "InvalidAccount", "InvalidQOS", "JobHeldAdmin", "JobHeldUser",
                "PartitionNodeLimit", "PartitionTimeLimit", "PartitionConfig", "AccountNotAllowed",
                "QOSNotAllowed"}


def watch(record: JobRecord, *, interval: float = 0.5, timeout: float | None = None) -> Iterator[slurm.JobState]:
    """The job's Slurm state now, then every ``interval`` s, until the caller stops or
    ``timeout`` s have passed (the iterator then ends)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        yield job_state(record)
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(interval)


class JobDied(KitError):
    def __init__(self, st: Status, failure: str | None):
        reason = failure or st.slurm.reason or f"exit code {st.slurm.exit_code}"
        super().__init__(f"job {st.record.job_id} ({st.record.name}) ended before it was ready: "
                         f"{st.slurm.state}, {reason}", exit_code=4)
        self.status = st


def wait(record: JobRecord, timeout: float, on_change: Callable[[Status], None] | None = None,
         interval: float = 0.5) -> Status:
    """Until /health answers 200. A job that ends, or stops itself, first is an error with
    Slurm's reason; so is a pending reason that never clears, and the timeout."""
    last = st = None
    for state in watch(record, interval=interval, timeout=timeout):
        st = status(record, state=state)
        phase = (st.slurm.state, st.slurm.reason, bool(st.url), st.ready)
        if on_change and phase != last:
            on_change(st)
        last = phase
        if st.ready:
            return st
        failure = record.failure()
        if st.slurm.ended or failure:
            raise JobDied(st, failure)
        if st.slurm.state == "PENDING" and (st.slurm.reason or "") in NEVER_STARTS:
            raise KitError(f"job {record.job_id} cannot start: Slurm says {st.slurm.reason}; "
                           f"`kit stop {record.job_id}` and fix the request", exit_code=4)
    raise KitError(f"job {record.job_id} not ready after {timeout:g} s (Slurm: {describe(st)}); "
                   f"`kit logs {record.job_id}` shows its log", exit_code=3)


def stop(record: JobRecord, timeout: float = 60, interval: float = 0.5) -> slurm.JobState:
    """scancel, then wait until Slurm reports the job finished (so nothing keeps running)."""
    state = job_state(record)
    if state.ended:
        return state
    slurm.cancel(record.job_id)
    for state in watch(record, interval=interval, timeout=timeout):
        if state.ended:
            return state
    raise KitError(f"job {record.job_id} still {state.state} {timeout:g} s after scancel", exit_code=3)
