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

from kit.plan import QUANTIZE_CHOICES as QUANTIZE  # light: kit.plan imports no heavy library


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
    from kit.sites import known_site_names, load_site

    rows = [load_site(name) for name in known_site_names()]
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


def serve_options(f):
    for opt in reversed([
        click.option("--engine", type=click.Choice(["tgi", "vllm"]), default="tgi", show_default=True),
        click.option("--dtype", default="auto", show_default=True, help="auto, bfloat16 or float16"),
        click.option("--quantize", type=click.Choice(QUANTIZE), help="default: none, or the checkpoint's own"),
        click.option("--max-input-tokens", type=int, help="longest prompt (default: max-total minus up to 1024)"),
        click.option("--max-total-tokens", type=int, help="prompt + generated tokens per request (default: min(context, 8192))"),
        click.option("--concurrency", type=int, help="requests served at full length at once (default 8)"),
    ]):
        f = opt(f)
    return f


def account_option(f):
    return click.option("--account", help="Slurm account (default: the site's, or $KIT_ACCOUNT); "
                                          "also picks the account's shared model cache")(f)


@plan.command("serve")
@click.argument("model")
@serve_options
@placement_options
@account_option
def plan_serve_cmd(model, engine, dtype, quantize, max_input_tokens, max_total_tokens, concurrency, site,
                   partition, gpu, gpus, as_json, account):
    """Plan serving MODEL with TGI or vLLM."""
    from kit.models.resolve import resolve
    from kit.plan import plan_serve
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    info = resolve(model, site_obj, account)
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
@account_option
def plan_finetune_cmd(model, method, seq_len, batch_size, grad_ckpt, lora_r, lora_targets, optimizer, site,
                      partition, gpu, gpus, as_json, account):
    """Plan fine-tuning MODEL (full, LoRA or QLoRA)."""
    from kit.models.resolve import resolve
    from kit.plan import plan_finetune
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    info = resolve(model, site_obj, account)
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


# ----------------------------------------------------------------------------- serving jobs
@cli.command("serve")
@click.argument("model")
@serve_options
@placement_options
@account_option
@click.option("--time", "time_limit", metavar="TIME", help="walltime, e.g. 8:00:00 (default: the site's)")
@click.option("--adapter", "adapters", multiple=True, metavar="PATH_OR_ID", help="LoRA adapter to serve too (repeatable)")
@click.option("--name", help="kit job name (default: ENGINE-MODEL-xxxx)")
@click.option("--ready-timeout", type=int, default=1800, show_default=True, help="seconds the job waits for /health")
@click.option("--dry-run", is_flag=True, help="print the job script; submit nothing")
def serve_cmd(model, engine, dtype, quantize, max_input_tokens, max_total_tokens, concurrency, site, partition, gpu,
              gpus, as_json, account, time_limit, adapters, name, ready_timeout, dry_run):
    """Plan, render and submit a TGI or vLLM server for MODEL, with a per-job API key."""
    from kit import serve
    from kit.models.resolve import resolve
    from kit.plan import plan_serve
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    info = resolve(model, site_obj, account)
    options = dict(engine=engine, dtype=dtype, quantize=quantize, max_input_tokens=max_input_tokens,
                   max_total_tokens=max_total_tokens, concurrency=concurrency, partition=partition, gpu=gpu, gpus=gpus)
    plan_result = plan_serve(info, site_obj, **options)
    request = dict(options, model=model, site=site_obj.name, account=account, time=time_limit, adapters=list(adapters),
                   name=name, ready_timeout=ready_timeout)
    job = serve.build(site_obj, info, plan_result, account=account, time=time_limit, adapters=list(adapters),
                      name=name, ready_timeout_s=ready_timeout, request=request)
    if not dry_run:  # the job runs only the image that matches the lock
        from kit.images import verified_image

        verified_image(site_obj, job.record["image_name"], account)
    for warning in job.warnings:
        click.echo(f"kit: warning: {warning}", err=True)
    if dry_run:
        click.echo(job.script, nl=False)
        return
    record = serve.submit(job)
    if as_json:
        emit_json(record.data)
        return
    jid = record.job_id
    click.echo(f"submitted job {jid} ({record.name}): {plan_result['gpus']}x {plan_result['gpu_type']} on "
               f"{site_obj.name}/{plan_result['partition']}, {engine} serving {info.name}")
    click.echo(f"  record: {record.dir}")
    click.echo(f"  next:   kit wait {jid}    kit connect {jid}    kit chat {jid} \"Hello\"    kit stop {jid}")


