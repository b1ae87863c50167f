"""The ``kit`` command: a thin click layer. Logic lives in the modules it calls.

Runs on login nodes, so start-up stays light: nothing here imports torch or transformers,
and each command imports what it needs inside its body.
"""

from __future__ import annotations

import json
import sys

import click

from kit import __version__
from kit.errors import KitError

QUANTIZE = ("none", "bitsandbytes", "bitsandbytes-nf4", "fp8", "awq", "gptq")


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def site_option(f):
    return click.option("--site", "site", metavar="NAME|FILE", help="site name or site YAML file (default: $KIT_SITE)")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kit")
def cli():
    """Right-sized, reproducible LLM jobs on Slurm GPU clusters."""


# ----------------------------------------------------------------------------- sites
@cli.group()
def sites():
    """Site configs: list, show, check against the live cluster."""


@sites.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def sites_list(as_json):
    """Packaged sites (plus site-wide and user files)."""
    from kit import output
    from kit.sites import load_site, packaged_site_names

    rows = [load_site(name) for name in packaged_site_names()]
    if as_json:
        emit_json([{"name": r.site.name, "description": r.site.description, "files": [str(f) for f in r.files]} for r in rows])
    else:
        output.sites_table(rows)


@sites.command("show")
@click.argument("name", metavar="NAME|FILE")
@click.option("--json", "as_json", is_flag=True, help="print the merged, validated config as JSON")
def sites_show(name, as_json):
    """Partitions, GPU tiers, paths and the values marked as assumed."""
    import msgspec

    from kit import output
    from kit.sites import load_site

    loaded = load_site(name)
    if as_json:
        emit_json(msgspec.to_builtins(loaded.site))
    else:
        output.site_detail(loaded)


@sites.command("check")
@click.argument("name", metavar="NAME|FILE")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
def sites_check(name, as_json):
    """Compare the site config with the live cluster (sinfo/scontrol); exit 1 on any drift."""
    from kit import output
    from kit.site_check import check_site
    from kit.sites import load_site

    loaded = load_site(name)
    findings = check_site(loaded.site)
    if as_json:
        emit_json({"site": loaded.site.name, "ok": not findings, "drift": findings})
    else:
        output.check_report(loaded.site.name, findings)
    if findings:
        sys.exit(1)


# ----------------------------------------------------------------------------- models
@cli.group()
def models():
    """Model metadata: exact parameter counts and architecture."""


@models.command("show")
@click.argument("model")
@site_option
@click.option("--account", help="fills {account} in the site's model cache path")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def models_show(model, site, account, as_json):
    """MODEL is a Hub id, a local directory, or a model in the shared cache or the catalog."""
    from kit import output
    from kit.models.resolve import resolve

    site_obj = load_optional_site(site, account)
    info = resolve(model, site_obj, account)
    if as_json:
        emit_json(info.as_dict())
    else:
        output.model_detail(info)
    if info.layout is None:  # unsupported architecture: counted from safetensors, but cannot be planned
        raise KitError(info.warnings[0], exit_code=1)


