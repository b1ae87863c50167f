"""`kit finetune`: CONFIG submits a fine-tuning job; `init` writes an example config; `merge` merges
a trained adapter into its base model."""

from __future__ import annotations

from pathlib import Path

import click

from kit.cli.options import account_option, placement_options
from kit.errors import KitError


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to a default command:
    `kit finetune CONFIG ...` is `kit finetune submit CONFIG ...`."""

    default_command = "submit"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup, subcommand_metavar="CONFIG [OPTIONS] | COMMAND [ARGS]...")
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
    from kit.cli.jobs import submit_or_print
    from kit.jobs.finetune import finetune_job

    job = finetune_job(config, site=site, account=account, time=time_limit, name=name, partition=partition,
                       gpu=gpu, gpus=gpus)
    record = submit_or_print(job, dry_run=dry_run, as_json=as_json)
    if record is None:
        return
    jid, data = record.job_id, record.data
    click.echo(f"submitted job {jid} ({record.name}): {data['gpus']}x {data['gpu_type']} on "
               f"{data['site']}/{data['partition']}, {data['method']} of {data['model']}")
    click.echo(f"  output: {data['output_dir']}")
    click.echo(f"  record: {record.dir}")
    click.echo(f"  next:   kit status {jid}    kit logs -f {jid}    kit wait {jid}    kit stop {jid}")


@finetune.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="finetune.yaml")
def init_cmd(path):
    """Write a commented example config to PATH (default finetune.yaml); never overwrites."""
    from kit.train.config import example_config

    try:
        with open(path, "x") as f:
            f.write(example_config())
    except FileExistsError:
        raise KitError(f"{path}: already exists; not overwriting it (give another PATH)") from None
    except OSError as e:
        raise KitError(f"{path}: cannot write it: {e.strerror}") from None
    click.echo(f"wrote {path}: edit model, data and output_dir, then run `kit finetune {path}`")


@finetune.command("merge")
@click.argument("adapter_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="directory for the merged model (must not exist or be empty)")
@click.option("--base", metavar="MODEL", help="base model directory or cached Hub id (default: the one "
              "in the adapter's adapter_config.json)")
def merge_cmd(adapter_dir, out, base):
    """Merge the LoRA adapter in ADAPTER_DIR into its base model, for engines without LoRA support."""
    from kit.train.merge import merge_adapter

    result = merge_adapter(adapter_dir, out, base=base)
    click.echo(f"merged {adapter_dir} into {result['base']}: wrote {result['out']}")
