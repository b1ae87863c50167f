"""Submitting a JobSpec, with the guarantees every caller gets (the CLI is one of them):

- the job runs only the image that matches the lock (checked before anything is written);
- the record (script, plan, request, 0600 API key) is written before `sbatch`, and removed
  again only when `sbatch` surely queued nothing;
- secrets in the submitting environment never reach the job.
"""

from __future__ import annotations

import os
import re
import shutil

from kit import slurm
from kit.fs import write_json
from kit.jobs.record import JobRecord, write_secret
from kit.jobs.spec import JobSpec

SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|CREDENTIAL)", re.IGNORECASE)


def submission_env() -> dict[str, str]:
    """sbatch exports the caller's environment into the job: leave secrets out of it."""
    return {k: v for k, v in os.environ.items() if not SECRET_ENV.search(k)}


def submit(job: JobSpec) -> JobRecord:
    """Check the image, write the record, sbatch; the record of a submitted job is never lost."""
    from kit.images.store import verified_image

    slurm.require("sbatch")  # before anything is written
    verified_image(job.site, job.record["image_name"], job.account)
    job.job_dir.mkdir(parents=True, mode=0o700)  # the record is its owner's alone
    try:
        write_secret(job.job_dir / "api_key")
        (job.job_dir / "job.sbatch").write_text(job.script)
        for name, text in job.files.items():
            (job.job_dir / name).write_text(text)
        write_json(job.job_dir / "plan.json", job.plan)
        write_json(job.job_dir / "request.json", job.request)
        write_json(job.job_dir / "record.json", job.record)
        job_id = slurm.submit(str(job.job_dir / "job.sbatch"), cwd=str(job.job_dir), env=submission_env())
    except slurm.SubmitUncertain:
        raise  # sbatch may have queued it: keep the record the job needs
    except BaseException:
        shutil.rmtree(job.job_dir, ignore_errors=True)  # nothing half-submitted is left behind
        raise
    record = JobRecord(job.job_dir, dict(job.record, job_id=job_id))
    record.save()
    return record
