"""The RAG stack job (`kit rag up`): Weaviate with its data on project storage and, on a GPU,
text-embeddings-inference behind kit's key guard, in one Slurm job (templates/rag-stack.sbatch.j2).
A generator is an existing kit serve job named with ``--generator JOB`` (recorded in the stack's
endpoint). ``--cpu`` runs Weaviate alone on the site's CPU partition as a long-lived index; then
kit embeds in process. The job's key (0600) is Weaviate's API key and the guard's."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from kit import __version__
from kit.errors import KitError
from kit.images.lock import load_lock
from kit.images.store import local_image
from kit.jobs import render
from kit.jobs.record import ensure_writable, state_root
from kit.jobs.spec import (JobSpec, SIGNAL_LEAD_S, gpu_directives, host_resources, job_name, require_account,
                           walltime)
from kit.sites import expand_user_path

STOP_GRACE_S = 25
CPU_JOB = {"cpus": 4, "mem_gib": 32}  # Weaviate alone: its memory limit is 80 % of the job's
PORTS = ["WEAVIATE_PORT", "GRPC_PORT", "GOSSIP_PORT", "DATA_PORT", "RAFT_PORT", "RAFT_RPC_PORT"]
TEI_PORTS = ["TEI_PORT", "TEI_ENGINE_PORT", "TEI_METRICS_PORT"]


def weaviate_env(hostname: str, mem_gib: int) -> list[tuple[str, str]]:
    """containers.md §4.2: fixed node name and Raft for one node, key auth only, no telemetry,
    no modules (kit brings the vectors), the Go runtime held under the job's memory."""
    return sorted({
        "PERSISTENCE_DATA_PATH": "/var/lib/weaviate",
        "CLUSTER_HOSTNAME": hostname,
        "RAFT_BOOTSTRAP_EXPECT": "1",
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
        "AUTHENTICATION_APIKEY_ENABLED": "true",
        "AUTHENTICATION_APIKEY_USERS": "kit",
        "AUTHORIZATION_ADMINLIST_ENABLED": "true",
        "AUTHORIZATION_ADMINLIST_USERS": "kit",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": "",
        "DISABLE_TELEMETRY": "true",
        "GO_PROFILING_DISABLE": "true",
        "PROMETHEUS_MONITORING_ENABLED": "false",
        "LIMIT_RESOURCES": "true",
        "GOMEMLIMIT": f"{int(mem_gib * 1024 * 0.8)}MiB",
        "QUERY_DEFAULTS_LIMIT": "25",
        "LOG_LEVEL": "info",
    }.items())


def gpu_plan(site, partition: str | None, gpu: str | None) -> dict:
    """One GPU of the cheapest tier (or the one asked for) for TEI."""
    name = partition or site.defaults.gpu_partition
    part = site.partitions.get(name)
    if part is None or not part.gpu_tiers:
        raise KitError(f"--partition {name}: not a GPU partition of {site.name} "
                       f"({', '.join(site.gpu_partitions())})")
    if gpu and gpu not in part.gpu_tiers:
        raise KitError(f"--gpu {gpu}: {name} has {', '.join(part.gpu_tiers)}")
    tier_name = gpu or min(part.gpu_tiers, key=lambda t: (part.gpu_tiers[t].cost, t))
    tier = part.gpu_tiers[tier_name]
    return {"partition": name, "nodes": 1, "gpus": 1, "gpu_type": tier_name, "gres": f"gpu:{tier.gres}:1",
            "constraint": tier.constraint}


def cpu_directives(site, partition: str, *, name: str, account: str | None, limit: str, job_dir: Path) -> list[str]:
    directives = [
        render.directive("--job-name", name),
        *([render.directive("--account", account)] if account else []),
        render.directive("--partition", partition),
        render.directive("--nodes", 1),
        render.directive("--ntasks-per-node", 1),
        render.directive("--cpus-per-task", CPU_JOB["cpus"]),
        render.directive("--mem", f"{CPU_JOB['mem_gib']}G"),
        render.directive("--time", limit),
        render.directive("--output", f"{job_dir}/slurm-%j.out"),
        render.directive("--signal", f"B:USR1@{SIGNAL_LEAD_S}"),
    ]
    return render.apply_site_directives(directives, site.sbatch)


