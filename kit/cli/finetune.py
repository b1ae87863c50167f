"""`kit finetune`: submit a fine-tuning config as a Slurm job (`kit finetune CONFIG`), and the
subcommands around it."""

from __future__ import annotations

import click

from kit.cli.options import account_option, emit_json, placement_options


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to a default command:
    `kit finetune CONFIG ...` is `kit finetune submit CONFIG ...`."""

    default_command = "submit"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup)
def finetune():
    """Fine-tune a model: `kit finetune CONFIG` plans, renders and submits the job (options: see
    `kit finetune submit --help`)."""


@finetune.command("submit")
@click.argument("config", metavar="CONFIG")
@placement_options
@account_option()
@click.option("--time", "time_limit", metavar="TIME", help="walltime of each run, e.g. 12:00:00 (default: the site's); "
              "the job checkpoints and requeues itself before it")
@click.option("--name", help="kit job name (default: finetune-MODEL-xxxx)")
@click.option("--dry-run", is_flag=True, help="print the job script; submit nothing")
def submit_cmd(config, site, partition, gpu, gpus, as_json, account, time_limit, name, dry_run):
    """Validate CONFIG, plan its memory, and submit the fine-tuning job (the default command)."""
    from kit.cli.jobs import warn
    from kit.jobs.finetune import finetune_job
    from kit.jobs.submit import submit

    job = finetune_job(config, site=site, account=account, time=time_limit, name=name, partition=partition,
                       gpu=gpu, gpus=gpus)
    if dry_run:
        warn(job.warnings)
        click.echo(job.script, nl=False)
        return
    record = submit(job)  # checks the image against the lock first
    warn(job.warnings)
    if as_json:
        emit_json(record.data)
        return
    jid, data = record.job_id, record.data
    click.echo(f"submitted job {jid} ({record.name}): {data['gpus']}x {data['gpu_type']} on "
               f"{data['site']}/{data['partition']}, {data['method']} of {data['model']}")
    click.echo(f"  output: {data['output_dir']}")
    click.echo(f"  record: {record.dir}")
    click.echo(f"  next:   kit status {jid}    kit logs -f {jid}    kit wait {jid}    kit stop {jid}")