def find_job(ref: str, site: str | None):
    from kit import jobs

    return jobs.find(jobs.state_root(load_optional_site(site, None)), ref)


def job_argument(f):
    f = click.option("--site", "site", metavar="NAME|FILE", help="site whose state dir holds the record")(f)
    return click.argument("job", metavar="JOB")(f)


@cli.command("jobs")
@site_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def jobs_cmd(site, as_json):
    """Your kit jobs with their live state."""
    from kit import jobs, lifecycle

    root = jobs.state_root(load_optional_site(site, None))
    rows = [lifecycle.status(rec, check_health=False).as_dict() for rec in jobs.records(root) if rec.job_id]
    if as_json:
        emit_json(rows)
        return
    from kit import output

    output.jobs_table(rows)


@cli.command("status")
@job_argument
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status_cmd(job, site, as_json):
    """Slurm state, endpoint and health of one job."""
    from kit import lifecycle

    st = lifecycle.status(find_job(job, site))
    data = st.as_dict()
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if value is not None:
            click.echo(f"{key:>15}: {value}")


@cli.command("logs")
@job_argument
@click.option("-f", "--follow", is_flag=True, help="keep printing until the job ends")
@click.option("-n", "--lines", type=int, default=0, help="only the last N lines")
def logs_cmd(job, site, follow, lines):
    """The job's log (stdout and stderr of the batch script and the engine)."""
    import time

    from kit import lifecycle, slurm

    record = find_job(job, site)
    path = record.log_path
    if not path.exists() and not follow:
        raise KitError(f"job {record.job_id} has no log yet ({path}): it may still be queued")
    if lines:
        for line in lifecycle.log_tail(record, lines):
            click.echo(line)
        offset = path.stat().st_size if path.exists() else 0
    else:
        offset = 0
    while True:
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
            if chunk:
                click.echo(chunk.decode(errors="replace"), nl=False)
        if not follow:
            return
        state = slurm.job_state(record.job_id, record.data.get("accounting", False))
        if state.finished or state.state == "UNKNOWN":
            return
        time.sleep(1)


@cli.command("wait")
@job_argument
@click.option("--timeout", type=float, default=1800, show_default=True, help="seconds")
def wait_cmd(job, site, timeout):
    """Wait until the job's engine answers /health; fail fast if the job dies."""
    import contextlib
    import time

    from kit import lifecycle

    record = find_job(job, site)
    start = time.monotonic()
    spinner = contextlib.nullcontext()
    if sys.stderr.isatty():  # a live status line for people; plain lines for logs and pipes
        from rich.console import Console

        spinner = Console(stderr=True).status(f"job {record.job_id}: waiting for Slurm")

    with spinner as live:
        def progress(st):
            if st.ready:
                text = f"ready: {st.url}"
            elif st.url:
                text = f"{lifecycle.describe(st)}: engine starting at {st.url}"
            else:
                text = lifecycle.describe(st)
            line = f"kit: job {record.job_id}: {text} ({time.monotonic() - start:.0f} s)"
            if live is None:
                click.echo(line, err=True)
            else:  # printed above the live status line
                live.console.print(line, highlight=False, markup=False)
                live.update(f"job {record.job_id}: {text}")

        try:
            st = lifecycle.wait(record, timeout, on_change=progress)
        except lifecycle.JobDied as died:
            for line in lifecycle.log_tail(record):
                click.echo(f"  | {line}", err=True)
            raise died
    click.echo(st.url)


@cli.command("connect")
@job_argument
@click.option("--open", "open_tunnel", is_flag=True, help="start the tunnel (runs ssh in the foreground)")
def connect_cmd(job, site, open_tunnel):
    """The SSH tunnel command from your laptop to the job's port (the site's template)."""
    import os
    import shlex

    from kit import lifecycle

    record = find_job(job, site)
    command = lifecycle.tunnel_command(record)
    port = record.endpoint()["port"]
    if open_tunnel:
        click.echo(f"kit: {command}", err=True)
        args = shlex.split(command)
        os.execvp(args[0], args)
    click.echo(command)
    click.echo(f"# then: http://localhost:{port}  (API key: {record.key_file})", err=True)


