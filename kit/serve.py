"""`kit serve`: plan, render the engine's job script, record it, and submit it.

Nothing is left half-done: every check runs before the job directory exists, and a refused
``sbatch`` removes the directory again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kit import __version__, images, jobs, render, slurm
from kit.errors import KitError
from kit.models.resolve import HUB_ID, ModelInfo
from kit.plan import engines
from kit.sites import expand_user_path

SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|CREDENTIAL)", re.IGNORECASE)
STOP_GRACE_S = 25  # below Slurm's default KillWait (30 s); TGI gets 5 s less for its own shutdown
SIGNAL_LEAD_S = 120


@dataclass
class ServeJob:
    """Everything needed to write and submit one serving job."""

    name: str
    job_dir: Path
    script: str
    plan: dict
    request: dict
    record: dict
    warnings: list[str] = field(default_factory=list)


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


def job_name(model: ModelInfo, engine: str, name: str | None) -> str:
    if name:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
            raise KitError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        return name
    short = re.sub(r"[^a-z0-9.]+", "-", model.name.rstrip("/").split("/")[-1].lower()).strip("-")[:40]
    return f"{engine}-{short}-{os.urandom(2).hex()}"


def placement(model: ModelInfo) -> dict:
    """How the job reaches the weights: a local directory or cached snapshot (bound read-only,
    served offline), else the Hub id (the engine downloads it: a compute node may be offline)."""
    if model.source in ("local", "cache"):
        path = Path(model.location).resolve() if model.source == "local" else Path(model.location)
        bind_root = path if model.source == "local" else path.parent.parent  # models--org--name: blobs too
        name = path.name if model.source == "local" else model.name
        return {"arg": str(path), "name": name, "local_path": str(path), "offline": True,
                "binds": [f"{bind_root}:{bind_root}:ro"]}
    return {"arg": model.name, "name": model.name, "local_path": None, "offline": False, "binds": []}


def adapter_rank(path: Path, ref: str) -> int:
    config = path / "adapter_config.json"
    if not config.is_file():
        raise KitError(f"--adapter {ref}: no adapter_config.json (a PEFT LoRA adapter directory)")
    try:
        return int(json.loads(config.read_text()).get("r", 0)) or 16
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
        raise KitError(f"--adapter {ref}: adapter_config.json is not valid") from None


def adapter_specs(refs: list[str], engine: dict, site=None, account: str | None = None,
                  offline: bool = False) -> tuple[list[dict], int | None, list[str]]:
    """Local adapter directories (and Hub adapters found in the shared cache) are bound read-only
    and passed as name=path; other Hub ids are passed for the engine to download, in the form
    engines.yaml gives (TGI takes a bare id: `name=...` means a local path), which needs a job
    that is not offline."""
    from kit.models.resolve import find_cached

    adapters, ranks, warnings = [], [], []
    for ref in refs:
        local = Path(ref).expanduser()
        snapshot = None if local.exists() or not HUB_ID.match(ref) else find_cached(ref, site, account)
        if local.exists():
            path = bind_root = local.resolve()
            name = path.name
        elif snapshot is not None:
            path, bind_root = snapshot, snapshot.parent.parent  # a snapshot needs its blobs
            name = ref.split("/")[-1]
        elif HUB_ID.match(ref):
            if offline:
                raise KitError(f"--adapter {ref}: not in the shared model cache, and this job runs offline "
                               f"(the model is local): `kit models pull {ref}` first")
            hub = engine["serve"]["hub_adapter"]
            fields = {"id": ref, "name": ref.split("/")[-1]}
            adapters.append({"name": hub["name"].format(**fields), "spec": hub["spec"].format(**fields), "bind": None})
            warnings.append(f"--adapter {ref}: a Hub adapter; its rank is unknown here, so LoRA rank up to 64 is allowed")
            ranks.append(64)
            continue
        else:
            raise KitError(f"--adapter {ref}: neither an existing directory nor a Hub id (org/name)")
        ranks.append(adapter_rank(path, ref))
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        adapters.append({"name": name, "spec": f"{name}={path}", "bind": f"{bind_root}:{bind_root}:ro"})
    names = [a["name"] for a in adapters]
    if len(set(names)) != len(names):
        raise KitError(f"--adapter: two adapters share the name {next(n for n in names if names.count(n) > 1)!r}")
    max_rank = None
    if ranks and engine["serve"].get("lora_ranks"):
        allowed = engine["serve"]["lora_ranks"]
        max_rank = next((r for r in allowed if r >= max(ranks)), None)
        if max_rank is None:
            raise KitError(f"--adapter: LoRA rank {max(ranks)} is above the engine's maximum {allowed[-1]}")
    return adapters, max_rank, warnings


def host_resources(site, plan: dict) -> tuple[int, int]:
    tier = site.partitions[plan["partition"]].gpu_tiers[plan["gpu_type"]]
    per_node = plan["gpus"] // plan["nodes"]
    cpus = site.defaults.cpus_per_gpu * per_node
    if tier.cpus_per_node:
        cpus = min(cpus, tier.cpus_per_node)
    mem = site.defaults.mem_per_gpu_gb * per_node
    if tier.mem_per_node_gb:
        mem = min(mem, int(tier.mem_per_node_gb * 0.9))
    return cpus, mem


def build(site, model: ModelInfo, plan: dict, *, account: str | None, time: str | None, adapters: list[str],
          name: str | None, ready_timeout_s: int, request: dict) -> ServeJob:
    if not plan["fits"]:
        hint = f"; {plan['suggestion']['text']}" if plan.get("suggestion") else ""
        raise KitError(f"{model.name} does not fit on {site.name} with these options{hint} (see `kit plan serve`)")
    engine_name = plan["engine"]
    engine = engines()[engine_name]
    account = require_account(site, account)
    limit = walltime(site, plan["partition"], time)
    place = placement(model)
    warnings = list(plan["warnings"])
    if not place["offline"]:
        warnings.append(f"{model.name} is not in the shared model cache: the job will download it, and compute "
                        f"nodes may have no internet; run `kit models pull {model.name}` first")
    adapter_list, max_rank, adapter_warnings = adapter_specs(adapters, engine, site, account, place["offline"])
    warnings += adapter_warnings

    root = jobs.state_root(site)
    jobs.ensure_writable(root)
    name = job_name(model, engine_name, name)
    job_dir = root / name
    if job_dir.exists():
        raise KitError(f"--name {name}: a kit job of that name exists already ({job_dir})")

    cache = Path(expand_user_path(site.paths.scratch, account)) / ".kit" / engine_name
    writable = [str(cache)] + [str(cache / sub) for sub in engine["serve"]["writable_env"].values()]
    binds = [expand_user_path(b, account) for b in site.runtime.binds] + place["binds"]
    binds += [a["bind"] for a in adapter_list if a["bind"]]
    if engine["serve"]["writable_bind"]:
        binds.append(f"{cache}:{engine['serve']['writable_bind']}")
    env = dict(engine["serve"]["env"])
    env.update({k: str(cache / sub) for k, sub in engine["serve"]["writable_env"].items()})
    # Always set, so a value from the submitting shell never decides: exactly "1" when offline
    # (TGI's router checks == "1", containers.md §1.2).
    env["HF_HUB_OFFLINE"] = "1" if place["offline"] else "0"
    image_entry = images.load_lock().entry(engine["serve"]["image"])
    image = images.local_image(site, image_entry, account)
    cuda_error, cuda_warning = images.cuda_problem(image_entry, site)
    if cuda_error:
        raise KitError(f"{engine['label']} {engine['version']}: {cuda_error}")
    if cuda_warning:
        warnings.append(f"{engine['label']} {engine['version']}: {cuda_warning}")
    cpus, mem = host_resources(site, plan)

    directives = [
        render.directive("--job-name", name),
        *([render.directive("--account", account)] if account else []),
        render.directive("--partition", plan["partition"]),
        render.directive("--nodes", plan["nodes"]),
        render.directive("--ntasks-per-node", 1),
        render.directive("--gres", plan["gres"]),
        *([render.directive("--constraint", plan["constraint"])] if plan["constraint"] else []),
        render.directive("--cpus-per-task", cpus),
        render.directive("--mem", f"{mem}G"),
        render.directive("--time", limit),
        render.directive("--output", f"{job_dir}/slurm-%j.out"),
        render.directive("--signal", f"B:USR1@{SIGNAL_LEAD_S}"),
    ]
    directives = render.apply_site_directives(directives, site.sbatch)
    script = render.render(
        engine["serve"]["template"],
        kit_version=__version__,
        site=site,
        description=f"serve {model.name} with {engine['label']} {engine['version']} on {plan['gpus']}x {plan['gpu_type']}",
        job_dir=str(job_dir),
        sbatch=directives,
        runtime_cache_dir=expand_user_path(site.runtime.cache_dir, account),
        runtime_tmp_dir=expand_user_path(site.runtime.tmp_dir, account),
        image=str(image),
        model=place,
        writable_dirs=writable,
        port_range=site.network.port_range,
        extra_ports=engine["serve"]["extra_ports"],
        container_env=sorted(env.items()),
        api_key_env=engine["serve"]["api_key_env"],
        engine=engine_name,
        engine_label=engine["label"],
        engine_version=engine["version"],
        engine_args=plan["engine_args"],
        binds=binds,
        adapters=adapter_list,
        max_lora_rank=max_rank,
        stop_grace_s=STOP_GRACE_S,
        ready_timeout_s=ready_timeout_s,
    )
    record = {
        "name": name,
        "job_id": None,
        "task": "serve",
        "site": site.name,
        "account": account,
        "partition": plan["partition"],
        "gpus": plan["gpus"],
        "gpu_type": plan["gpu_type"],
        "engine": engine_name,
        "engine_version": engine["version"],
        "model": model.name,
        "served_model_name": place["name"],
        "model_arg": place["arg"],
        "adapters": [a["name"] for a in adapter_list],
        "image": str(image),
        "image_name": engine["serve"]["image"],
        "image_sha256": image_entry["sif_sha256"],
        "image_upstream": image_entry["upstream"],
        "image_digest": image_entry["digest"],
        "time": limit,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kit_version": __version__,
        "login_host": site.login_host,
        "tunnel": site.network.tunnel,
        "accounting": site.accounting,
    }
    return ServeJob(name, job_dir, script, plan, request, record, warnings)


def submission_env() -> dict[str, str]:
    """sbatch exports the caller's environment into the job: leave secrets out of it."""
    return {k: v for k, v in os.environ.items() if not SECRET_ENV.search(k)}


def submit(job: ServeJob) -> jobs.JobRecord:
    slurm.require("sbatch")  # before anything is written
    job.job_dir.mkdir(parents=True)
    try:
        jobs.write_secret(job.job_dir / "api_key")
        (job.job_dir / "job.sbatch").write_text(job.script)
        jobs.write_json(job.job_dir / "plan.json", job.plan)
        jobs.write_json(job.job_dir / "request.json", job.request)
        jobs.write_json(job.job_dir / "record.json", job.record)
        job_id = slurm.submit(str(job.job_dir / "job.sbatch"), cwd=str(job.job_dir), env=submission_env())
    except slurm.SubmitUncertain:
        raise  # sbatch may have queued it: keep the record the job needs
    except BaseException:
        shutil.rmtree(job.job_dir, ignore_errors=True)  # nothing half-submitted is left behind
        raise
    record = jobs.JobRecord(job.job_dir, dict(job.record, job_id=job_id))
    record.save()
    return record