@models.command("list")
@site_option
@click.option("--engine", type=click.Choice(["tgi", "vllm"]), default="tgi", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def models_list(site, engine, as_json):
    """The catalog; with --site, the smallest allocation that serves each model."""
    from kit import output
    from kit.models import catalog
    from kit.models.resolve import from_catalog

    site_obj = load_optional_site(site, None)
    rows = []
    for entry in catalog.entries():
        for model_id in entry["ids"]:
            info = from_catalog(model_id, entry)
            row = {"model": model_id, "family": entry.get("family"), "params": info.params,
                   "active_params": info.active_params, "max_context": info.max_context}
            if site_obj is not None:
                from kit.plan import plan_serve

                plan = plan_serve(info, site_obj, engine=engine)
                row["serve"] = (f"{plan['gpus']}x {plan['gpu_type']}" if plan["fits"]
                                else "no fit" + (f" ({plan['suggestion']['text']})" if plan["suggestion"] else ""))
            rows.append(row)
    if as_json:
        emit_json(rows)
    else:
        output.models_table(rows, site_obj.name if site_obj else None, engine)


@models.command("pull")
@click.argument("model")
@click.option("--to", "to", type=click.Path(file_okay=False), help="cache directory (default: the site's model cache)")
@site_option
@click.option("--account", help="fills {account} in the site's model cache path")
@click.option("--revision", default=None, help="branch, tag or commit (default: main)")
@click.option("--include", "allow", multiple=True, help="only files matching this glob (repeatable)")
def models_pull(model, to, site, account, revision, allow):
    """Download a model's files once into a shared HF cache (login node; resumes)."""
    from kit.models.pull import pull

    if to is None:
        site_obj = load_optional_site(site, account)
        if site_obj is None:
            raise KitError("--to DIR or --site: where should the model go?")
        from kit.sites import expand_user_path

        if "{account}" in site_obj.paths.model_cache and not (account or site_obj.account.default):
            raise KitError(f"--account: the {site_obj.name} model cache is per account ({site_obj.paths.model_cache})")
        to = expand_user_path(site_obj.paths.model_cache, account or site_obj.account.default)
    path = pull(model, to, revision=revision, allow_patterns=list(allow) or None)
    click.echo(f"{model} is in {to}\n  snapshot: {path}")


def load_optional_site(site, account):
    import os

    from kit.sites import load_site

    if site is None and not os.environ.get("KIT_SITE"):
        return None
    return load_site(site, account=account).site


# ----------------------------------------------------------------------------- plan
@cli.group()
def plan():
    """GPU memory budget and the cheapest allocation that fits."""


def placement_options(f):
    for opt in reversed([
        click.option("--site", "site", metavar="NAME|FILE", help="site name or YAML file (default: $KIT_SITE)"),
        click.option("--partition", help="GPU partition (default: the site's defaults.gpu_partition)"),
        click.option("--gpu", "gpu", metavar="TIER", help="GPU tier as the site file names it (a100-40, a100-80, h100, l40s)"),
        click.option("--gpus", type=int, help="exact number of GPUs (tensor-parallel size when serving)"),
        click.option("--json", "as_json", is_flag=True, help="print one JSON object"),
    ]):
        f = opt(f)
    return f


@plan.command("serve")
@click.argument("model")
@click.option("--engine", type=click.Choice(["tgi", "vllm"]), default="tgi", show_default=True)
@click.option("--dtype", default="auto", show_default=True, help="auto, bfloat16 or float16")
@click.option("--quantize", type=click.Choice(QUANTIZE), help="default: none, or the checkpoint's own")
@click.option("--max-input-tokens", type=int, help="longest prompt (default: max-total minus up to 1024)")
@click.option("--max-total-tokens", type=int, help="prompt + generated tokens per request (default: min(context, 8192))")
@click.option("--concurrency", type=int, help="requests served at full length at once (default 8)")
@placement_options
def plan_serve_cmd(model, engine, dtype, quantize, max_input_tokens, max_total_tokens, concurrency, site,
                   partition, gpu, gpus, as_json):
    """Plan serving MODEL with TGI or vLLM."""
    from kit.models.resolve import resolve
    from kit.plan import plan_serve
    from kit.sites import load_site

    site_obj = load_site(site).site
    info = resolve(model, site_obj)
    result = plan_serve(info, site_obj, engine=engine, dtype=dtype, quantize=quantize,
                        max_input_tokens=max_input_tokens, max_total_tokens=max_total_tokens,
                        concurrency=concurrency, partition=partition, gpu=gpu, gpus=gpus)
    show_plan(result, as_json)


@plan.command("finetune")
@click.argument("model")
@click.option("--method", type=click.Choice(["full", "lora", "qlora"]), help="default: lora")
@click.option("--seq-len", type=int, help="tokens per sequence (default 2048)")
@click.option("--batch-size", type=int, help="micro-batch per GPU (default 1)")
@click.option("--grad-ckpt/--no-grad-ckpt", default=None, help="gradient checkpointing (default: on)")
@click.option("--lora-r", type=int, help="LoRA rank (default 16)")
@click.option("--lora-targets", help="all-linear, or a comma list of module names (default: all-linear)")
@click.option("--optimizer", help="adamw, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit, adafactor, sgd")
@placement_options
def plan_finetune_cmd(model, method, seq_len, batch_size, grad_ckpt, lora_r, lora_targets, optimizer, site,
                      partition, gpu, gpus, as_json):
    """Plan fine-tuning MODEL (full, LoRA or QLoRA)."""
    from kit.models.resolve import resolve
    from kit.plan import plan_finetune
    from kit.sites import load_site

    site_obj = load_site(site).site
    info = resolve(model, site_obj)
    result = plan_finetune(info, site_obj, method=method, seq_len=seq_len, batch_size=batch_size,
                           grad_ckpt=grad_ckpt, lora_r=lora_r, lora_targets=lora_targets, optimizer=optimizer,
                           partition=partition, gpu=gpu, gpus=gpus)
    show_plan(result, as_json)


def show_plan(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json(result)
    else:
        from kit import output

        output.plan_report(result)
    if not result["fits"]:
        sys.exit(1)


# ----------------------------------------------------------------------------- entry point
def main(argv=None) -> None:
    """Every failure is one line on stderr and a non-zero exit; never a traceback."""
    try:
        cli.main(args=argv, prog_name="kit", standalone_mode=False)
    except KitError as e:
        click.echo(f"kit: error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"kit: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("kit: aborted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # a bug in kit: still one line, with a way to see the traceback
        import os

        if os.environ.get("KIT_DEBUG"):
            raise
        click.echo(f"kit: error: internal error: {type(e).__name__}: {e} (set KIT_DEBUG=1 for the traceback)", err=True)
        sys.exit(70)
    sys.exit(0)


if __name__ == "__main__":
    main()
