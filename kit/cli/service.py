"""`kit service`: shared model services for research-computing staff (up, down, list, status,
url, keys, usage)."""

from __future__ import annotations

import click

from kit.cli.options import account_option, emit_json, json_option, serve_options, site_option, stacked

SERVICE_SITE_HELP = "site whose services directory holds the service (default: $KIT_SITE)"


def service_site(f):
    return stacked(site_option(SERVICE_SITE_HELP), account_option("fills {account} in the site's services directory"))(f)


def _lookup(name, site, account):
    from kit.service.registry import lookup

    return lookup(name, site, account)


@click.group("service")
def service():
    """Shared model services: one stable name, renewed before each walltime, per-lab keys, usage."""


@service.command("up")
@click.argument("name")
@click.argument("model")
@serve_options
@site_option("site name or YAML file (default: $KIT_SITE)")
@click.option("--partition", help="GPU partition (default: the site's defaults.gpu_partition)")
@click.option("--gpu", "gpu", metavar="TIER", help="GPU tier as the site file names it")
@click.option("--gpus", type=int, help="exact number of GPUs")
@account_option()
@click.option("--time", "time_limit", metavar="TIME", help="walltime of each generation (default: the site's)")
@click.option("--renew", type=click.Choice(["queue", "overlap", "off"]), default="queue", show_default=True,
              help="queue: a successor starts when a generation ends; overlap: it starts early and takes the name "
                   "once healthy (GPUs twice meanwhile); off: no renewal")
@click.option("--renew-before", default="10m", show_default=True, metavar="DURATION",
              help="how long before the walltime the successor is submitted (90s, 10m, 1h)")
@click.option("--max-restarts", type=int, default=3, show_default=True,
              help="engine restarts inside one allocation before the job requeues itself")
@click.option("--adapter", "adapters", multiple=True, metavar="PATH_OR_ID", help="LoRA adapter to serve too")
@click.option("--ready-timeout", type=int, default=1800, show_default=True, help="seconds each generation waits for /health")
@click.option("--dry-run", is_flag=True, help="print the job script; create and submit nothing")
@json_option()
def up_cmd(name, model, engine, dtype, quantize, max_input_tokens, max_total_tokens, concurrency, site, partition,
           gpu, gpus, account, time_limit, renew, renew_before, max_restarts, adapters, ready_timeout, dry_run, as_json):
    """Deploy MODEL as the shared service NAME."""
    from kit.cli.jobs import warn
    from kit.service.deploy import service_job, up

    dep = service_job(name, model, site=site, account=account, time_limit=time_limit, renew=renew,
                      renew_before=renew_before, max_restarts=max_restarts, adapters=adapters,
                      ready_timeout=ready_timeout, engine=engine, dtype=dtype, quantize=quantize,
                      max_input_tokens=max_input_tokens, max_total_tokens=max_total_tokens,
                      concurrency=concurrency, partition=partition, gpu=gpu, gpus=gpus)
    if dry_run:
        warn(dep.job.warnings)
        click.echo(dep.job.script, nl=False)
        return
    record = up(dep)
    warn(dep.job.warnings)
    if as_json:
        emit_json(dict(record.data, service_dir=str(dep.service.dir)))
        return
    d = record.data
    click.echo(f"service {name}: job {record.job_id}, {d['gpus']}x {d['gpu_type']} on {d['site']}/{d['partition']}, "
               f"{d['engine']} serving {d['model']}; renewal: {renew}")
    if dep.overlap_cost:
        click.echo(f"  {dep.overlap_cost}")
    click.echo(f"  directory: {dep.service.dir}")
    click.echo(f"  next: kit service keys {name} add LAB    kit service status {name}    kit chat {name} \"Hello\"")


@service.command("down")
@click.argument("name")
@service_site
def down_cmd(name, site, account):
    """Stop the service: every generation, and any queued successor."""
    from kit.service.deploy import down

    cancelled = down(_lookup(name, site, account))
    click.echo(f"service {name}: down" + (f" (cancelled {', '.join(cancelled)})" if cancelled else ""))


@service.command("list")
@service_site
@json_option()
def list_cmd(site, account, as_json):
    """Every service: model, state, generation, node, uptime, time left, next renewal, requests in the last hour."""
    from kit.service.deploy import rows
    from kit.service.registry import services, services_root
    from kit.sites import load_site

    data = rows(services(services_root(load_site(site, account=account).site, account)))
    if as_json:
        emit_json(data)
        return
    from kit.cli import tables

    tables.services_table(data)


@service.command("status")
@click.argument("name")
@service_site
@json_option()
def status_cmd(name, site, account, as_json):
    """One service's state, current job, renewal and restarts."""
    from kit.service.deploy import rows

    data = rows([_lookup(name, site, account)])[0]
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if value is not None:
            click.echo(f"{key:>18}: {value}")


@service.command("url")
@click.argument("name")
@service_site
def url_cmd(name, site, account):
    """The service's current URL (resolve it at each use: it changes with each generation)."""
    from kit.errors import KitError

    svc = _lookup(name, site, account)
    url = svc.url
    if url is None:
        raise KitError(f"service {name} is not answering now (state {svc.data().get('state')})", exit_code=3)
    click.echo(url)


@service.command("keys")
@click.argument("name")
@click.argument("action", type=click.Choice(["add", "revoke", "list"]))
@click.argument("lab", required=False)
@click.option("--group", help="add: the Unix group that may read the key file (default: LAB)")
@service_site
@json_option()
def keys_cmd(name, action, lab, group, site, account, as_json):
    """Per-lab keys: `add LAB` (a key only LAB's group can read), `revoke LAB` (refused from the
    next request on, no restart), `list` (labs, creation dates, last use)."""
    from kit.errors import KitError
    from kit.service import keys

    service_obj = _lookup(name, site, account)
    if action != "list" and not lab:
        raise KitError(f"kit service keys {name} {action}: which lab? (kit service keys NAME {action} LAB)")
    if action == "add":
        path = keys.add(service_obj, lab, group)
        click.echo(f"lab {lab}: key in {path} (group {group or lab}, mode 0640); its members use it with "
                   f"`kit chat {name}`")
    elif action == "revoke":
        keys.revoke(service_obj, lab)
        click.echo(f"lab {lab}: key revoked")
    else:
        data = keys.listing(service_obj)
        if as_json:
            emit_json(data)
            return
        for row in data:
            click.echo(f"{row['lab']:<20} group {row['group']:<16} created {row['created']}  "
                       f"last used {row['last_used'] or 'never'}")


@service.command("usage")
@click.argument("name")
@click.option("--since", metavar="WHEN", help="a duration back from now (24h, 7d) or a date (2025-01-31)")
@service_site
@json_option()
def usage_cmd(name, since, site, account, as_json):
    """Requests, prompt and generated tokens, and errors per lab and generation."""
    from kit.service.usage import parse_since, report

    data = report(_lookup(name, site, account), parse_since(since))
    if as_json:
        emit_json(data)
        return
    from kit.cli import tables

    tables.usage_table(data)


COMMANDS = [service]
