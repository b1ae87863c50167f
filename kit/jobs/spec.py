"""What every kit job is before it is submitted: a JobSpec (rendered script, plan, request,
record), and the pieces all job kinds share: walltime, account, name, host resources and the
#SBATCH directives."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kit import __version__, slurm
from kit.errors import KitError
from kit.jobs import render

SIGNAL_LEAD_S = 120


@dataclass
class JobSpec:
    """Everything needed to write and submit one job. ``site`` and ``account`` travel with it so
    that submit can check the image against the lock for that site."""

    name: str
    job_dir: Path
    script: str
    plan: dict
    request: dict
    record: dict
    site: object
    account: str | None
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # more files the job reads from its directory


def walltime(site, partition: str, requested: str | None) -> str:
    text = requested or site.defaults.walltime
    try:
        minutes = slurm.parse_time_limit(text)
    except (ValueError, KitError):
        minutes = -1
    if minutes is None or minutes <= 0:
        raise KitError(f"--time {text}: not a Slurm time limit (e.g. 4:00:00 or 2-00:00:00)")
    limit = site.partitions[partition].max_minutes
    if limit is not None and minutes > limit:
        raise KitError(f"--time {text}: over the {partition} partition's limit of {slurm.format_minutes(limit)} on {site.name}")
    return slurm.format_minutes(minutes)


def require_account(site, account: str | None) -> str | None:
    chosen = account or site.account.default
    if chosen is None and site.account.pattern:
        raise KitError(f"--account: {site.name} jobs need an account (like {site.account.placeholder}); "
                       f"pass --account or set KIT_ACCOUNT")
    if chosen and site.account.pattern and not re.match(site.account.pattern, chosen):
        raise KitError(f"--account {chosen}: does not look like an account on {site.name} "
                       f"(pattern {site.account.pattern}, e.g. {site.account.placeholder})")
    return chosen


def job_name(stem: str, prefix: str, name: str | None) -> str:
    """--name as given (checked), else PREFIX-STEM-xxxx from a model name."""
    if name:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
            raise KitError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        return name
    short = re.sub(r"[^a-z0-9.]+", "-", stem.rstrip("/").split("/")[-1].lower()).strip("-")[:40]
    return f"{prefix}-{short}-{os.urandom(2).hex()}"


def host_resources(site, plan: dict) -> tuple[int, int]:
    """(CPUs, GiB of memory) the job asks for: per GPU as the site says, at least the plan's
    ``host_mem_gib`` (a fine-tuning job reads its whole base model into host memory), capped by
    the node (the planner turned down nodes too small for it); a plan without GPUs names its own
    (``cpus``, ``mem_gib``)."""
    if not plan["gpus"]:
        return plan["cpus"], plan["mem_gib"]
    tier = site.partitions[plan["partition"]].gpu_tiers[plan["gpu_type"]]
    per_node = plan["gpus"] // plan["nodes"]
    cpus = site.defaults.cpus_per_gpu * per_node
    if tier.cpus_per_node:
        cpus = min(cpus, tier.cpus_per_node)
    mem = max(site.defaults.mem_per_gpu_gib * per_node, plan.get("host_mem_gib") or 0)  # GiB, as Slurm reads --mem=NG
    if tier.job_mem_gib:
        mem = min(mem, tier.job_mem_gib)
    return cpus, mem


def job_directives(site, plan: dict, *, name: str, account: str | None, limit: str, job_dir: Path,
                   signal_lead_s: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The #SBATCH lines of a job as planned, with GPUs (``gres``, ``constraint``) or without
    (USR1 ``signal_lead_s`` before the walltime, then the job kind's ``extra`` directives), after
    the site's own additions and drops."""
    cpus, mem = host_resources(site, plan)
    directives = [
        render.directive("--job-name", name),
        *([render.directive("--account", account)] if account else []),
        render.directive("--partition", plan["partition"]),
        render.directive("--nodes", plan["nodes"]),
        render.directive("--ntasks-per-node", 1),
        *([render.directive("--gres", plan["gres"])] if plan.get("gres") else []),
        *([render.directive("--constraint", plan["constraint"])] if plan.get("constraint") else []),
        render.directive("--cpus-per-task", cpus),
        render.directive("--mem", f"{mem}G"),
        render.directive("--time", limit),
        render.directive("--output", f"{job_dir}/slurm-%j.out"),
        render.directive("--signal", f"B:USR1@{signal_lead_s or SIGNAL_LEAD_S}"),
        *extra,
    ]
    return render.apply_site_directives(directives, site.sbatch)


def script_context(site, account: str | None, *, job_dir: Path, directives: list[str], image, description: str) -> dict:
    """What the base template needs from every job kind (the kind adds its own values)."""
    from kit.sites import expand_user_path

    return {
        "kit_version": __version__,
        "site": site,
        "description": description,
        "job_dir": str(job_dir),
        "sbatch": directives,
        "runtime_cache_dir": expand_user_path(site.runtime.cache_dir, account),
        "runtime_tmp_dir": expand_user_path(site.runtime.tmp_dir, account),
        "image": str(image),
    }


def base_record(task: str, site, account: str | None, plan: dict, *, name: str, image, image_name: str,
                image_entry: dict, limit: str) -> dict:
    """The record fields every job kind has: what ran where, from which image (the kind adds its own)."""
    return {
        "name": name,
        "job_id": None,
        "task": task,
        "site": site.name,
        "account": account,
        "partition": plan["partition"],
        "gpus": plan["gpus"],
        "gpu_type": plan["gpu_type"],
        "image": str(image),
        "image_name": image_name,
        "image_sha256": image_entry["sif_sha256"],
        "image_upstream": image_entry["upstream"],
        "image_digest": image_entry["digest"],
        "time": limit,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kit_version": __version__,
        "login_host": site.login_host,
        "accounting": site.accounting,
    }


def locked_image(site, image_name: str, account: str | None, label: str, warnings: list[str]) -> tuple[Path, dict]:
    """The lock's image for a job on this site: its path in the site's image directory and its
    lock entry. An image the site's driver cannot run is a KitError; one that runs only through
    CUDA minor-version compatibility adds a warning. (Submit checks the file against the lock.)"""
    from kit.images.cuda import cuda_problem
    from kit.images.lock import load_lock
    from kit.images.store import local_image

    entry = load_lock().entry(image_name)
    path = local_image(site, entry, account)
    error, warning = cuda_problem(entry, site)
    if error:
        raise KitError(f"{label}: {error}")
    if warning:
        warnings.append(f"{label}: {warning}")
    return path, entry
