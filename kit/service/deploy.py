"""Deploying a shared service (`kit service up`), taking it down, and what `list`/`status` show.

`up` is `kit serve` with the service template (templates/service.sbatch.j2, a child of the
engine's template): the job record lives in SERVICES_DIR/NAME/job/ and submits through
kit.jobs.submit like any job; the service directory around it is created first, and removed
again when the submission fails.
"""

from __future__ import annotations

import getpass
import json
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kit import slurm
from kit.errors import KitError
from kit.fs import write_atomic, write_json
from kit.service.registry import Service, check_name, services_root

RENEW_MODES = ("queue", "overlap", "off")
DRAIN_S = 20  # requests in flight finish within this after a hand-over or stop
HANDOVER_DELAY_S = 5  # the old generation still answers clients that resolved it just before


@dataclass
class Deployment:
    service: Service
    job: object  # kit.jobs.spec.JobSpec
    renew: str
    renew_before_s: int
    walltime_s: int

    @property
    def overlap_cost(self) -> str | None:
        if self.renew != "overlap":
            return None
        gpus = self.job.record["gpus"]
        return (f"overlap: each renewal runs {gpus} more {self.job.record['gpu_type']} GPU(s) for up to "
                f"{self.renew_before_s} s (the successor starts {self.renew_before_s} s before the walltime), "
                f"{gpus * self.renew_before_s / 3600:.2f} GPU-hours per {self.walltime_s / 3600:g} h generation")


def parse_duration(text: str, option: str) -> int:
    m = re.match(r"^(\d+)([smh]?)$", str(text))
    if not m:
        raise KitError(f"{option} {text}: use seconds (90, 90s) or minutes/hours (5m, 1h)")
    return int(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]