def build(site, *, account: str | None, time: str | None, name: str | None, cpu: bool, partition: str | None,
          gpu: str | None, embed_model: str | None, generator: str | None, data_dir: str | None,
          ready_timeout_s: int, request: dict) -> JobSpec:
    from kit.rag.embed import DEFAULT_MODEL, default_model_dir

    account = require_account(site, account)
    if cpu:
        part = partition or site.defaults.cpu_partition
        if part is None or part not in site.partitions:
            raise KitError(f"--partition: {site.name} has no CPU partition {part!r} (set defaults.cpu_partition)")
        plan = {"partition": part, "nodes": 1, "gpus": 0, "gpu_type": None}
    else:
        plan = gpu_plan(site, partition, gpu)
    limit = walltime(site, plan["partition"], time)
    root = state_root(site)
    ensure_writable(root)
    name = job_name("stack", "rag", name)
    job_dir = root / name
    if job_dir.exists():
        raise KitError(f"--name {name}: a kit job of that name exists already ({job_dir})")
    if generator:
        from kit.jobs.record import lookup

        gen_record = lookup(generator, site.name)
        if gen_record.data.get("task") != "serve":
            raise KitError(f"--generator {generator}: not a kit serve job")
        generator = gen_record.name
    model_dir = Path(embed_model).expanduser().resolve() if embed_model else default_model_dir()
    if not (model_dir / "config.json").is_file():
        raise KitError(f"--embed-model {model_dir}: not a model directory (no config.json)")
    model_name = DEFAULT_MODEL if embed_model is None else model_dir.name
    data = data_dir or str(Path(expand_user_path(site.paths.project, account)) / "kit" / "rag" / name)
    hostname = f"kit-{name}"[:63]

    lock = load_lock()
    w_entry = lock.entry("weaviate")
    mem_gib = CPU_JOB["mem_gib"] if cpu else host_resources(site, plan)[1]  # what the job's --mem asks
    weaviate = {"image": str(local_image(site, w_entry, account)), "version": w_entry["version"],
                "data_dir": data, "hostname": hostname, "env": weaviate_env(hostname, mem_gib)}
    tei = None
    if not cpu:
        t_entry = lock.entry("tei")
        tei = {"image": str(local_image(site, t_entry, account)), "version": t_entry["version"], "gpu": True,
               "model_dir": str(model_dir), "model_name": model_name}
    directives = (cpu_directives(site, plan["partition"], name=name, account=account, limit=limit, job_dir=job_dir)
                  if cpu else gpu_directives(site, plan, name=name, account=account, limit=limit, job_dir=job_dir))
    script = render.render(
        "rag-stack.sbatch.j2",
        kit_version=__version__, site=site, job_dir=str(job_dir), sbatch=directives,
        description=f"RAG stack: Weaviate {w_entry['version']}" + (f" + TEI ({model_name})" if tei else " (CPU)"),
        runtime_cache_dir=expand_user_path(site.runtime.cache_dir, account),
        runtime_tmp_dir=expand_user_path(site.runtime.tmp_dir, account),
        port_range=site.network.port_range, port_dir=site.network.port_dir,
        ports=PORTS + (TEI_PORTS if tei else []), weaviate=weaviate, tei=tei, generator_job=generator,
        stop_grace_s=STOP_GRACE_S, ready_timeout_s=ready_timeout_s)
    record = {
        "name": name, "job_id": None, "task": "rag-stack", "site": site.name, "account": account,
        "partition": plan["partition"], "gpus": plan["gpus"], "gpu_type": plan["gpu_type"],
        "engine": "rag-stack", "embed_model": model_name, "generator": generator, "data_dir": data,
        "image": weaviate["image"], "image_name": "weaviate", "image_sha256": w_entry["sif_sha256"],
        "image_upstream": w_entry["upstream"], "image_digest": w_entry["digest"],
        "more_images": ["tei"] if tei else [], "time": limit,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kit_version": __version__,
        "login_host": site.login_host, "tunnel": site.network.tunnel, "accounting": site.accounting,
    }
    files = {"guard.py": (Path(__file__).resolve().parents[1] / "guard" / "proxy.py").read_text()} if tei else {}
    return JobSpec(name, job_dir, script, plan, request, record, site, account, [], files)


def stack_job(*, site: str | None, account: str | None, time: str | None = None, name: str | None = None,
              cpu: bool = False, partition: str | None = None, gpu: str | None = None,
              embed_model: str | None = None, generator: str | None = None, data_dir: str | None = None,
              ready_timeout: int = 1800) -> JobSpec:
    """`kit rag up` as a library call; submit it with ``up``."""
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    request = {"site": site_obj.name, "account": account, "time": time, "name": name, "cpu": cpu,
               "partition": partition, "gpu": gpu, "embed_model": embed_model, "generator": generator,
               "data_dir": data_dir, "ready_timeout": ready_timeout}
    return build(site_obj, account=account, time=time, name=name, cpu=cpu, partition=partition, gpu=gpu,
                 embed_model=embed_model, generator=generator, data_dir=data_dir, ready_timeout_s=ready_timeout,
                 request=request)


def up(job: JobSpec):
    """Every image the stack runs checked against the lock, then kit's submit (which checks Weaviate's)."""
    from kit.images.store import verified_image
    from kit.jobs.submit import submit

    for image in job.record["more_images"]:
        verified_image(job.site, image, job.account)
    return submit(job)


def stack_record(job: str, site: str | None = None):
    from kit.jobs.record import lookup

    record = lookup(job, site)
    if record.data.get("task") != "rag-stack":
        raise KitError(f"JOB {job}: {record.name} is a {record.data.get('task')} job, not a `kit rag up` stack")
    return record


def stack_status(job: str | None, site: str | None = None) -> list[dict]:
    """One row per stack (or the one named): Slurm state, endpoint state, services."""
    from kit.jobs.record import records
    from kit.jobs.status import status, statuses
    from kit.sites import load_site_if_given

    if job:
        found = [status(stack_record(job, site))]
    else:
        found = statuses([r for r in records(state_root(load_site_if_given(site)))
                          if r.data.get("task") == "rag-stack"])
    rows = []
    for st in found:
        ep = st.record.endpoint() or {}
        rows.append({"name": st.record.name, "job_id": st.record.job_id, "state": st.slurm.state,
                     "endpoint_state": ep.get("state"), "host": ep.get("host"), "services": ep.get("services"),
                     "data_dir": st.record.data.get("data_dir"), "generator": st.record.data.get("generator")})
    return rows
