"""Fine-tuning jobs: a training config, its model and its memory plan become a Slurm job that
runs kit's trainer in the fine-tuning image, checkpoints before the walltime and requeues itself.

Every check runs here, before anything is written; submitting is ``kit.jobs.submit``. The
config is validated by the trainer's own loader (``kit.train.config``, light to import), so the
job never starts with a config the trainer would refuse.
"""

from __future__ import annotations

import os
from pathlib import Path

from kit.errors import KitError
from kit.jobs import render
from kit.jobs.record import ensure_writable, state_root
from kit.jobs.spec import (JobSpec, base_record, job_directives, job_name, locked_image, require_account,
                           script_context, walltime)
from kit.resources import packaged_yaml
from kit.sites import expand_user_path

FACTS_FILE = Path(__file__).resolve().parent / "finetune.yaml"
JOB_CONFIG = "finetune.yaml"  # the config the job runs, in its record directory


def facts() -> dict:
    return packaged_yaml(FACTS_FILE)


def plan_options(cfg) -> dict:
    """The planner's options from a training config (the trainer's choices that change memory too)."""
    targets = cfg.lora.target_modules
    return dict(method=cfg.method, seq_len=cfg.training.seq_len, batch_size=cfg.training.batch_size,
                grad_ckpt=cfg.training.gradient_checkpointing, optimizer=cfg.training.optimizer, lora_r=cfg.lora.r,
                lora_targets=targets if isinstance(targets, str) else ",".join(targets),
                trainer={"attention": cfg.training.attn_implementation, "lora_dropout": cfg.lora.dropout > 0})


def job_config(cfg, model_path: str) -> str:
    """The config as the job runs it: the user's settings with every path absolute (the loader
    made them so; the job reads it from its record directory) and the model as the local
    directory kit resolved (a cached Hub model's snapshot)."""
    import msgspec
    import yaml

    data = msgspec.to_builtins(msgspec.structs.replace(cfg, model=model_path))
    return "# written by kit finetune; paths are absolute\n" + yaml.safe_dump(data, sort_keys=False)


def check_data(cfg) -> list[str]:
    """Every record of every data file, as the trainer will read it (one clear error naming the
    file and line); returns the files."""
    from kit.train.data import read_records

    files = cfg.data.train_files + cfg.data.validation_files
    read_records(cfg.data.train_files, cfg.data.format)
    if cfg.data.validation_files:
        read_records(cfg.data.validation_files, cfg.data.format)
    return files


def check_output_dir(output_dir: Path, config: str) -> list[str]:
    """The output directory can be created and written; a finished run is not overwritten. A run
    with checkpoints resumes from them (said as a warning)."""
    if output_dir.exists():
        if not output_dir.is_dir():
            raise KitError(f"{config}: output_dir {output_dir} exists and is not a directory")
        if (output_dir / "summary.json").exists():
            raise KitError(f"{config}: output_dir {output_dir} holds a finished run (summary.json); "
                           f"choose another output_dir")
        if not os.access(output_dir, os.W_OK | os.X_OK):
            raise KitError(f"{config}: output_dir {output_dir} is not writable by you")
        steps = sorted(p.name for p in (output_dir / "checkpoints").glob("step-*") if p.is_dir())
        if steps:
            return [f"output_dir {output_dir} has checkpoints: the run resumes from {steps[-1]}"]
        return []
    parent = output_dir.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KitError(f"{config}: output_dir {output_dir} cannot be created: {parent} is not writable by you")
    return []


def not_fitting(config: str, model: str, site, plan: dict) -> KitError:
    from kit.plan.fixes import describe

    fix = (plan.get("suggestion") or {})
    hint = describe(fix, "config") if fix.get("change") else fix.get("text", "use a smaller model")
    return KitError(f"{config}: {model} does not fit on {site.name} as configured ({plan['method']}, "
                    f"seq_len {plan['seq_len']}); {hint}")