def service_job(name: str, model: str, *, site: str | None, account: str | None, time_limit: str | None = None,
                renew: str = "queue", renew_before: str = "10m", max_restarts: int = 3, adapters=(),
                ready_timeout: int = 1800, **options) -> Deployment:
    """Plan and render the service's job (nothing is written)."""
    from kit.jobs.serve import build, guard_files, placement
    from kit.models.resolve import resolve
    from kit.plan import plan_serve
    from kit.sites import load_site

    check_name(name)
    if renew not in RENEW_MODES:
        raise KitError(f"--renew {renew}: use one of {', '.join(RENEW_MODES)}")
    if max_restarts < 0:
        raise KitError(f"--max-restarts {max_restarts}: must be 0 or more")
    site_obj = load_site(site, account=account).site
    root = services_root(site_obj, account)
    service = Service(name, root / name)
    info = resolve(model, site_obj, account)
    plan = plan_serve(info, site_obj, **options)
    from kit.jobs.spec import require_account, walltime

    limit = walltime(site_obj, plan["partition"], time_limit) if plan["fits"] else "1"
    walltime_s = (slurm.parse_time_limit(limit) or 0) * 60
    renew_before_s = parse_duration(renew_before, "--renew-before")
    if renew != "off" and not 0 < renew_before_s < walltime_s:
        raise KitError(f"--renew-before {renew_before}: must be more than 0 and less than the walltime ({limit})")
    signal_lead_s = min(120, max(walltime_s // 4, 10))
    account = require_account(site_obj, account)
    static = {"name": name, "model": info.name, "served_model_name": placement(info)["name"],
              "site": site_obj.name, "account": account,
              "engine": plan.get("engine"), "partition": plan.get("partition"), "gpus": plan.get("gpus"),
              "gpu_type": plan.get("gpu_type"), "time": limit, "renew": renew, "renew_before_s": renew_before_s,
              "max_restarts": max_restarts, "owner": getpass.getuser(), "login_host": site_obj.login_host,
              "tunnel": site_obj.network.tunnel}
    request = dict(options, model=model, site=site_obj.name, account=account, time=time_limit, name=name,
                   adapters=list(adapters), renew=renew, renew_before=renew_before_s, max_restarts=max_restarts)
    job = build(site_obj, info, plan, account=account, time=time_limit, adapters=list(adapters), name=name,
                ready_timeout_s=ready_timeout, request=request, job_dir=service.job_dir,
                template="service.sbatch.j2", sbatch=("--requeue", "--open-mode=append"), signal_lead_s=signal_lead_s,
                context={"service_dir": str(service.dir), "service_static": json.dumps(static)[1:-1],
                         "renew": renew, "renew_before_s": renew_before_s, "max_restarts": max_restarts,
                         "walltime_s": walltime_s, "drain_s": DRAIN_S, "handover_delay_s": HANDOVER_DELAY_S})
    job.files.update(guard_files())
    job.record.update(service=name, services_dir=str(root), static=static)
    return Deployment(service, job, renew, renew_before_s, walltime_s)


def up(dep: Deployment):
    """Create the service directory, then submit the job; a failure leaves nothing behind.
    A service that was taken down may be deployed again under its name (its lab keys stay)."""
    from kit.fs import writable_dir
    from kit.jobs.submit import submit

    service = dep.service
    root = service.dir.parent
    writable_dir(root, "services directory", "set paths.services_dir to a directory you can write")
    fresh = not service.dir.exists()
    if not fresh:
        state = json.loads((service.dir / "service.json").read_text()).get("state") \
            if (service.dir / "service.json").is_file() else None
        if state != "down":
            raise KitError(f"service {service.name} exists already ({service.dir}, state {state}); "
                           f"`kit service down {service.name}` first")
        if service.job_dir.exists():
            old = json.loads((service.job_dir / "record.json").read_text()).get("job_id", "old") \
                if (service.job_dir / "record.json").is_file() else "old"
            service.job_dir.rename(service.dir / f"job-{old}-{int(time.time())}")
    try:
        if fresh:
            service.dir.mkdir(mode=0o755)
            service.dir.chmod(0o755)  # the labs resolve the name here
            (service.dir / "keys").mkdir(mode=0o711)  # each lab reads its own file, lists none
            (service.dir / "keys").chmod(0o711)
            (service.dir / "usage").mkdir(mode=0o700)
            write_atomic(service.dir / "key_hashes", "")
        (service.dir / "down").unlink(missing_ok=True)
        gen = _read(service.dir / "generation") or "0"
        publish(service, dict(dep.job.record["static"], state="queued", generation=int(gen) + 1, job_id=None),
                current=f"{gen} - queued")
        record = submit(dep.job)
    except BaseException:
        if fresh:
            shutil.rmtree(service.dir, ignore_errors=True)
        else:
            (service.dir / "down").touch()
            publish(service, dict(service.data(), state="down"))
        raise
    data = service.data()
    if data.get("state") == "queued" and data.get("job_id") is None:  # unless the job has published already
        publish(service, dict(data, job_id=record.job_id))
    return record


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def publish(service: Service, data: dict, current: str | None = None) -> None:
    write_json(service.dir / "service.json", dict(data, updated=datetime.now(timezone.utc).isoformat(timespec="seconds")))
    (service.dir / "service.json").chmod(0o644)
    if current is not None:
        write_atomic(service.dir / "current", current + "\n")


def service_jobs(service: Service) -> list[str]:
    """This service's jobs Slurm still has pending or running (every generation, successors too)."""
    ids = slurm.queued_jobs(service.name, str(service.job_dir))
    states = slurm.queue_states(ids) if ids else {}
    return [i for i in ids if i in states and not states[i].ended]


def down(service: Service, timeout: float = 90) -> list[str]:
    """Stop every generation and withdraw any successor: a `down` mark first (no job renews or
    starts after it), then scancel until Slurm lists none of the service's jobs."""
    if not (service.dir / "service.json").is_file():
        raise KitError(f"unknown service {service.name}")
    try:
        (service.dir / "down").touch()
    except OSError as e:
        raise KitError(f"service {service.name}: cannot mark it down in {service.dir} ({e.strerror})") from None
    cancelled: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        live = service_jobs(service)
        if not live:
            break
        if time.monotonic() > deadline:
            raise KitError(f"service {service.name}: jobs {', '.join(live)} still alive {timeout:g} s after scancel")
        for job_id in live:
            slurm.cancel(job_id)
            if job_id not in cancelled:
                cancelled.append(job_id)
        time.sleep(1)
    data = service.data()
    publish(service, dict(data, state="down", url=None, port=None, successor=None, next_renewal=None),
            current=f"{data.get('generation') or 0} {data.get('job_id') or ''} down")
    return cancelled


def _seconds(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _span(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def rows(services: list[Service]) -> list[dict]:
    """What `kit service list` and `status` show, with Slurm's state of each current job and
    successor from one squeue call."""
    from kit.service.usage import requests_since

    datas = [(s, s.data()) for s in services]
    ids = [str(d[k]) for _, d in datas for k in ("job_id", "successor") if d.get(k)]
    states = slurm.queue_states(ids) if ids else {}
    now = time.time()
    out = []
    for service, d in datas:
        job_state = states.get(str(d.get("job_id")))
        successor = states.get(str(d.get("successor"))) if d.get("successor") else None
        state = d.get("state")
        if state in ("stopped", "exited") and successor is not None:
            state = "renewing"  # queue mode: the successor waits for this generation's end
        started, end = _seconds(d.get("started")), _seconds(d.get("walltime_end"))
        running = job_state is not None and job_state.state.startswith("RUNNING")
        out.append({
            "name": service.name, "model": d.get("model"), "engine": d.get("engine"), "state": state,
            "generation": d.get("generation"), "job_id": d.get("job_id"),
            "slurm": job_state.state if job_state else None, "node": d.get("node") if running else None,
            "url": service.url, "uptime": _span(now - started) if started and running else None,
            "time_left": _span(end - now) if end and running else None, "next_renewal": d.get("next_renewal"),
            "successor": d.get("successor"), "successor_slurm": successor.state if successor else None,
            "renew": d.get("renew"), "restarts": d.get("restarts"), "last_restart": d.get("last_restart"),
            "requests_last_hour": requests_since(service, 3600),
        })
    return out
