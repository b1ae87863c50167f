"""Watching jobs: the one place that asks Slurm for job state, and what waits on it (ready,
stopped, the log's end).

One ``Watcher`` per process (``WATCHER``) answers for every job it has been asked about, all at
once: one `squeue` call for all of them; for the jobs squeue no longer lists, one `sacct` call
where the site has accounting, then `scontrol` per job as the last resort (it says whether Slurm
has forgotten the job). Answers are cached: a final state for good (also in the job's record, so
no later command asks again), a live one for the current poll delay. The delay starts at
POLL_MIN_S, grows by POLL_GROWTH while nothing changes, up to POLL_MAX_S, and falls back to
POLL_MIN_S at every change. The loops (`wait`, `stop`, following a log) tick every TICK_S to
look at what costs Slurm nothing (the job's files, /health), so `kit wait` sees a ready engine
within a tick whatever the Slurm delay; and when the job writes its endpoint file (it started,
got ready, stopped) `kit wait` asks Slurm at once.

A job that will run again is not finished: REQUEUED, REQUEUE_HOLD, REQUEUE_FED, SPECIAL_EXIT,
and PREEMPTED or NODE_FAIL for a job submitted with --requeue (``requeue`` in its record).

`kit wait` waits for what the job is for: a serving job until its engine answers /health
(``wait``), a fine-tuning job until its trainer has written summary.json (``wait_trained``):
"ready" means nothing for training, and a requeued fine-tuning job is still on its way.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Iterator

from kit import slurm
from kit.errors import KitError
from kit.jobs.record import JobRecord
from kit.jobs.status import Status, describe, status

POLL_MIN_S = 0.5
POLL_MAX_S = 5.0
POLL_GROWTH = 1.5
TICK_S = 0.5

# Pending reasons that do not clear by waiting (Slurm's squeue(1) reason codes).
NEVER_STARTS = {"BadConstraints", "InvalidAccount", "InvalidQOS", "JobHeldAdmin", "JobHeldUser",
                "PartitionNodeLimit", "PartitionTimeLimit", "PartitionConfig", "AccountNotAllowed",
                "QOSNotAllowed"}


class Watcher:
    """Slurm's state of every job asked about in this process, from one round of calls."""

    def __init__(self, min_delay: float = POLL_MIN_S, max_delay: float = POLL_MAX_S, growth: float = POLL_GROWTH):
        self.min_delay, self.max_delay, self.growth = min_delay, max_delay, growth
        self.delay = min_delay
        self._records: dict[str, JobRecord] = {}
        self._states: dict[str, slurm.JobState] = {}
        self._asked_at = float("-inf")

    def states(self, records: Iterable[JobRecord], *, fresh: bool = False) -> dict[str, slurm.JobState]:
        """{job id: state} for the records that have a job id. Slurm is asked (about all watched
        jobs) when a record is new here, when ``fresh``, or when the cache is older than the
        delay; final states are never asked again."""
        records = [r for r in records if r.job_id]
        new = False
        for rec in records:
            job_id = str(rec.job_id)
            if job_id not in self._records:
                self._records[job_id] = rec
                final = rec.data.get("slurm_final")
                if isinstance(final, dict):
                    self._states[job_id] = slurm.JobState(**final)
                else:
                    new = True
        if new or fresh or time.monotonic() - self._asked_at >= self.delay:
            self.refresh()
        return {str(r.job_id): self._states[str(r.job_id)] for r in records}

    def state(self, record: JobRecord, *, fresh: bool = False) -> slurm.JobState:
        return self.states([record], fresh=fresh)[str(record.job_id)]

    def expire(self) -> None:
        """Ask Slurm at the next look (after kit changed the job, e.g. by scancel)."""
        self._asked_at = float("-inf")
        self.delay = self.min_delay

    def refresh(self) -> None:
        live = [job_id for job_id in self._records if not self._is_final(job_id)]
        self._asked_at = time.monotonic()
        if not live:
            return
        found = slurm.queue_states(live)
        missing = [job_id for job_id in live if job_id not in found]
        with_accounting = [job_id for job_id in missing if self._records[job_id].data.get("accounting")]
        if with_accounting:
            found.update(slurm.accounting_states(with_accounting))
        for job_id in missing:
            if job_id not in found:
                found[job_id] = slurm.job_state(job_id)
        changed = False
        for job_id, st in found.items():
            record = self._records[job_id]
            st.requeue = bool(record.data.get("requeue"))
            old = self._states.get(job_id)
            changed |= old is None or (old.state, old.reason, old.nodes) != (st.state, st.reason, st.nodes)
            self._states[job_id] = st
            if st.ended:
                _keep_final(record, st)
        self.delay = self.min_delay if changed else min(self.delay * self.growth, self.max_delay)

    def _is_final(self, job_id: str) -> bool:
        st = self._states.get(job_id)
        return st is not None and st.ended


def _keep_final(record: JobRecord, st: slurm.JobState) -> None:
    """Write a final state into the record once, so that no later command asks Slurm about it."""
    if record.data.get("slurm_final") is not None:
        return
    record.data["slurm_final"] = asdict(st)
    try:
        record.save()
    except KitError:  # save's one-line error for an unwritable record (someone else's, read-only)
        pass  # it is asked about again next time


WATCHER = Watcher()