@cli.command("stop")
@job_argument
def stop_cmd(job, site):
    """Cancel the job and wait until Slurm has ended it."""
    from kit import lifecycle

    record = find_job(job, site)
    state = lifecycle.stop(record)
    click.echo(f"job {record.job_id} ({record.name}): {state.state}")


def chat_target(target: str, site: str | None, api_key_file: str | None):
    """JOB or URL -> (url, key, default model name)."""
    from pathlib import Path

    from kit import lifecycle
    from kit.plan import engines

    if target.startswith(("http://", "https://")):
        key = None
        if api_key_file:
            try:
                key = Path(api_key_file).expanduser().read_text().strip()
            except OSError as e:
                raise KitError(f"--api-key-file {api_key_file}: {e.strerror}") from None
        from kit.client import served_model

        return target.rstrip("/"), key, served_model(target.rstrip("/"), key)
    record = find_job(target, site)
    url = lifecycle.endpoint_url(record)
    if url is None:
        raise KitError(f"job {record.job_id} has no endpoint yet: `kit wait {record.job_id}` first")
    model = engines()[record.data["engine"]]["serve"]["chat_model"] or record.data["served_model_name"]
    return url, record.api_key(), model


@cli.command("chat")
@click.argument("target", metavar="JOB|URL")
@click.argument("prompt", required=False)
@click.option("--site", "site", metavar="NAME|FILE", help="site whose state dir holds the record")
@click.option("--api-key-file", help="with a URL: a file holding the API key")
@click.option("--model", "model", help="OpenAI model name to send (a LoRA adapter's name picks the adapter)")
@click.option("--system", help="system prompt")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float)
@click.option("--no-stream", is_flag=True, help="print the answer at once")
def chat_cmd(target, prompt, site, api_key_file, model, system, max_tokens, temperature, no_stream):
    """One question (PROMPT), or an interactive chat when PROMPT is left out."""
    from kit import client

    url, key, default_model = chat_target(target, site, api_key_file)
    model = model or default_model
    history = [{"role": "system", "content": system}] if system else []

    def ask(text: str) -> None:
        history.append({"role": "user", "content": text})
        if no_stream:
            answer = client.chat(url, key, model, history, max_tokens=max_tokens, temperature=temperature)
            click.echo(answer)
        else:
            answer = client.chat(url, key, model, history, max_tokens=max_tokens, temperature=temperature,
                                 stream=lambda piece: click.echo(piece, nl=False))
            click.echo()
        history.append({"role": "assistant", "content": answer})

    if prompt is not None:
        ask(sys.stdin.read() if prompt == "-" else prompt)
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("you> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            return
        if line.strip():
            ask(line.strip())


@cli.command("bench")
@job_argument
@click.option("--requests", "n_requests", type=int, default=16, show_default=True)
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--prompt", default="Write a short paragraph about GPUs.", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def bench_cmd(job, site, n_requests, concurrency, max_tokens, prompt, as_json):
    """A short load test: N streamed requests, some at once; time to first token, tokens/s, errors."""
    from kit import client

    if n_requests < 1 or concurrency < 1:
        raise KitError("--requests and --concurrency must be at least 1")
    url, key, model = chat_target(job, site, None)
    result = client.bench(url, key, model, requests=n_requests, concurrency=concurrency, max_tokens=max_tokens,
                          prompt=prompt).summary()
    if as_json:
        emit_json(result)
    else:
        for k, v in result.items():
            click.echo(f"{k:>15}: {v}")
    if result["errors"]:
        sys.exit(1)


# ----------------------------------------------------------------------------- images
@cli.group()
def images():
    """Pinned container images: list, build, pull, verify, inspect, push, lock."""


def image_names(name: str) -> list[str]:
    from kit.images import load_lock

    lock = load_lock()
    if name == "all":
        return list(lock.images)
    lock.entry(name)
    return [name]


@images.command("list")
@site_option
@click.option("--account", help="fills {account} in the site's image directory")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def images_list(site, account, as_json):
    """The images of the lock; with a site, whether each is present and verified."""
    from kit import images as img

    lock = img.load_lock()
    site_obj = load_optional_site(site, account)
    rows = []
    for name, entry in lock.images.items():
        row = {"image": name, "version": entry["version"], "upstream": entry["upstream"], "digest": entry["digest"],
               "cuda": entry["cuda"], "sif": entry["sif"], "sif_sha256": entry["sif_sha256"]}
        if site_obj is not None:
            path = img.local_image(site_obj, entry, account)
            row.update(path=str(path), local=img.verify_file(path, entry))
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    from kit import output

    output.images_table(rows, site_obj.name if site_obj else None)


@images.command("build")
@click.argument("name", metavar="NAME|all")
@site_option
@click.option("--account", help="fills {account} in the site's image directory")
@click.option("--to", "to", help="output directory (default: the site's paths.image_dir)")
@click.option("--force", is_flag=True, help="rebuild even when a verified image is present")
def images_build(name, site, account, to, force):
    """Build from containers/NAME.def with the site's runtime (--fakeroot) and record its sha256."""
    from kit import images as img
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    for each in image_names(name):
        path = img.build(site_obj, each, account=account, to=to, force=force)
        click.echo(f"{each}: {path} sha256 {img.load_lock().entry(each)['sif_sha256']}")


@images.command("pull")
@click.argument("name", metavar="NAME|all")
@site_option
@click.option("--account", help="fills {account} in the site's image directory")
@click.option("--from", "source", type=click.Choice(["auto", "shared", "registry"]), default="auto", show_default=True,
              help="the site's shared image directory (copy) or its ORAS registry")
@click.option("--ref", help="ORAS reference to pull instead of the site's (oras://HOST/PATH:TAG)")
def images_pull(name, site, account, source, ref):
    """Fetch a published image, verify its sha256 against the lock, then put it in place."""
    from kit import images as img
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    for each in image_names(name):
        path, what = img.pull(site_obj, each, account=account, source=source, ref=ref)
        click.echo(f"{each}: {path}: {what}")


@images.command("verify")
@click.argument("name", required=False, metavar="[NAME]")
@site_option
@click.option("--account", help="fills {account} in the site's image directory")
def images_verify(name, site, account):
    """sha256 of the local images against the lock; exit 1 if one is missing or differs."""
    from kit import images as img
    from kit.sites import load_site

    site_obj = load_site(site, account=account).site
    lock = img.load_lock()
    bad = 0
    for each in image_names(name) if name else list(lock.images):
        entry = lock.entry(each)
        path = img.local_image(site_obj, entry, account)
        state = img.verify_file(path, entry)
        if name is None and state == "missing":
            continue
        bad += state != "verified"
        click.echo(f"{each}: {state}: {path}")
    if bad:
        sys.exit(1)


@images.command("inspect")
@click.argument("name")
@site_option
@click.option("--account", help="fills {account} in the site's image directory")
def images_inspect(name, site, account):
    """Labels and the runtime's metadata of a local image."""
    from kit import images as img
    from kit.sites import load_site

    emit_json(img.inspect(load_site(site, account=account).site, name, account))


@images.command("push")
@click.argument("name")
@site_option
@click.option("--account", help="fills {account} in the site's image directory")
@click.option("--ref", help="ORAS reference (default: the site's images.registry/NAME:VERSION)")
def images_push(name, site, account, ref):
    """Push a verified local image to an ORAS registry."""
    from kit import images as img
    from kit.sites import load_site

    target = img.push(load_site(site, account=account).site, name, account=account, ref=ref)
    click.echo(f"{name}: pushed to {target}")


@images.command("lock")
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option("--sif", "sif", nargs=2, metavar="NAME FILE", help="record the sha256 of an image built elsewhere")
def images_lock(names, sif):
    """Resolve upstream digests (registry API) into the lock and the defs; or record a SIF."""
    from pathlib import Path

    from kit import images as img

    if sif:
        entry = img.record_external(sif[0], Path(sif[1]))
        click.echo(f"{sif[0]}: sha256 {entry['sif_sha256']} ({entry['sif_size']} bytes) recorded in {img.lock_path()}")
        return
    chosen = [n for name in names for n in image_names(name)] or image_names("all")
    for name, old, new in img.lock_digests(chosen):
        click.echo(f"{name}: {new}" + ("" if old == new else f" (was {old})"))


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