def build(site, cfg, config_path: Path, model, plan: dict, *, account: str | None, time: str | None,
          name: str | None, request: dict) -> JobSpec:
    from kit.jobs.serve import placement

    config = str(config_path)
    if not plan["fits"]:
        raise not_fitting(config, model.name, site, plan)
    if plan["nodes"] > 1:
        raise KitError(f"{config}: {model.name} needs {plan['gpus']}x {plan['gpu_type']} on {plan['nodes']} nodes; "
                       f"kit's fine-tuning job runs on one node (give --gpu a larger tier, or method: qlora)")
    f = facts()
    account = require_account(site, account)
    limit = walltime(site, plan["partition"], time)
    from kit import slurm

    margin = f["signal_margin_s"]
    if slurm.parse_time_limit(limit) * 60 <= 2 * margin:
        raise KitError(f"--time {limit}: too short for a fine-tuning job, which checkpoints {margin} s before "
                       f"its walltime (give at least {slurm.format_minutes(2 * margin // 60 + 1)})")
    place = placement(model)
    if not place["offline"]:
        raise KitError(f"{config}: model {model.name} is neither a local directory nor in the shared model cache "
                       f"(compute nodes may be offline): `kit models pull {model.name}` first")
    output_dir = Path(cfg.output_dir)
    warnings = list(plan["warnings"]) + check_output_dir(output_dir, config)
    if not cfg.training.bf16:
        warnings.append(f"{config}: training.bf16 false: the plan counts bf16 weights and compute; fp32 needs about "
                        "twice the memory for weights, gradients and activations (set it true on GPUs)")
    files = check_data(cfg)

    root = state_root(site)
    ensure_writable(root)
    name = job_name(model.name, "finetune", name)
    job_dir = root / name
    if job_dir.exists():
        raise KitError(f"--name {name}: a kit job of that name exists already ({job_dir})")

    cache = Path(expand_user_path(site.paths.scratch, account)) / ".kit" / "finetune"
    writable = {k: str(cache / sub) for k, sub in f["writable_env"].items()}
    env = dict(f["env"], **writable)
    binds = [expand_user_path(b, account) for b in site.runtime.binds] + place["binds"]
    binds += [f"{d}:{d}:ro" for d in dict.fromkeys(str(Path(p).parent) for p in files)]
    binds += [f"{job_dir}:{job_dir}:ro", f"{cache}:{cache}", f"{output_dir}:{output_dir}"]
    image, image_entry = locked_image(site, f["image"], account, "fine-tuning image", warnings)
    directives = job_directives(site, plan, name=name, account=account, limit=limit, job_dir=job_dir,
                                signal_lead_s=margin,
                                extra=("--requeue", render.directive("--open-mode", "append")))
    script = render.render(
        f["template"],
        **script_context(site, account, job_dir=job_dir, directives=directives, image=image,
                         description=f"fine-tune {model.name} ({plan['method']}) on {plan['gpus']}x {plan['gpu_type']} "
                                     f"from {config}"),
        model_path=place["local_path"],
        data_files=files,
        config_file=str(job_dir / JOB_CONFIG),
        output_dir=str(output_dir),
        writable_dirs=[str(cache), *writable.values()],
        container_env=sorted(env.items()),
        binds=binds,
        nproc=plan["gpus"],
        requeue_exit=f["requeue_exit"],
        signal_margin_s=margin,
    )
    record = base_record("finetune", site, account, plan, name=name, image=image, image_name=f["image"],
                         image_entry=image_entry, limit=limit)
    record.update(method=plan["method"], model=model.name, model_arg=place["arg"], config=config,
                  output_dir=str(output_dir))
    text = job_config(cfg, place["local_path"])
    return JobSpec(name, job_dir, script, plan, request, record, site, account, warnings, {JOB_CONFIG: text})


def finetune_job(config: str, *, site: str | None, account: str | None, time: str | None = None,
                 name: str | None = None, partition: str | None = None, gpu: str | None = None,
                 gpus: int | None = None) -> JobSpec:
    """`kit finetune CONFIG` as a library call: validate the config with the trainer's loader,
    load the site, resolve the model, plan it, and build the job. Submit it with
    ``kit.jobs.submit.submit``."""
    from kit.models.resolve import resolve
    from kit.plan import plan_finetune
    from kit.sites import load_site
    from kit.train.config import load_config

    config_path = Path(config).expanduser().resolve()
    cfg = load_config(config_path)  # KitError naming the file and key; paths made absolute
    site_obj = load_site(site, account=account).site
    info = resolve(cfg.model, site_obj, account, use_hub=False)
    plan = plan_finetune(info, site_obj, partition=partition, gpu=gpu, gpus=gpus, **plan_options(cfg))
    request = dict(config=str(config_path), site=site_obj.name, account=account, time=time, name=name,
                   partition=partition, gpu=gpu, gpus=gpus)
    return build(site_obj, cfg, config_path, info, plan, account=account, time=time, name=name, request=request)