def job_state(record: JobRecord) -> slurm.JobState:
    """The job's state, as the process's watcher knows it now (asking Slurm when due)."""
    return WATCHER.state(record)


def job_states(records: Iterable[JobRecord]) -> dict[str, slurm.JobState]:
    """The state of every record's job, from one round of Slurm calls."""
    return WATCHER.states(records)


def mtimes(*paths: Path) -> tuple:
    """Each file's modification time (None when it is not there): what changes when a job writes."""
    stamps = []
    for path in paths:
        try:
            stamps.append(path.stat().st_mtime_ns)
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def job_files(record: JobRecord) -> tuple:
    """What the job itself last wrote into its record (endpoint.json, `failed`): when it changes,
    the job has moved on (started, got ready, stopped), so Slurm is worth asking at once."""
    return mtimes(record.dir / "endpoint.json", record.dir / "failed")


def watch(record: JobRecord, *, interval: float = TICK_S, timeout: float | None = None,
          files: Callable[[JobRecord], object] | None = None) -> Iterator[slurm.JobState]:
    """The job's Slurm state now, then every ``interval`` s (asked of Slurm only as the watcher's
    delay allows, or at once when ``files(record)`` changed), until the caller stops or
    ``timeout`` s have passed (the iterator then ends)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = files(record) if files else None
    while True:
        if files:
            now = files(record)
            if now != seen:
                WATCHER.expire()
            seen = now
        yield job_state(record)
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(interval)


class JobDied(KitError):
    def __init__(self, st: Status, failure: str | None, goal: str = "it was ready"):
        reason = failure or st.slurm.reason or f"exit code {st.slurm.exit_code}"
        super().__init__(f"job {st.record.job_id} ({st.record.name}) ended before {goal}: "
                         f"{st.slurm.state}, {reason}", exit_code=4)
        self.status = st


def wait_for(record: JobRecord, timeout: float, on_change: Callable[[Status], None] | None = None,
             interval: float = TICK_S) -> Status:
    """`kit wait`: a serving job until it is ready, a fine-tuning job until it has finished."""
    from kit.jobs.status import is_finetune

    return (wait_trained if is_finetune(record) else wait)(record, timeout, on_change=on_change, interval=interval)


def training_files(record: JobRecord) -> tuple:
    """What a fine-tuning job last wrote: `failed` in its record; run.json (a start or restart) and
    summary.json (the end) in its output directory. A change is worth asking Slurm about at once."""
    out = Path(record.data.get("output_dir") or "")
    return mtimes(record.dir / "failed", out / "run.json", out / "summary.json")


def wait_trained(record: JobRecord, timeout: float, on_change: Callable[[Status], None] | None = None,
                 interval: float = TICK_S) -> Status:
    """Until the trainer has written summary.json (the run finished). A job that ends, or stops
    itself, first is an error with Slurm's reason; a requeued job has not ended: it is waited for."""
    last = st = None
    for state in watch(record, interval=interval, timeout=timeout, files=training_files):
        st = status(record, state=state)
        p = st.training or {}
        phase = (st.slurm.state, st.slurm.reason, p.get("step"), p.get("finished"))
        if on_change and phase != last:
            on_change(st)
        last = phase
        if p.get("finished"):
            return st
        failure = record.failure()
        if st.slurm.ended or failure:
            raise JobDied(st, failure, "training finished")
        if st.slurm.state == "PENDING" and (st.slurm.reason or "") in NEVER_STARTS:
            raise KitError(f"job {record.job_id} cannot start: Slurm says {st.slurm.reason}; "
                           f"`kit stop {record.job_id}` and fix the request", exit_code=4)
    raise KitError(f"job {record.job_id} has not finished after {timeout:g} s (Slurm: {describe(st)}); "
                   f"`kit status {record.job_id}` shows its progress", exit_code=3)


def wait(record: JobRecord, timeout: float, on_change: Callable[[Status], None] | None = None,
         interval: float = TICK_S) -> Status:
    """Until /health answers 200. A job that ends, or stops itself, first is an error with
    Slurm's reason; so is a pending reason that never clears, and the timeout. A requeued job
    has not ended: it is waited for."""
    last = st = None
    for state in watch(record, interval=interval, timeout=timeout, files=job_files):
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


ALIVE = {"PENDING", "RUNNING", "SUSPENDED", "CONFIGURING", "RESIZING"}


def stop(record: JobRecord, timeout: float = 60, interval: float = TICK_S) -> slurm.JobState:
    """scancel, then wait until Slurm reports the job ended for good (so nothing keeps running,
    and nothing runs again: a job Slurm requeued after all is cancelled again)."""
    if record.data.get("service"):
        raise KitError(f"{record.name} is a shared service: `kit service down {record.name}` stops it and "
                       f"its successors")
    state = WATCHER.state(record, fresh=True)
    if state.ended:
        return state
    slurm.cancel(record.job_id)
    WATCHER.expire()
    for state in watch(record, interval=interval, timeout=timeout):
        if state.ended:
            return state
        if state.state.split()[0] in ALIVE:  # requeued rather than cancelled: cancel again
            slurm.cancel(record.job_id)
            WATCHER.expire()
    again = "; Slurm may still run it again (it was submitted with --requeue)" if state.runs_again else ""
    raise KitError(f"job {record.job_id} still {state.state} {timeout:g} s after scancel{again}", exit_code=3)
