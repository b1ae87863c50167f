"""`kit serve` and the commands that follow a job: jobs, status, logs, wait, connect, stop."""

from __future__ import annotations

import sys

import click

from kit.cli.options import account_option, emit_json, job_argument, json_option, placement_options, serve_options, site_option


@click.command("serve")
@click.argument("model")
@serve_options
@placement_options
@account_option()
@click.option("--time", "time_limit", metavar="TIME", help="walltime, e.g. 8:00:00 (default: the site's)")
@click.option("--adapter", "adapters", multiple=True, metavar="PATH_OR_ID", help="LoRA adapter to serve too (repeatable)")
@click.option("--name", help="kit job name (default: ENGINE-MODEL-xxxx)")
@click.option("--ready-timeout", type=int, default=1800, show_default=True, help="seconds the job waits for /health")
@click.option("--dry-run", is_flag=True, help="print the job script; submit nothing")
def serve_cmd(model, engine, dtype, quantize, max_input_tokens, max_total_tokens, concurrency, site, partition, gpu,
              gpus, as_json, account, time_limit, adapters, name, ready_timeout, dry_run):
    """Plan, render and submit a TGI or vLLM server for MODEL, with a per-job API key."""
    from kit.jobs.serve import serve_job

    job = serve_job(model, site=site, account=account, time=time_limit, adapters=adapters, name=name,
                    ready_timeout=ready_timeout, engine=engine, dtype=dtype, quantize=quantize,
                    max_input_tokens=max_input_tokens, max_total_tokens=max_total_tokens, concurrency=concurrency,
                    partition=partition, gpu=gpu, gpus=gpus)
    record = submit_or_print(job, dry_run=dry_run, as_json=as_json)
    if record is None:
        return
    jid, data = record.job_id, record.data
    click.echo(f"submitted job {jid} ({record.name}): {data['gpus']}x {data['gpu_type']} on "
               f"{data['site']}/{data['partition']}, {data['engine']} serving {data['model']}")
    click.echo(f"  record: {record.dir}")
    click.echo(f"  next:   kit wait {jid}    kit connect {jid}    kit chat {jid} \"Hello\"    kit stop {jid}")


def warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"kit: warning: {warning}", err=True)


def submit_or_print(job, *, dry_run: bool, as_json: bool, submit=None):
    """--dry-run prints the script; otherwise submit (the library checks the image against the
    lock first; ``submit`` replaces kit.jobs.submit.submit) and return the record, or print it as
    JSON. The warnings follow either way."""
    if submit is None:
        from kit.jobs.submit import submit
    if dry_run:
        warn(job.warnings)
        click.echo(job.script, nl=False)
        return None
    record = submit(job)
    warn(job.warnings)
    if as_json:
        emit_json(record.data)
        return None
    return record


@click.command("jobs")
@site_option()
@json_option()
def jobs_cmd(site, as_json):
    """Your kit jobs with their live state."""
    from kit.jobs.record import records, state_root
    from kit.jobs.status import statuses
    from kit.sites import load_site_if_given

    rows = [st.as_dict() for st in statuses(records(state_root(load_site_if_given(site))))]
    if as_json:
        emit_json(rows)
        return
    from kit.cli import tables

    tables.jobs_table(rows)


@click.command("status")
@job_argument
@json_option()
def status_cmd(job, site, as_json):
    """Slurm state, endpoint and health of one job (a fine-tuning job: its progress)."""
    from kit.jobs.record import lookup
    from kit.jobs.status import status

    data = status(lookup(job, site)).as_dict()
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if key == "progress":
            from kit.jobs.progress import describe

            value = describe(value)
        if value is not None:
            click.echo(f"{key:>15}: {value}")


@click.command("logs")
@job_argument
@click.option("-f", "--follow", is_flag=True, help="keep printing until the job ends")
@click.option("-n", "--lines", type=int, default=0, help="only the last N lines")
def logs_cmd(job, site, follow, lines):
    """The job's log (stdout and stderr of the batch script and the engine)."""
    from kit.jobs.logs import show
    from kit.jobs.record import lookup

    show(lookup(job, site), lambda text: click.echo(text, nl=False), lines=lines, follow=follow)


@click.command("wait")
@job_argument
@click.option("--timeout", type=float, default=1800, show_default=True, help="seconds")
def wait_cmd(job, site, timeout):
    """Wait until the job's engine answers /health (a fine-tuning job: until training finished);
    fail fast if the job dies."""
    import contextlib
    import time

    from kit.jobs.logs import log_tail
    from kit.jobs.record import lookup
    from kit.jobs.status import progress
    from kit.jobs.watch import JobDied, wait_for

    record = lookup(job, site)
    start = time.monotonic()
    spinner = contextlib.nullcontext()
    if sys.stderr.isatty():  # a live status line for people; plain lines for logs and pipes
        from rich.console import Console

        spinner = Console(stderr=True).status(f"job {record.job_id}: waiting for Slurm")

    with spinner as live:
        def on_change(st):
            text = progress(st)
            line = f"kit: job {record.job_id}: {text} ({time.monotonic() - start:.0f} s)"
            if live is None:
                click.echo(line, err=True)
            else:  # printed above the live status line
                live.console.print(line, highlight=False, markup=False)
                live.update(f"job {record.job_id}: {text}")

        try:
            st = wait_for(record, timeout, on_change=on_change)
        except JobDied:
            for line in log_tail(record):
                click.echo(f"  | {line}", err=True)
            raise
    click.echo(st.url or record.data.get("output_dir"))


@click.command("connect")
@job_argument
@click.option("--open", "open_tunnel", is_flag=True, help="start the tunnel (runs ssh in the foreground)")
def connect_cmd(job, site, open_tunnel):
    """The SSH tunnel command from your laptop to the job's port (the site's template)."""
    import os
    import shlex

    from kit.jobs.endpoint import tunnel_command
    from kit.jobs.record import lookup

    record = lookup(job, site)
    command = tunnel_command(record)
    port = record.endpoint()["port"]
    if open_tunnel:
        click.echo(f"kit: {command}", err=True)
        args = shlex.split(command)
        os.execvp(args[0], args)
    click.echo(command)
    click.echo(f"# then: http://localhost:{port}  (API key: {record.key_file})", err=True)


@click.command("stop")
@job_argument
def stop_cmd(job, site):
    """Cancel the job and wait until Slurm has ended it."""
    from kit.jobs.record import lookup
    from kit.jobs.watch import stop

    record = lookup(job, site)
    state = stop(record)
    click.echo(f"job {record.job_id} ({record.name}): {state.state}")


COMMANDS = [serve_cmd, jobs_cmd, status_cmd, logs_cmd, wait_cmd, connect_cmd, stop_cmd]
