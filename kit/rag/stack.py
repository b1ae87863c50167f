"""The RAG stack job (`kit rag up`, templates/rag-stack.sbatch.j2): Weaviate with its data on
project storage, text-embeddings-inference (TEI) behind kit's key guard and, optionally, a
generator, in one Slurm job. The job's key (0600) is Weaviate's API key and the guards'.

Who runs where:
- ``--model MODEL``: the generator is planned and launched exactly as `kit serve` plans and
  launches it (kit.jobs.serve; the template extends the engine's serving template); the job gets
  the generator's planned GPUs, and TEI runs its CPU image beside it, so it never competes for
  GPU memory. ``--generator JOB`` instead names an existing kit serve job.
- neither: TEI runs on one GPU of the cheapest tier, when the site's driver can run TEI's GPU
  image; else (TEI's kernels are PTX built with a newer CUDA) its CPU image on the CPU partition.
- ``--cpu``: Weaviate alone on the CPU partition, a long-lived index; kit then embeds in process.
Facts (sizes, Weaviate's environment, TEI's images): kit/rag/stack.yaml."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kit.errors import KitError
from kit.jobs import render
from kit.jobs.record import ensure_writable, state_root
from kit.jobs.spec import (JobSpec, base_record, host_resources, job_directives, job_name, locked_image,
                           require_account, script_context, walltime)
from kit.resources import packaged_yaml
from kit.sites import expand_user_path

STACK_FILE = Path(__file__).resolve().parent / "stack.yaml"
WEAVIATE_PORTS = ["WEAVIATE_PORT", "GRPC_PORT", "GOSSIP_PORT", "DATA_PORT", "RAFT_PORT", "RAFT_RPC_PORT"]
TEI_PORTS = ["TEI_PORT", "TEI_ENGINE_PORT", "TEI_METRICS_PORT"]
READY_PATH = "/v1/.well-known/ready"  # Weaviate's readiness: the front door of a stack without a guard


def facts() -> dict:
    return packaged_yaml(STACK_FILE)


def node_name(data_dir: str) -> str:
    """Weaviate's CLUSTER_HOSTNAME: its Raft state is kept under this name, so it follows the data
    directory (a restarted job, on any node and under any job name, reopens its own data)."""
    return "kit-rag-" + hashlib.sha256(data_dir.encode()).hexdigest()[:12]


def weaviate_env(hostname: str, mem_gib: int, share: float) -> list[tuple[str, str]]:
    env = dict(facts()["weaviate"]["env"], CLUSTER_HOSTNAME=hostname, GOMEMLIMIT=f"{int(mem_gib * 1024 * share)}MiB")
    return sorted(env.items())


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


def cpu_plan(site, partition: str | None, with_tei: bool) -> dict:
    size = facts()["cpu_job"]
    name = partition or site.defaults.cpu_partition
    if name is None or name not in site.partitions:
        raise KitError(f"--partition: {site.name} has no CPU partition {name!r} (set defaults.cpu_partition)")
    return {"partition": name, "nodes": 1, "gpus": 0, "gpu_type": None, "gres": None, "constraint": None,
            "cpus": size["cpus_with_tei"] if with_tei else size["cpus"], "mem_gib": size["mem_gib"]}


def tei_device(site, *, cpu: bool, in_job_generator: bool, partition: str | None, gpu: str | None,
               warnings: list[str]) -> str | None:
    """Where TEI runs: None (--cpu: no TEI), "cpu" beside a generator or where the site's driver
    cannot run TEI's GPU image (a clear error when a GPU was asked for), else "gpu"."""
    from kit.images.cuda import cuda_problem
    from kit.images.lock import load_lock

    if cpu:
        return None
    if in_job_generator:
        return "cpu"
    if gpu or partition:
        gpu_plan(site, partition, gpu)  # an unknown partition or tier is named as such first
    images = facts()["tei"]["images"]
    entry = load_lock().entry(images["gpu"])
    error, _ = cuda_problem(entry, site)
    if error is None:
        return "gpu"
    label = f"TEI {entry['version']} on a GPU"
    if gpu or partition:
        raise KitError(f"--{'gpu' if gpu else 'partition'} {gpu or partition}: {label}: {error}; without --gpu and "
                       f"--partition kit runs TEI's CPU image ({images['cpu']}) on the CPU partition")
    warnings.append(f"{label}: {error}: TEI runs its CPU image ({images['cpu']}) on the "
                    f"{site.defaults.cpu_partition} partition instead")
    return "cpu"


