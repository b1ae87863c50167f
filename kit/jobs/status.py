"""One job's status: Slurm's state (pending, running, finished and why), the files the job
writes into its record directory (endpoint.json; `failed` with the reason it stopped itself),
the engine's ``/health``, and a fine-tuning job's progress (kit.jobs.progress)."""

from __future__ import annotations

from dataclasses import dataclass

from kit import slurm
from kit.jobs.endpoint import endpoint_url, health
from kit.jobs.record import JobRecord


def job_state(record: JobRecord) -> slurm.JobState:
    """The job's state through the one watcher (kit.jobs.watch)."""
    from kit.jobs.watch import job_state as watched

    return watched(record)


@dataclass
class Status:
    record: JobRecord
    slurm: slurm.JobState
    url: str | None
    health: int | None
    training: dict | None = None  # a fine-tuning job's progress (kit.jobs.progress), else None

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
            "requeue": self.slurm.requeue,
            "url": self.url,
            "endpoint_state": ep.get("state"),
            "ready": self.ready,
            "failure": self.record.failure(),
            "model": self.record.data.get("model"),
            "engine": self.record.data.get("engine"),
            "site": self.record.data.get("site"),
            "log": str(self.record.log_path),
            **({"task": "finetune", "output_dir": self.record.data.get("output_dir"), "progress": self.training}
               if is_finetune(self.record) else {}),
        }


def statuses(records: list[JobRecord]) -> list[Status]:
    """The status of every record with a job id, from one round of Slurm calls (no /health)."""
    from kit.jobs.watch import job_states

    states = job_states(records)
    return [status(rec, check_health=False, state=states[str(rec.job_id)]) for rec in records if rec.job_id]


def is_finetune(record: JobRecord) -> bool:
    return record.data.get("task") == "finetune"


def status(record: JobRecord, check_health: bool = True, state: slurm.JobState | None = None) -> Status:
    state = state or job_state(record)
    if is_finetune(record):
        from kit.jobs.progress import progress as training

        return Status(record, state, None, None, training(record.data["output_dir"]))
    url = endpoint_url(record)
    alive = state.state.startswith("RUNNING")
    path = (record.endpoint() or {}).get("health") or "/health"
    code = health(url, path=path) if (check_health and url and alive) else None
    return Status(record, state, url, code)


def describe(st: Status) -> str:
    text = st.slurm.state
    if st.slurm.reason:
        text += f" ({st.slurm.reason})"
    if st.slurm.nodes and st.slurm.state.startswith("RUNNING"):
        text += f" on {st.slurm.nodes}"
    return text


def progress(st: Status) -> str:
    """What `kit wait` says about a job at each change."""
    if is_finetune(st.record):
        from kit.jobs.progress import describe as training

        return f"{describe(st)}: {training(st.training)}"
    if st.ready:
        return f"ready: {st.url}"
    if st.url:
        return f"{describe(st)}: engine starting at {st.url}"
    return describe(st)
