"""Job records: one directory per kit job under the state dir (``STATE/jobs/NAME/``).

A record holds the rendered script, the plan, the request, the image, the endpoint file the
job writes, its log, and the 0600 API key file. JOB on the command line is a Slurm job id or
a kit job name.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
from kit.fs import writable_dir, write_json


def state_root(site=None) -> Path:
    """Where records live: ``jobs/`` under the site's state dir (KIT_STATE_DIR overrides it), else
    under KIT_STATE_DIR or ~/.kit."""
    from kit.sites.paths import state_dir

    return state_dir(site) / "jobs"


def ensure_writable(root: Path) -> None:
    writable_dir(root, "state dir", "set paths.state_dir or KIT_STATE_DIR")


@dataclass
class JobRecord:
    dir: Path
    data: dict

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def job_id(self) -> str | None:
        return self.data.get("job_id")

    @property
    def log_path(self) -> Path:
        return self.dir / f"slurm-{self.job_id}.out"

    @property
    def key_file(self) -> Path:
        return self.dir / "api_key"

    def endpoint(self) -> dict | None:
        try:
            return json.loads((self.dir / "endpoint.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def failure(self) -> str | None:
        try:
            return (self.dir / "failed").read_text().strip() or None
        except OSError:
            return None

    def api_key(self) -> str:
        try:
            return self.key_file.read_text().strip()
        except OSError as e:
            raise KitError(f"{self.key_file}: cannot read the job's API key ({e.strerror})") from None

    def save(self) -> None:
        write_json(self.dir / "record.json", self.data)


def write_secret(path: Path) -> None:
    """A new random API key in a file only the owner can read (created 0600, never rewritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


def records(root: Path) -> list[JobRecord]:
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            try:
                out.append(JobRecord(d, json.loads((d / "record.json").read_text())))
            except (OSError, json.JSONDecodeError):
                continue
    return out


def find(root: Path, ref: str) -> JobRecord:
    """A record by kit job name or Slurm job id, else a KitError saying which it is not."""
    for rec in records(root):
        if rec.name == ref or (rec.job_id is not None and str(rec.job_id) == ref):
            return rec
    if ref.isdigit():
        from kit import slurm

        known = slurm.job_exists(ref)
        if known:
            raise KitError(f"job {ref} is not a kit job (no record under {root}); kit manages only the jobs it started")
        raise KitError(f"unknown job {ref}: no kit record under {root} and Slurm does not know it")
    raise KitError(f"unknown job {ref!r}: no kit job of that name under {root} (see `kit jobs`)")


def lookup(ref: str, site: str | None = None) -> JobRecord:
    """JOB as the commands take it (a Slurm job id or a kit job name), in the state dir of --site
    (or KIT_SITE), else the default state dir; failing that, the name of a shared service in the
    site's services directory (its current generation, resolved now)."""
    from kit.sites import load_site_if_given

    site_obj = load_site_if_given(site)
    try:
        return find(state_root(site_obj), ref)
    except KitError:
        record = service_record(ref, site_obj)
        if record is None:
            raise
        return record


def service_record(name: str, site) -> JobRecord | None:
    """The shared service NAME as a record, or None when the site has no such service."""
    if site is None or not site.paths.services_dir:
        return None
    from kit.service.registry import NAME, find, services_root

    if not NAME.match(name):
        return None
    try:
        root = services_root(site)
    except KitError:
        return None
    if not (root / name / "service.json").is_file():
        return None
    return find(root, name).record()
