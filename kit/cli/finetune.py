"""`kit finetune`: CONFIG submits a fine-tuning job; `init` writes an example config; `merge` merges
a trained adapter into its base model."""

from __future__ import annotations

from pathlib import Path

import click

from kit.errors import KitError


class DefaultCommandGroup(click.Group):
    """`kit finetune CONFIG [OPTIONS]` runs the hidden `submit` command: an argument that names no
    subcommand is the config file of a submission."""

    default_command = "submit"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup, subcommand_metavar="CONFIG [OPTIONS] | COMMAND [ARGS]...")
def finetune():
    """Fine-tune a model (full, LoRA or QLoRA) as a Slurm job: `kit finetune CONFIG`."""


# Placeholder until the submission path lands: `kit finetune CONFIG` plans and submits the job.
@finetune.command("submit", hidden=True)
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
def submit_cmd(config):
    """Plan, render and submit the fine-tuning job CONFIG describes."""
    raise KitError("kit finetune CONFIG: submission is not implemented yet")


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
