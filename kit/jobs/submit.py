"""Submitting a JobSpec, with the guarantees every caller gets (the CLI is one of them):

- the job runs only the image that matches the lock (checked before anything is written);
- the record (script, plan, request, 0600 API key) is written before `sbatch`, and removed
  again only when `sbatch` surely queued nothing: after Ctrl-C or SIGTERM during `sbatch`, kit
  asks Slurm for a job of that name submitted from the record's directory, and keeps the record
  with its job id when there is one;
- the record says whether the job was submitted with --requeue (its watcher then knows that a
  preempted job will run again);
- secrets in the submitting environment never reach the job.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading

from kit import slurm
from kit.errors import KitError
from kit.fs import write_json
from kit.jobs.record import JobRecord, write_secret
from kit.jobs.spec import JobSpec

SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|CREDENTIAL)", re.IGNORECASE)


def submission_env() -> dict[str, str]:
    """sbatch exports the caller's environment into the job: leave secrets out of it."""
    return {k: v for k, v in os.environ.items() if not SECRET_ENV.search(k)}


def requeues(script: str) -> bool:
    """Whether the script's #SBATCH lines ask for --requeue (the last of --requeue/--no-requeue wins)."""
    flag = False
    for line in script.splitlines()[1:]:
        if not line.startswith("#"):
            break
        words = line.split()
        if words[:1] == ["#SBATCH"] and len(words) > 1 and words[1] in ("--requeue", "--no-requeue"):
            flag = words[1] == "--requeue"
    return flag


class Terminated(BaseException):
    """SIGTERM during submit, raised like KeyboardInterrupt so the record is settled first."""


@contextlib.contextmanager
def _sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def submit(job: JobSpec) -> JobRecord:
    """Check the image, write the record, sbatch; the record of a submitted job is never lost."""
    from kit.images.store import verified_image

    slurm.require("sbatch")  # before anything is written
    verified_image(job.site, job.record["image_name"], job.account)
    data = dict(job.record, requeue=requeues(job.script))
    with _sigterm_raises():
        job.job_dir.mkdir(parents=True, mode=0o700)  # the record is its owner's alone
        try:
            write_secret(job.job_dir / "api_key")
            (job.job_dir / "job.sbatch").write_text(job.script)
            for name, text in job.files.items():
                (job.job_dir / name).write_text(text)
            write_json(job.job_dir / "plan.json", job.plan)
            write_json(job.job_dir / "request.json", job.request)
            write_json(job.job_dir / "record.json", data)
        except BaseException:
            shutil.rmtree(job.job_dir, ignore_errors=True)  # nothing was submitted: nothing is left behind
            raise
        try:
            job_id = slurm.submit(str(job.job_dir / "job.sbatch"), cwd=str(job.job_dir), env=submission_env())
        except slurm.SubmitUncertain:
            raise  # sbatch may have queued it: keep the record the job needs
        except slurm.SubmitInterrupted as e:
            _settle_interrupted(job, data, e.job_id)
        except BaseException:
            shutil.rmtree(job.job_dir, ignore_errors=True)  # sbatch refused it: nothing half-submitted is left
            raise
        record = JobRecord(job.job_dir, dict(data, job_id=job_id))
        record.save()
    return record


def _settle_interrupted(job: JobSpec, data: dict, job_id: str | None) -> None:
    """Ctrl-C or SIGTERM while sbatch ran: keep the record of a queued job, with its id; remove
    it only when Slurm says that nothing was queued. Always raises (exit 130)."""
    if job_id is None:
        try:
            found = slurm.queued_jobs(job.name, str(job.job_dir))
        except KitError as e:
            raise KitError(f"interrupted during sbatch, and Slurm cannot say whether job {job.name} was queued "
                           f"({e}); its record is kept: {job.job_dir}", exit_code=130) from None
        job_id = found[0] if found else None
    if job_id is None:
        shutil.rmtree(job.job_dir, ignore_errors=True)
        raise KitError(f"interrupted: nothing was queued for {job.name}; its record is removed", exit_code=130)
    JobRecord(job.job_dir, dict(data, job_id=job_id)).save()
    raise KitError(f"interrupted, but sbatch had queued job {job_id} ({job.name}): its record is kept in "
                   f"{job.job_dir}; `kit stop {job_id}` cancels it", exit_code=130)