def existing_generator(generator: str | None, site) -> str | None:
    if not generator:
        return None
    from kit.jobs.record import lookup

    record = lookup(generator, site.name)
    if record.data.get("task") != "serve":
        raise KitError(f"--generator {generator}: not a kit serve job")
    return record.name


def build(site, *, account: str | None, time: str | None, name: str | None, cpu: bool, partition: str | None,
          gpu: str | None, embed_model: str | None, generator: str | None, data_dir: str | None,
          ready_timeout_s: int, request: dict, model=None, plan: dict | None = None) -> JobSpec:
    """The stack job; ``model`` (a ModelInfo) and its serve ``plan`` run a generator in it."""
    from kit.rag.embed import DEFAULT_MODEL, default_model_dir

    f = facts()
    account = require_account(site, account)
    if model is not None and generator:
        raise KitError("--model and --generator: give one (a generator in this job, or an existing kit serve job)")
    if cpu and model is not None:
        raise KitError("--cpu: Weaviate alone runs no generator; drop --model or --cpu")
    if cpu and gpu:
        raise KitError(f"--gpu {gpu}: a --cpu stack has no GPU")
    warnings: list[str] = []
    name = job_name("stack", "rag", name)
    root = state_root(site)
    ensure_writable(root)
    job_dir = root / name
    if job_dir.exists():
        raise KitError(f"--name {name}: a kit job of that name exists already ({job_dir})")
    generator = existing_generator(generator, site)
    device = tei_device(site, cpu=cpu, in_job_generator=model is not None, partition=partition, gpu=gpu,
                        warnings=warnings)
    if model is not None:
        job_plan = plan
    elif device == "gpu":
        job_plan = gpu_plan(site, partition, gpu)
    else:
        job_plan = cpu_plan(site, partition if cpu else None, with_tei=device is not None)
    data = str(Path(data_dir).expanduser().resolve()) if data_dir else \
        str(Path(expand_user_path(site.paths.project, account)) / "kit" / "rag" / name)

    hostname = node_name(data)
    w = f["weaviate"]
    w_path, w_entry = locked_image(site, w["image"], account, "Weaviate", warnings)
    share = w["memory_share"]["with_generator" if model is not None else "alone"]
    mem_gib = host_resources(site, job_plan)[1]  # what the job's --mem asks
    stack = {
        "weaviate": {"image": str(w_path), "version": w_entry["version"], "data_dir": data,
                     "data_mount": w["data_mount"], "hostname": hostname,
                     "env": weaviate_env(hostname, mem_gib, share)},
        "tei": None, "generator": None, "generator_job": generator, "generator_job_json": json.dumps(generator),
        "ports": list(WEAVIATE_PORTS), "front_port": "WEAVIATE_PORT", "health_path": READY_PATH,
        "secrets": ["weaviate_cluster_key"], "stop_grace_s": f["stop_grace_s"],
    }
    images = [w["image"]]
    embed_name = None
    if device:
        model_dir = Path(embed_model).expanduser().resolve() if embed_model else default_model_dir()
        if not (model_dir / "config.json").is_file():
            raise KitError(f"--embed-model {model_dir}: not a model directory (no config.json)")
        embed_name = DEFAULT_MODEL if embed_model is None else model_dir.name
        t_image = f["tei"]["images"][device]
        t_path, t_entry = locked_image(site, t_image, account, f"TEI {device.upper()} image", warnings)
        stack["tei"] = {"image": str(t_path), "version": t_entry["version"], "device": device,
                        "model_dir": str(model_dir), "model_name": embed_name, "model_json": json.dumps(embed_name),
                        "model_mount": f["tei"]["model_mount"], "env": sorted(f["tei"]["env"].items())}
        stack.update(front_port="TEI_PORT", health_path="/health")
        stack["ports"] += TEI_PORTS
        stack["secrets"].append("tei_key")
        images.append(t_image)
    description = (f"RAG stack: Weaviate {w_entry['version']}"
                   + (f" + TEI ({device}, {embed_name})" if device else " (CPU)")
                   + (f" + {plan['engine']} serving {model.name}" if model is not None else ""))
    fields = {"task": "rag-stack", "engine": "rag-stack", "embed_model": embed_name, "tei_device": device,
              "generator": generator, "data_dir": data, "weaviate_hostname": hostname,
              "tunnel": site.network.tunnel}

    if model is not None:
        from kit.jobs.serve import build as serve_build, placement

        stack.update(health_path="/health", front_port=None,
                     generator={"model_json": json.dumps(placement(model)["name"])})
        job = serve_build(site, model, plan, account=account, time=time, adapters=[], name=name,
                          ready_timeout_s=ready_timeout_s, request=request, job_dir=job_dir,
                          template="rag-stack.sbatch.j2", description=description, context={"stack": stack})
        job.record.update(fields, generator_engine=plan["engine"], images=[job.record["image_name"], *images])
        job.warnings = warnings + job.warnings
        return job

    from kit.jobs.serve import guard_files

    limit = walltime(site, job_plan["partition"], time)
    directives = job_directives(site, job_plan, name=name, account=account, limit=limit, job_dir=job_dir)
    script = render.render(
        "rag-stack.sbatch.j2", engine_template=None, stack=stack,
        **script_context(site, account, job_dir=job_dir, directives=directives, image=w_path, description=description),
        port_range=site.network.port_range, port_dir=site.network.port_dir, ready_timeout_s=ready_timeout_s)
    record = base_record("rag-stack", site, account, job_plan, name=name, image=w_path, image_name=w["image"],
                         image_entry=w_entry, limit=limit)
    record.update(fields, images=images)
    return JobSpec(name, job_dir, script, job_plan, request, record, site, account, warnings,
                   guard_files() if device else {})


