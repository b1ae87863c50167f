"""Serving jobs: a model, its plan and the engine's facts become a TGI or vLLM job script.

Every check runs here, before anything is written; submitting is ``kit.jobs.submit``.
"""

from __future__ import annotations

from pathlib import Path

from kit import engines
from kit.errors import KitError
from kit.jobs import render
from kit.jobs.adapters import adapter_specs
from kit.jobs.record import ensure_writable, state_root
from kit.jobs.spec import (JobSpec, base_record, job_directives, job_name, locked_image, require_account,
                           script_context, walltime)
from kit.models.resolve import ModelInfo
from kit.sites import expand_user_path

STOP_GRACE_S = 25  # below Slurm's default KillWait (30 s); TGI gets 5 s less for its own shutdown


def placement(model: ModelInfo) -> dict:
    """How the job reaches the weights: a local directory or cached snapshot (bound read-only,
    served offline), else the Hub id (the engine downloads it: a compute node may be offline).
    A cached snapshot without its weights (only metadata) is no model: nothing is submitted."""
    if model.source == "cache" and model.missing_weights:
        raise KitError(f"{model.name}: the cached snapshot has {model.missing_weights}: `kit models pull {model.name}` first")
    if model.source in ("local", "cache"):
        path = Path(model.location).resolve() if model.source == "local" else Path(model.location)
        bind_root = path if model.source == "local" else path.parent.parent  # models--org--name: blobs too
        name = path.name if model.source == "local" else model.name
        return {"arg": str(path), "name": name, "local_path": str(path), "offline": True,
                "binds": [f"{bind_root}:{bind_root}:ro"]}
    return {"arg": model.name, "name": model.name, "local_path": None, "offline": False, "binds": []}


def build(site, model: ModelInfo, plan: dict, *, account: str | None, time: str | None, adapters: list[str],
          name: str | None, ready_timeout_s: int, request: dict, job_dir: Path | None = None,
          template: str | None = None, context: dict | None = None, sbatch: tuple[str, ...] = (),
          signal_lead_s: int | None = None, description: str | None = None) -> JobSpec:
    """The serving job. A shared service (kit.service) or a RAG stack (kit.rag.stack) passes its
    own ``job_dir``, a ``template`` that extends the engine's (given as ``engine_template``), more
    ``context``, more ``sbatch`` directives, an earlier ``signal_lead_s`` for short walltimes and
    the script's ``description``."""
    if not plan["fits"]:
        hint = f"; {plan['suggestion']['text']}" if plan.get("suggestion") else ""
        raise KitError(f"{model.name} does not fit on {site.name} with these options{hint} (see `kit plan serve`)")
    engine_name = plan["engine"]
    engine = engines.engine(engine_name)
    account = require_account(site, account)
    limit = walltime(site, plan["partition"], time)
    place = placement(model)
    warnings = list(plan["warnings"])
    if not place["offline"]:
        warnings.append(f"{model.name} is not in the shared model cache: the job will download it, and compute "
                        f"nodes may have no internet; run `kit models pull {model.name}` first")
    adapter_list, max_rank, adapter_warnings = adapter_specs(adapters, engine, site, account, place["offline"],
                                                             model=model)
    warnings += adapter_warnings

    name = job_name(model.name, engine_name, name)
    if job_dir is None:
        root = state_root(site)
        ensure_writable(root)
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
    image, image_entry = locked_image(site, engine["serve"]["image"], account,
                                      f"{engine['label']} {engine['version']}", warnings)
    directives = job_directives(site, plan, name=name, account=account, limit=limit, job_dir=job_dir,
                                signal_lead_s=signal_lead_s)
    directives += [render.directive(*d.split("=", 1)) if "=" in d else render.directive(d) for d in sbatch]
    script = render.render(
        template or engine["serve"]["template"],
        engine_template=engine["serve"]["template"],
        **(context or {}),
        **script_context(site, account, job_dir=job_dir, directives=directives, image=image,
                         description=description or f"serve {model.name} with {engine['label']} "
                                                    f"{engine['version']} on {plan['gpus']}x {plan['gpu_type']}"),
        model=place,
        writable_dirs=writable,
        port_range=site.network.port_range,
        port_dir=site.network.port_dir,
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
    record = base_record("serve", site, account, plan, name=name, image=image, image_name=engine["serve"]["image"],
                         image_entry=image_entry, limit=limit)
    record.update(engine=engine_name, engine_version=engine["version"], model=model.name,
                  served_model_name=place["name"], model_arg=place["arg"], adapters=[a["name"] for a in adapter_list],
                  tunnel=site.network.tunnel)
    return JobSpec(name, job_dir, script, plan, request, record, site, account, warnings, guard_files())


def guard_files() -> dict[str, str]:
    """kit's guard as the job runs it: the proxy as guard.py, with its key and usage modules beside it."""
    guard = Path(__file__).resolve().parents[1] / "guard"
    return {"guard.py": (guard / "proxy.py").read_text(), "keys.py": (guard / "keys.py").read_text(),
            "usage.py": (guard / "usage.py").read_text()}


def serve_job(model: str, *, site: str | None, account: str | None, time: str | None = None,
              adapters: tuple[str, ...] = (), name: str | None = None, ready_timeout: int = 1800,
              **options) -> JobSpec:
    """`kit serve` as a library call: load the site, resolve MODEL, plan it (``options`` are
    plan_serve's), and build the job. Submit it with ``kit.jobs.submit.submit``."""
    from kit.models.resolve import resolve
    from kit.plan import plan_serve
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    info = resolve(model, site_obj, account)
    plan = plan_serve(info, site_obj, **options)
    request = dict(options, model=model, site=site_obj.name, account=account, time=time, adapters=list(adapters),
                   name=name, ready_timeout=ready_timeout)
    return build(site_obj, info, plan, account=account, time=time, adapters=list(adapters), name=name,
                 ready_timeout_s=ready_timeout, request=request)