def stack_job(*, site: str | None, account: str | None, time: str | None = None, name: str | None = None,
              cpu: bool = False, partition: str | None = None, gpu: str | None = None,
              embed_model: str | None = None, generator: str | None = None, data_dir: str | None = None,
              ready_timeout: int = 1800, model: str | None = None, **plan_options) -> JobSpec:
    """`kit rag up` as a library call (``plan_options`` are plan_serve's, for ``model``); submit
    it with ``up``."""
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    request = {"site": site_obj.name, "account": account, "time": time, "name": name, "cpu": cpu,
               "partition": partition, "gpu": gpu, "embed_model": embed_model, "generator": generator,
               "data_dir": data_dir, "ready_timeout": ready_timeout, "model": model, **plan_options}
    info = plan = None
    if model is not None:
        from kit.models.resolve import resolve
        from kit.plan import plan_serve

        if cpu:
            raise KitError("--cpu: Weaviate alone runs no generator; drop --model or --cpu")
        info = resolve(model, site_obj, account)
        plan = plan_serve(info, site_obj, partition=partition, gpu=gpu, **plan_options)
    return build(site_obj, account=account, time=time, name=name, cpu=cpu, partition=partition, gpu=gpu,
                 embed_model=embed_model, generator=generator, data_dir=data_dir, ready_timeout_s=ready_timeout,
                 request=request, model=info, plan=plan)


def up(job: JobSpec):
    """Every image the stack runs checked against the lock, then kit's submit (which checks the first)."""
    from kit.images.store import verified_image
    from kit.jobs.submit import submit

    for image in job.record["images"]:
        if image != job.record["image_name"]:
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
                     "endpoint_state": ep.get("state"), "ready": st.ready, "host": ep.get("host"),
                     "services": ep.get("services"), "data_dir": st.record.data.get("data_dir"),
                     "generator": st.record.data.get("generator") or st.record.data.get("model")})
    return rows
